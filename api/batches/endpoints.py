from typing import Annotated

from fastapi import APIRouter

from domain.batches import service
from domain.batches.repository import BatchRepository
from domain.batches.schemas import BatchList, BatchObject, CreateBatchRequest
from api.errors import COMMON_ERROR_RESPONSES, error_responses
from api.pagination import LimitQuery, after_query, check_cursor, list_page
from api.deps import CurrentUser, SessionDep, StateDep

router = APIRouter(prefix="/v1/batches", tags=["batches"], responses=COMMON_ERROR_RESPONSES)


@router.post("", response_model=BatchObject, responses=error_responses(404, 409))
def create_batch(body: CreateBatchRequest, user: CurrentUser, session: SessionDep, state: StateDep) -> BatchObject:
    batch = service.create_batch(session, state.storage, user, body)
    session.commit()
    service.enqueue(session, state.queue, batch)
    return BatchObject.of(batch)


@router.get("", response_model=BatchList)
def list_batches(
    user: CurrentUser,
    session: SessionDep,
    limit: LimitQuery = 20,
    after: Annotated[str | None, after_query("batch_")] = None,
) -> dict:
    batches = BatchRepository(session, user.id).list(after=check_cursor("batch_", after), limit=limit + 1)
    return list_page(batches, limit, BatchObject.of)


@router.get("/{batch_id}", response_model=BatchObject, responses=error_responses(404))
def retrieve_batch(batch_id: str, user: CurrentUser, session: SessionDep) -> BatchObject:
    return BatchObject.of(service.get_batch(session, user, batch_id))


@router.post("/{batch_id}/cancel", response_model=BatchObject, responses=error_responses(404, 409))
def cancel_batch(batch_id: str, user: CurrentUser, session: SessionDep) -> BatchObject:
    return BatchObject.of(service.cancel_batch(session, user, batch_id))
