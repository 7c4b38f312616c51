"""/v1/models: the deployment's base models and the caller's fine-tunes."""

from sqlalchemy.orm import Session

from domain.auth.models import User
from domain.catalog.schemas import ModelObject
from domain.errors import Forbidden, model_not_found
from domain.exports.service import delete_exports
from domain.jobs.models import FineTuningJob
from domain.jobs.repository import JobRepository
from domain.settings import Settings
from domain.storage import Storage

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


def list_models(session: Session, settings: Settings, user: User) -> list[ModelObject]:
    base = [_base(model_id) for model_id in settings.base_models]
    return base + [_fine_tune(job, user.name) for job in JobRepository(session, user.id).list_fine_tuned_models()]


def get_model(session: Session, settings: Settings, user: User, model_id: str) -> ModelObject:
    if model_id in settings.base_models:
        return _base(model_id)
    job = JobRepository(session, user.id).get_by_model(model_id)
    if job is None:
        raise model_not_found(model_id)
    return _fine_tune(job, user.name)


def delete_model(session: Session, storage: Storage, settings: Settings, user: User, model_id: str) -> None:
    """A fine-tune's weights go with its model; the job and its history stay."""
    if model_id in settings.base_models:
        raise Forbidden(
            f"'{model_id}' is a base model of this deployment; only fine-tunes can be deleted.",
            param="model",
            code="model_not_deletable",
        )
    job = JobRepository(session, user.id).get_by_model(model_id)
    if job is None:
        raise model_not_found(model_id)
    job.model_deleted = True
    job.adapter_key = None
    export_keys = delete_exports(session, job)
    session.commit()
    storage.delete_prefix(f"jobs/{job.id}/adapter")
    for key in (f"jobs/{job.id}/adapter.zip", *export_keys):
        storage.delete(key)
