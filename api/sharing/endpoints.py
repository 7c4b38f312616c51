"""Sharing a fine-tune inside the deployment (extension): its owner lists,
adds and revokes who may use it read-only (domain/sharing/service.py says
what a sharee gets, and which answers are 403 and which 404).

Registered before /v1/models, whose `{model_id:path}` would take these paths."""

from fastapi import APIRouter

from api.deps import CurrentUser, SessionDep
from api.errors import COMMON_ERROR_RESPONSES, error_responses
from domain.sharing import service
from domain.sharing.schemas import CreateShareRequest, ShareDeleted, ShareList, ShareObject

router = APIRouter(prefix="/v1/models", tags=["models"], responses=COMMON_ERROR_RESPONSES)

_OWNER_ONLY = error_responses(403, 404)


@router.get("/{model_id:path}/shares", response_model=ShareList, responses=_OWNER_ONLY)
def list_shares(model_id: str, user: CurrentUser, session: SessionDep) -> ShareList:
    return ShareList(data=service.list_shares(session, user, model_id))


@router.post("/{model_id:path}/shares", response_model=ShareObject, responses=_OWNER_ONLY)
def create_share(model_id: str, body: CreateShareRequest, user: CurrentUser, session: SessionDep) -> ShareObject:
    """Share with one user (`{"user": NAME}`) or with everyone (`{"everyone": true}`)."""
    return service.create_share(session, user, model_id, body)


@router.delete("/{model_id:path}/shares/{share_id}", response_model=ShareDeleted, responses=_OWNER_ONLY)
def revoke_share(model_id: str, share_id: str, user: CurrentUser, session: SessionDep) -> ShareDeleted:
    """Takes effect at once: the next request of that user is a 404."""
    service.revoke_share(session, user, model_id, share_id)
    return ShareDeleted(id=share_id, deleted=True)
