import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from domain.auth.models import User
from domain.errors import InvalidRequest, NotFound
from domain.files.models import File
from domain.files.service import usable_file
from domain.ids import new_id
from domain.jobs.hyperparameters import (
    HyperparameterError, param_path, plain_values, requested_values, resolve, stats_from_report,
)
from domain.jobs.lineage import FineTuneModel, parent_for_request, with_inherited
from domain.jobs.models import FineTuningJob
from domain.jobs import repository
from domain.jobs.events import add_event
from domain.jobs.repository import ACTIVE_STATUSES, JobRepository
from domain.runs.kinds import JOB
from domain.runs.leases import send_to_worker
from domain.jobs.schemas import CreateJobRequest
from domain.queue_client import TaskQueue
from domain.settings import Settings
from domain.storage import Storage
from domain.workers.repository import training_devices
from domain.workers.service import memory_preview, reported_device_kind
from domain.sharing.service import refuse_sharee_job

# The API cannot know a model's context length without loading it; this only
# lets the preview resolution check what it can (batch size vs examples, …).
_UNKNOWN_MODEL_MAX_LENGTH = 1 << 20


def _method(request: CreateJobRequest) -> str:
    return request.method.type if request.method else "supervised"


def _requested_hyperparameters(request: CreateJobRequest) -> tuple[dict[str, Any], str]:
    """The explicit hyperparameters (validated with the request) and the
    request path they came from."""
    method = _method(request)
    settings = getattr(request.method, method, None) if request.method else None
    in_method = settings.hyperparameters if settings else None
    given_in_method = in_method is not None and bool(in_method.model_fields_set)
    given_at_top = request.hyperparameters is not None and bool(request.hyperparameters.model_fields_set)
    if given_in_method and given_at_top:
        raise InvalidRequest(
            f"Give hyperparameters either at the top level or in method.{method}, not both.",
            param="hyperparameters",
        )
    if given_in_method:
        return requested_values(in_method), f"method.{method}.hyperparameters"
    return requested_values(request.hyperparameters), "hyperparameters"


# The file formats each method trains on (the upload report's "format").
_FORMATS = {"supervised": ("chat", "text", "prompt_completion"), "dpo": ("preference",)}
_FORMAT_WORDS = {"chat": "chat examples", "text": "raw text", "prompt_completion": "prompt/completion pairs",
                 "preference": "preference pairs"}


def file_format(file: File) -> str:
    """The format its validation detected; files validated before formats existed are chat."""
    return (file.report or {}).get("format", "chat")


def _check_formats(method: str, training: File, validation: File | None) -> None:
    fmt = file_format(training)
    if fmt not in _FORMATS[method]:
        hint = ('use method {"type": "dpo"}' if fmt == "preference"
                else 'use method {"type": "supervised"} or upload preference pairs')
        raise InvalidRequest(
            f"File '{training.id}' holds {_FORMAT_WORDS.get(fmt, fmt)}, which method '{method}' "
            f"does not train on ({hint}).",
            param="training_file", code="invalid_file_format",
        )
    if validation is not None and file_format(validation) != fmt:
        raise InvalidRequest(
            f"The validation file '{validation.id}' holds {_FORMAT_WORDS.get(file_format(validation))} "
            f"but the training file holds {_FORMAT_WORDS.get(fmt, fmt)}; both must have the same format.",
            param="validation_file", code="invalid_file_format",
        )


def _training_file(session: Session, storage: Storage, user: User, file_id: str, param: str) -> File:
    # A missing file is a 400 here (the fine-tuning API always said so).
    return usable_file(
        session, user, file_id, purpose="fine-tune", param=param, missing=InvalidRequest, storage=storage
    )


def _check_model(settings: Settings, request: CreateJobRequest) -> None:
    # A fine-tune ("ft:…") as the base is checked with the request (domain/jobs/lineage.py).
    if request.model not in settings.base_models and not request.model.startswith("ft:"):
        offered = ", ".join(sorted(settings.base_models))
        raise InvalidRequest(f"Model '{request.model}' is not available for fine-tuning here. Base models offered: {offered}.",
            param="model",
            code="model_not_found",
        )


@dataclass
class CheckedRequest:
    requested: dict[str, Any]
    training: File
    validation: File | None
    preview: dict[str, dict[str, Any]]


def _checked_request(
    session: Session, storage: Storage, user: User, request: CreateJobRequest, *, device: str = "cuda"
) -> CheckedRequest:
    """The files and hyperparameters of a job request, checked, with a
    resolution on the upload report's estimated statistics."""
    requested, param_prefix = _requested_hyperparameters(request)
    training = _training_file(session, storage, user, request.training_file, "training_file")
    validation = None
    if request.validation_file:
        validation = _training_file(session, storage, user, request.validation_file, "validation_file")
    _check_formats(_method(request), training, validation)
    stats = stats_from_report(training.report)
    if stats.train_examples == 0:
        raise InvalidRequest(
            f"File '{training.id}' has no TRAIN examples: every line is in the TEST split.",
            param="training_file",
            code="no_training_examples",
        )
    try:
        # A preview on estimated statistics: catches impossible combinations
        # (batch larger than the data, …) now rather than on a worker.
        preview = resolve(
            requested, stats, model_max_length=_UNKNOWN_MODEL_MAX_LENGTH, device=device, param_prefix=param_prefix,
            method=_method(request),
        )
    except HyperparameterError as exc:
        raise InvalidRequest(exc.message, param=exc.param, code="invalid_hyperparameters") from exc
    return CheckedRequest(requested, training, validation, preview)


def _likely_worker_device(settings: Settings) -> str:
    """The device `auto` will most likely find. Embedded mode's workers run
    on this machine: CUDA if it has an NVIDIA device. Production workers are
    GPU machines. (The API never imports torch to ask.)"""
    if settings.worker_device != "auto":
        return settings.worker_device
    if settings.broker_url.startswith("filesystem://"):
        return "cuda" if Path("/dev/nvidiactl").exists() else "cpu"
    return "cuda"


def _parent(
    session: Session, settings: Settings, user: User, request: CreateJobRequest, checked: CheckedRequest
) -> FineTuneModel | None:
    """The fine-tune (or checkpoint) a job on `model: "ft:…"` continues, checked."""
    if not request.model.startswith("ft:"):
        return None
    return parent_for_request(session, settings, user.id, request.model, checked.requested)


def _training_device(settings: Settings, devices: list[dict]) -> str:
    """The device kind the training workers reported (with `auto`), else the likely one."""
    device = _likely_worker_device(settings)
    if settings.worker_device == "auto":
        device = reported_device_kind(devices) or device
    return device


def _memory(session: Session, settings: Settings, request: CreateJobRequest, checked: CheckedRequest, device: str,
            devices: list[dict], parent=None) -> dict:
    """The estimate of the run's peak memory and whether it fits (domain/workers/service.py)."""
    return memory_preview(
        session, settings, parent.base_id if parent is not None else request.model, plain_values(checked.preview),
        device, devices, method=_method(request),
        row_tokens=stats_from_report(checked.training.report).token_length_max or None,
    )


def _refuse_full_that_does_not_fit(checked: CheckedRequest, memory: dict) -> None:
    """Full fine-tuning that would not fit the training workers' largest device
    is refused before it runs (LoRA and QLoRA are only told: the preview says so)."""
    if checked.preview["adapter"]["value"] == "full" and memory["fits"] is False:
        raise InvalidRequest(
            f"Full fine-tuning does not fit the training workers' memory: {memory['reason']}.",
            param=param_path("adapter"), code="insufficient_memory",
        )


def preview_hyperparameters(
    session: Session, storage: Storage, settings: Settings, user: User, request: CreateJobRequest
) -> dict:
    """What `auto` would resolve to for this request, before creating it; it
    refuses what create would refuse. Estimates: the worker resolves again on
    the real token counts and device."""
    _check_model(settings, request)
    devices = training_devices(session)  # one snapshot: the device kind and the fit are judged on it
    device = _training_device(settings, devices)
    checked = _checked_request(session, storage, user, request, device=device)
    parent = _parent(session, settings, user, request, checked)
    if parent is not None:
        checked.preview = with_inherited(checked.preview, parent)
    memory = _memory(session, settings, request, checked, device, devices, parent)
    _refuse_full_that_does_not_fit(checked, memory)
    return {
        "object": "fine_tuning.job.preview",
        "device": device,
        "hyperparameters": checked.preview,
        "memory": memory,
        "note": "Estimated from the upload report's token counts (characters / 4) for a "
        + ("CPU" if device == "cpu" else "CUDA")
        + " worker; the worker resolves `auto` again on the tokenized data, and the job records the final values.",
    }


def create_job(
    session: Session, storage: Storage, settings: Settings, user: User, request: CreateJobRequest
) -> FineTuningJob:
    """Check everything that can be checked before a worker sees the job; a
    request that cannot train is refused here and nothing is queued."""
    _check_model(settings, request)
    if request.integrations:
        raise InvalidRequest("Integrations are not supported.", param="integrations", code="unsupported_parameter")
    checked = _checked_request(session, storage, user, request)
    parent = _parent(session, settings, user, request, checked)
    if checked.preview["adapter"]["value"] == "full":  # refused now rather than out of memory on a worker
        devices = training_devices(session)
        memory = _memory(session, settings, request, checked, _training_device(settings, devices), devices, parent)
        _refuse_full_that_does_not_fit(checked, memory)
    training, validation = checked.training, checked.validation

    seed = request.seed if request.seed is not None else secrets.randbelow(2**31)
    job = JobRepository(session, user.id).add(
        FineTuningJob(
            id=new_id("ftjob-"),
            owner_id=user.id,
            model=parent.base_id if parent else request.model,  # the root base model
            parent_model=parent.name if parent else None,
            parent_job_id=parent.job.id if parent else None,
            parent_checkpoint_step=parent.step if parent else None,
            training_file_id=training.id,
            validation_file_id=validation.id if validation else None,
            status="queued",
            method=_method(request),
            requested_hyperparameters=checked.requested,
            seed=seed,
            seed_origin="user" if request.seed is not None else "auto",
            suffix=request.suffix or None,
            user_metadata=request.metadata,
            model_deleted=False,
            result_files=[],
            created_at=int(time.time()),
            attempt=0,
        )
    )
    split = training.report["split"]
    add_event(
        session, job.id,
        f"Created fine-tuning job {job.id} on {job.model}" + (f", continuing {parent.name}" if parent else ""),
    )
    eval_source = (
        f"validation file {validation.id} ({validation.report['examples']} examples)"
        if validation
        else f"the file's TEST split ({split['test']} examples)"
    )
    add_event(
        session,
        job.id,
        f"Files validated: {split['train']} training examples from {training.id}; evaluation on {eval_source}",
    )
    add_event(session, job.id, "Job queued")
    session.commit()
    return job


def enqueue(session: Session, queue: TaskQueue, job: FineTuningJob) -> None:
    """After the commit: a worker must never receive a job it cannot read."""
    send_to_worker(session, queue, JOB, job.id)


def get_job(session: Session, user: User, job_id: str) -> FineTuningJob:
    """The user's own job, to change it (reads that sharees may make go
    through domain.sharing.service.readable_job)."""
    job = JobRepository(session, user.id).get(job_id)
    if job is None:
        refuse_sharee_job(session, user, job_id)
        raise NotFound.of("fine-tuning job", job_id, param="fine_tuning_job_id")
    return job


def cancel_job(session: Session, user: User, job_id: str) -> FineTuningJob:
    job = get_job(session, user, job_id)
    if job.status not in ACTIVE_STATUSES:
        raise InvalidRequest(f"Job '{job_id}' has already {job.status}; it cannot be cancelled.", code="job_not_cancellable"
        )
    was_running = job.status == "running"
    # Conditional: a worker finishing at this very moment wins, not us.
    if not repository.cancel(session, job.id):
        session.refresh(job)
        raise InvalidRequest(f"Job '{job_id}' has already {job.status}; it cannot be cancelled.", code="job_not_cancellable"
        )
    # A running worker sees the status at its next step and stops there.
    add_event(session, job.id, "Job cancelled" + (" (the worker stops at its next step)" if was_running else ""))
    session.commit()
    session.refresh(job)
    return job
