"""/v1/models: the deployment's base models and the caller's fine-tunes."""

from fastapi import APIRouter

from api.deps import CurrentUser, SessionDep, StateDep
from api.errors import COMMON_ERROR_RESPONSES, error_responses
from domain.catalog import service
from domain.catalog.schemas import ModelDeleted, ModelList, ModelObject

router = APIRouter(prefix="/v1/models", tags=["models"], responses=COMMON_ERROR_RESPONSES)


@router.get("", response_model=ModelList)
def list_models(user: CurrentUser, session: SessionDep, state: StateDep) -> ModelList:
    return ModelList(data=service.list_models(session, state.settings, user))


# `:path` because model ids contain slashes (HuggingFaceTB/SmolLM2-135M-Instruct).
@router.get("/{model_id:path}", response_model=ModelObject, responses=error_responses(404))
def retrieve_model(model_id: str, user: CurrentUser, session: SessionDep, state: StateDep) -> ModelObject:
    return service.get_model(session, state.settings, user, model_id)


@router.delete("/{model_id:path}", response_model=ModelDeleted, responses=error_responses(403, 404))
def delete_model(model_id: str, user: CurrentUser, session: SessionDep, state: StateDep) -> ModelDeleted:
    service.delete_model(session, state.storage, state.settings, user, model_id)
    return ModelDeleted(id=model_id, deleted=True)
