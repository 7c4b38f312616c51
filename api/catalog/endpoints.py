"""/v1/models: the deployment's base models and the caller's fine-tunes."""

from fastapi import APIRouter

from api.auth.dependencies import CurrentUser
from api.catalog.schemas import ModelDeleted, ModelList, ModelObject
from api.db import SessionDep
from api.errors import COMMON_ERROR_RESPONSES, APIError, error_responses
from api.jobs.models import FineTuningJob
from api.jobs.repository import JobRepository
from api.state import StateDep

router = APIRouter(prefix="/v1/models", tags=["models"], responses=COMMON_ERROR_RESPONSES)

BASE_MODEL_OWNER = "tunehouse"


def _base(model_id: str) -> ModelObject:
    # Base models are part of the deployment, not created by anyone: created=0.
    return ModelObject(id=model_id, created=0, owned_by=BASE_MODEL_OWNER, kind="base")


def _fine_tune(job: FineTuningJob, owner: str) -> ModelObject:
    return ModelObject(
        id=job.fine_tuned_model,
        created=job.finished_at or job.created_at,
        owned_by=owner,
        kind="fine-tune",
        base_model=job.model,
        fine_tuning_job=job.id,
    )


def _model_not_found(model_id: str) -> APIError:
    return APIError(404, f"The model '{model_id}' does not exist or you do not have access to it.", param="model", code="model_not_found")


@router.get("", response_model=ModelList)
def list_models(user: CurrentUser, session: SessionDep, state: StateDep) -> ModelList:
    base = [_base(model_id) for model_id in state.settings.base_models]
    tuned = [_fine_tune(job, user.name) for job in JobRepository(session, user.id).list_fine_tuned_models()]
    return ModelList(data=base + tuned)


# `:path` because model ids contain slashes (HuggingFaceTB/SmolLM2-135M-Instruct).
@router.get("/{model_id:path}", response_model=ModelObject, responses=error_responses(404))
def retrieve_model(model_id: str, user: CurrentUser, session: SessionDep, state: StateDep) -> ModelObject:
    if model_id in state.settings.base_models:
        return _base(model_id)
    job = JobRepository(session, user.id).get_by_model(model_id)
    if job is None:
        raise _model_not_found(model_id)
    return _fine_tune(job, user.name)


@router.delete("/{model_id:path}", response_model=ModelDeleted, responses=error_responses(403, 404))
def delete_model(model_id: str, user: CurrentUser, session: SessionDep, state: StateDep) -> ModelDeleted:
    if model_id in state.settings.base_models:
        raise APIError(403, f"'{model_id}' is a base model of this deployment; only fine-tunes can be deleted.", param="model", code="model_not_deletable")
    job = JobRepository(session, user.id).get_by_model(model_id)
    if job is None:
        raise _model_not_found(model_id)
    job.model_deleted = True
    job.adapter_key = None
    job.merged_key = None
    job.merged_status = None
    session.commit()
    # The weights go with the model; the job and its history stay.
    for prefix in (f"jobs/{job.id}/adapter", f"jobs/{job.id}/merged"):
        state.storage.delete_prefix(prefix)
    for key in (f"jobs/{job.id}/adapter.zip", f"jobs/{job.id}/merged.zip"):
        state.storage.delete(key)
    return ModelDeleted(id=model_id, deleted=True)
