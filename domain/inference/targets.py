"""Which weights answer a model name: a base model of the deployment, or one
of the caller's fine-tunes or checkpoint models, or a fine-tune shared with
them (its root base plus that LoRA adapter, domain/jobs/lineage.py). Used by
the API before queueing and by workers for batch lines and evaluations; no
HTTP here. `resolve_model` also answers `conn:{name}/{model}`: a model of one
of the caller's connections (domain/connections/), called over HTTP instead."""

from dataclasses import dataclass

from sqlalchemy.orm import Session

from domain.connections.client import ExternalModel
from domain.connections.service import CONNECTION_PREFIX, resolve_external
from domain.errors import InvalidRequest
from domain.jobs.lineage import find_fine_tune
from domain.jobs.weights import is_full_fine_tune, not_servable_message
from domain.settings import Settings


@dataclass(frozen=True)
class InferenceTarget:
    model: str  # the public id the caller used
    base_id: str
    job_id: str | None  # whose adapter to attach; None means the base weights
    # Where the adapter's PEFT folder is stored (a job's final adapter or one
    # of its checkpoints), and a name for it unique among adapters.
    adapter_key: str | None = None
    adapter_id: str | None = None

    def as_dict(self) -> dict:
        return {
            "model": self.model, "base_id": self.base_id, "job_id": self.job_id,
            "adapter_key": self.adapter_key, "adapter_id": self.adapter_id,
        }


def resolve_target(session: Session, owner_id: int, settings: Settings, model: str) -> InferenceTarget | None:
    """None when the model does not exist for this user, or is no longer
    shared with them (or its base is no longer offered by the deployment);
    InvalidRequest for a full fine-tune, which exists but is not served here.
    Asked again for every request, each chunk of a batch's lines and each
    evaluation run, so a revoked share stops them at once."""
    if model in settings.base_models:
        return InferenceTarget(model=model, base_id=model, job_id=None)
    fine_tune = find_fine_tune(session, owner_id, model, shared=True)
    if fine_tune is None or fine_tune.base_id not in settings.base_models:
        return None
    if is_full_fine_tune(fine_tune.job):  # its own whole model, not an adapter on a base this serves
        raise InvalidRequest(not_servable_message(model, fine_tune.job), param="model", code="model_not_supported")
    return InferenceTarget(
        model=model, base_id=fine_tune.base_id, job_id=fine_tune.job.id,
        adapter_key=fine_tune.adapter_key, adapter_id=fine_tune.adapter_id,
    )


def resolve_model(session: Session, owner_id: int, settings: Settings, model: str) -> InferenceTarget | ExternalModel | None:
    """resolve_target, and a connection's model for a `conn:` id (None when
    the connection is not this user's or the model is outside its allow-list).
    Wherever a model id may be external, this is the one to ask. Conflict
    `connection_key_unreadable` when the connection's key cannot be decrypted here."""
    if model.startswith(CONNECTION_PREFIX):
        return resolve_external(session, owner_id, settings, model)
    return resolve_target(session, owner_id, settings, model)
