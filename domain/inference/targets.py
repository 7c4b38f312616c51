"""Which weights answer a model name: a base model of the deployment, or one
of the caller's fine-tunes (its base plus the job's LoRA adapter). Used by the
API before queueing and by workers for batch lines; no HTTP here."""

from dataclasses import dataclass

from sqlalchemy.orm import Session

from domain.jobs.repository import JobRepository
from domain.settings import Settings


@dataclass(frozen=True)
class InferenceTarget:
    model: str  # the public id the caller used
    base_id: str
    job_id: str | None  # whose adapter to attach; None means the base weights

    def as_dict(self) -> dict:
        return {"model": self.model, "base_id": self.base_id, "job_id": self.job_id}


def resolve_target(session: Session, owner_id: int, settings: Settings, model: str) -> InferenceTarget | None:
    """None when the model does not exist for this owner (or its base is no
    longer offered by the deployment)."""
    if model in settings.base_models:
        return InferenceTarget(model=model, base_id=model, job_id=None)
    job = JobRepository(session, owner_id).get_by_model(model)
    if job is None or job.adapter_key is None or job.model not in settings.base_models:
        return None
    return InferenceTarget(model=model, base_id=job.model, job_id=job.id)
