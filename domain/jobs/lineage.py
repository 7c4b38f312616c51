"""Fine-tunes as models, and models as parents: what a `ft:…` name stands for.

A job that succeeds is the model `ft:{base}:{owner}:{suffix}:{job id}`; each of
its checkpoints is the model `{that name}:ckpt-step-{N}` (OpenAI's
`fine_tuned_model_checkpoint`), usable wherever a fine-tune is, from the moment
the checkpoint is saved (also while the job runs or is paused). Either may be
the base of a new job, which then continues that adapter on the same root
base model. No HTTP and no torch here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from domain.auth.models import User
from domain.errors import InvalidRequest
from domain.jobs.hyperparameters import param_path
from domain.jobs.models import FineTuningCheckpoint, FineTuningJob
from domain.jobs.repository import JobRepository
from domain.jobs.schemas import fine_tuned_model_name
from domain.settings import Settings
from domain.sharing.repository import shared_job_by_model

_CHECKPOINT_SUFFIX = re.compile(r"^(?P<fine_tune>ft:.+):ckpt-step-(?P<step>[0-9]{1,9})$")


def checkpoint_model_name(job: FineTuningJob, owner_name: str, step: int) -> str:
    return f"{fine_tuned_model_name(job, owner_name)}:ckpt-step-{step}"


def final_adapter_key(job_id: str) -> str:
    """Where a succeeded job's adapter folder is stored (worker/training/job.py)."""
    return f"jobs/{job_id}/adapter"


@dataclass(frozen=True)
class FineTuneModel:
    """What a `ft:…` model name stands for."""

    name: str  # as the caller gave it
    job: FineTuningJob  # the job whose adapter it is
    step: int | None  # the checkpoint's step; None for the job's final adapter
    adapter_key: str  # the storage prefix of its PEFT folder

    @property
    def base_id(self) -> str:
        return self.job.model  # the root base model's public id

    @property
    def adapter_id(self) -> str:
        """A name for its adapter, unique among all adapters (cache key, folder name)."""
        return self.job.id if self.step is None else f"{self.job.id}.ckpt-step-{self.step}"


def find_fine_tune(session: Session, owner_id: int, model: str, *, shared: bool = False) -> FineTuneModel | None:
    """The owner's fine-tune or checkpoint model called `model`, or None (not
    theirs, no such model, deleted, or its adapter is gone). With `shared`,
    also another user's fine-tune shared with them (domain/sharing; its
    checkpoint models are not shared): for using a model, never for changing
    it or training on it."""
    if not model.startswith("ft:"):
        return None
    jobs = JobRepository(session, owner_id)
    match = _CHECKPOINT_SUFFIX.match(model)
    if match is None:
        job = jobs.get_by_model(model)
        if job is None and shared:
            job = shared_job_by_model(session, owner_id, model)
        if job is None or job.adapter_key is None:
            return None
        return FineTuneModel(model, job, None, final_adapter_key(job.id))
    job_id = match["fine_tune"].rsplit(":", 1)[-1]
    step = int(match["step"])
    job = jobs.get(job_id)
    if job is None or job.model_deleted:
        return None
    owner = session.get(User, owner_id)
    if owner is None or fine_tuned_model_name(job, owner.name) != match["fine_tune"]:
        return None
    checkpoint: FineTuningCheckpoint | None = jobs.checkpoint(job.id, step)
    if checkpoint is None:
        return None
    return FineTuneModel(model, job, step, checkpoint.storage_key)


# --------------------------------------------------------------------------
# Fine-tunes of fine-tunes

# The LoRA settings a child takes from its parent's adapter (it trains that adapter on).
INHERITED = ("lora_r", "lora_alpha", "lora_dropout", "target_modules")


def parent_for_request(session: Session, settings: Settings, owner_id: int, model: str, requested: dict[str, Any]) -> FineTuneModel:
    """The fine-tune or checkpoint model a new job continues, checked: the
    caller's, its adapter there, its base still offered, a LoRA adapter, and
    no LoRA setting asked for that differs from the parent's."""
    parent = find_fine_tune(session, owner_id, model)
    if parent is None:
        raise InvalidRequest(
            f"Model '{model}' is not one of your succeeded fine-tunes or their checkpoints, "
            f"nor a base model offered here ({', '.join(sorted(settings.base_models))}).",
            param="model", code="model_not_found",
        )
    if parent.base_id not in settings.base_models:
        raise InvalidRequest(
            f"Model '{model}' was trained on '{parent.base_id}', which this deployment no longer offers.",
            param="model", code="model_not_found",
        )
    resolved = parent.job.hyperparameters or {}
    if (resolved.get("adapter") or {}).get("value") == "full":
        raise InvalidRequest(
            f"Model '{model}' is a full fine-tune; only LoRA/QLoRA fine-tunes can be fine-tuned further here.",
            param="model", code="model_not_supported",
        )
    if requested.get("adapter") == "full":
        raise InvalidRequest(
            f"A job on '{model}' trains its LoRA adapter on; adapter 'full' starts from the base model "
            f"'{parent.base_id}' instead.",
            param=param_path("adapter"), code="invalid_hyperparameters",
        )
    for name in INHERITED:
        parent_value = (resolved.get(name) or {}).get("value")
        if name in requested and parent_value is not None and _differs(requested[name], parent_value):
            raise InvalidRequest(
                f"{name} is {parent_value!r} in '{model}', whose adapter this job trains on; "
                f"leave {name} out (or give {parent_value!r}), or start from the base model '{parent.base_id}'.",
                param=param_path(name), code="invalid_hyperparameters",
            )
    return parent


def _differs(requested: Any, parent: Any) -> bool:
    if isinstance(requested, list | tuple) and isinstance(parent, list | tuple):
        return sorted(requested) != sorted(parent)
    if isinstance(requested, int | float) and isinstance(parent, int | float):
        return float(requested) != float(parent)
    return requested != parent


def parent_of_job(session: Session, job: FineTuningJob) -> FineTuneModel | None:
    """What a job continues (None: it starts from its base model)."""
    if not job.parent_job_id:
        return None
    parent_job = JobRepository(session, job.owner_id).get(job.parent_job_id)
    if parent_job is None or parent_job.model_deleted:
        return None
    if job.parent_checkpoint_step is None:
        if parent_job.adapter_key is None:
            return None
        return FineTuneModel(job.parent_model or "", parent_job, None, final_adapter_key(parent_job.id))
    checkpoint = JobRepository(session, job.owner_id).checkpoint(parent_job.id, job.parent_checkpoint_step)
    if checkpoint is None:
        return None
    return FineTuneModel(job.parent_model or "", parent_job, job.parent_checkpoint_step, checkpoint.storage_key)


def with_inherited(resolved: dict[str, dict], parent: FineTuneModel) -> dict[str, dict]:
    """The job's resolved hyperparameters with the LoRA settings of the adapter it continues."""
    out = dict(resolved)
    for name in INHERITED:
        detail = (parent.job.hyperparameters or {}).get(name)
        if detail is not None:
            out[name] = {"value": detail["value"], "origin": "parent",
                         "reason": f"the adapter of {parent.name}, which this job trains on"}
    return out


def lineage_entry(parent: FineTuneModel) -> dict[str, Any]:
    """The recipe's `parent`: the model continued and its own recipe, which
    holds its parent's in turn, down to the base model."""
    return {
        "model": parent.name,
        "fine_tuning_job": parent.job.id,
        "checkpoint_step": parent.step,
        "adapter": parent.adapter_key,
        "recipe": parent.job.recipe,
    }


def lineage_chain(parent: FineTuneModel | None, base_id: str) -> list[str]:
    """Every model from the parent down to the root base model."""
    chain: list[str] = []
    entry = lineage_entry(parent) if parent is not None else None
    while entry is not None:
        chain.append(entry["model"])
        entry = (entry.get("recipe") or {}).get("parent")
    return chain + [base_id]
