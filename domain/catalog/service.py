"""/v1/models: the deployment's base models, the caller's fine-tunes and the
checkpoints of their jobs (each one a model, listed after its job's fine-tune),
then the fine-tunes other users shared with the caller (domain/sharing)."""

from sqlalchemy.orm import Session

from domain.auth.models import User
from domain.catalog.schemas import ModelObject
from domain.errors import Forbidden, model_not_found
from domain.exports.service import delete_exports
from domain.jobs.lineage import checkpoint_model_name, find_fine_tune
from domain.jobs.models import FineTuningCheckpoint, FineTuningJob
from domain.jobs.repository import JobRepository
from domain.settings import Settings
from domain.sharing.repository import ShareRepository, shared_jobs
from domain.sharing.service import owner_name, refuse_sharee_model
from domain.storage import Storage

BASE_MODEL_OWNER = "tunehouse"


def _base(model_id: str) -> ModelObject:
    # Base models are part of the deployment, not created by anyone: created=0.
    return ModelObject(id=model_id, created=0, owned_by=BASE_MODEL_OWNER, kind="base")


def _fine_tune(job: FineTuningJob, owner: str, *, shared: bool = False) -> ModelObject:
    return ModelObject(
        id=job.fine_tuned_model,
        created=job.finished_at or job.created_at,
        owned_by=owner,
        kind="fine-tune",
        base_model=job.model,
        fine_tuning_job=job.id,
        parent_model=job.parent_model,
        shared_by=owner if shared else None,
    )


def _checkpoint(job: FineTuningJob, checkpoint: FineTuningCheckpoint, owner: str) -> ModelObject:
    return ModelObject(
        id=checkpoint_model_name(job, owner, checkpoint.step_number),
        created=checkpoint.created_at,
        owned_by=owner,
        kind="checkpoint",
        base_model=job.model,
        fine_tuning_job=job.id,
        step_number=checkpoint.step_number,
        parent_model=job.parent_model,
    )


def list_models(session: Session, settings: Settings, user: User) -> list[ModelObject]:
    jobs = JobRepository(session, user.id)
    checkpoints: dict[str, list[ModelObject]] = {}
    jobs_with_checkpoints: list[FineTuningJob] = []
    for job, checkpoint in jobs.checkpoint_models():
        if job.id not in checkpoints:
            checkpoints[job.id] = []
            jobs_with_checkpoints.append(job)
        checkpoints[job.id].append(_checkpoint(job, checkpoint, user.name))
    models = [_base(model_id) for model_id in settings.base_models]
    for job in jobs.list_fine_tuned_models():
        models.append(_fine_tune(job, user.name))
        models += checkpoints.pop(job.id, [])
    # Checkpoints of jobs without a fine-tune (yet): running, paused, cancelled, failed.
    for job in jobs_with_checkpoints:
        models += checkpoints.pop(job.id, [])
    models += [_fine_tune(job, owner, shared=True) for job, owner in shared_jobs(session, user.id)]
    return models


def get_model(session: Session, settings: Settings, user: User, model_id: str) -> ModelObject:
    if model_id in settings.base_models:
        return _base(model_id)
    fine_tune = find_fine_tune(session, user.id, model_id, shared=True)
    if fine_tune is None:
        raise model_not_found(model_id)
    if fine_tune.job.owner_id != user.id:
        return _fine_tune(fine_tune.job, owner_name(session, fine_tune.job), shared=True)
    if fine_tune.step is not None:
        checkpoint = JobRepository(session, user.id).checkpoint(fine_tune.job.id, fine_tune.step)
        return _checkpoint(fine_tune.job, checkpoint, user.name)
    return _fine_tune(fine_tune.job, user.name)


def delete_model(session: Session, storage: Storage, settings: Settings, user: User, model_id: str) -> None:
    """A fine-tune's weights go with its model; the job and its history stay."""
    if model_id in settings.base_models:
        raise Forbidden(
            f"'{model_id}' is a base model of this deployment; only fine-tunes can be deleted.",
            param="model",
            code="model_not_deletable",
        )
    fine_tune = find_fine_tune(session, user.id, model_id)
    if fine_tune is not None and fine_tune.step is not None:
        raise Forbidden(
            f"'{model_id}' is a checkpoint of job {fine_tune.job.id}; delete its fine-tune "
            f"('{model_id.rsplit(':', 1)[0]}') to delete it and every checkpoint with it.",
            param="model",
            code="model_not_deletable",
        )
    job = JobRepository(session, user.id).get_by_model(model_id)
    if job is None:
        refuse_sharee_model(session, user, model_id)
        raise model_not_found(model_id)
    job.model_deleted = True
    job.adapter_key = None
    ShareRepository(session, user.id).delete_all(job.id)  # a model deleted is no longer shared
    export_keys = delete_exports(session, job)
    session.commit()
    storage.delete_prefix(f"jobs/{job.id}/adapter")
    storage.delete_prefix(f"jobs/{job.id}/checkpoints")  # its checkpoint models go with it
    for key in (f"jobs/{job.id}/adapter.zip", *export_keys):
        storage.delete(key)
