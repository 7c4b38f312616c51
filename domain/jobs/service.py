import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from domain.auth.models import User
from domain.errors import Conflict, InvalidRequest, NotFound
from domain.files.models import File
from domain.files.repository import FileRepository
from domain.ids import new_id
from domain.jobs.hyperparameters import HyperparameterError, parse_hyperparameters, resolve, stats_from_report
from domain.jobs.models import FineTuningJob
from domain.jobs.repository import ACTIVE_STATUSES, JobLifecycle, JobRepository, add_event
from domain.jobs.schemas import CreateJobRequest
from domain.queue_client import TRAIN_TASK, TaskQueue
from domain.settings import Settings
from domain.storage import Storage

# The API cannot know a model's context length without loading it; this only
# lets the preview resolution check what it can (batch size vs examples, …).
_UNKNOWN_MODEL_MAX_LENGTH = 1 << 20


def _requested_hyperparameters(request: CreateJobRequest) -> tuple[dict[str, Any], str]:
    """The explicit hyperparameters and the request path they came from."""
    method = request.method
    if method is None:
        return parse_hyperparameters(request.hyperparameters), "hyperparameters"
    if not isinstance(method, dict) or method.get("type") != "supervised":
        kind = method.get("type") if isinstance(method, dict) else method
        raise InvalidRequest(
            f"Only supervised fine-tuning is supported (method.type 'supervised'), got {kind!r}.",
            param="method.type",
            code="unsupported_method",
        )
    supervised = method.get("supervised") or {}
    if not isinstance(supervised, dict):
        raise InvalidRequest("method.supervised must be an object.", param="method.supervised")
    if request.hyperparameters and supervised.get("hyperparameters"):
        raise InvalidRequest(
            "Give hyperparameters either at the top level or in method.supervised, not both.",
            param="hyperparameters",
        )
    prefix = "method.supervised.hyperparameters" if supervised.get("hyperparameters") else "hyperparameters"
    return parse_hyperparameters(supervised.get("hyperparameters") or request.hyperparameters, param_prefix=prefix), prefix


def _training_ready_file(files: FileRepository, file_id: str, param: str) -> File:
    file = files.get(file_id)
    if file is None:
        raise InvalidRequest(f"No such file: '{file_id}'.", param=param, code="file_not_found")
    if file.purpose != "fine-tune":
        raise InvalidRequest(
            f"File '{file_id}' has purpose '{file.purpose}'; fine-tuning needs a file uploaded with purpose 'fine-tune'.",
            param=param,
            code="invalid_file_purpose",
        )
    if file.status != "processed" or not file.report:
        raise InvalidRequest(f"File '{file_id}' is not ready for training.", param=param, code="file_not_ready")
    return file


def _check_model(settings: Settings, request: CreateJobRequest) -> None:
    if request.model not in settings.base_models:
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


def _checked_request(session: Session, user: User, request: CreateJobRequest, *, device: str = "cuda") -> CheckedRequest:
    """The files and hyperparameters of a job request, checked, with a
    resolution on the upload report's estimated statistics."""
    try:
        requested, param_prefix = _requested_hyperparameters(request)
    except HyperparameterError as exc:
        raise InvalidRequest(exc.message, param=exc.param, code="invalid_hyperparameters") from exc

    files = FileRepository(session, user.id)
    training = _training_ready_file(files, request.training_file, "training_file")
    validation = None
    if request.validation_file:
        validation = _training_ready_file(files, request.validation_file, "validation_file")
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
            requested, stats, model_max_length=_UNKNOWN_MODEL_MAX_LENGTH, device=device, param_prefix=param_prefix
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


def preview_hyperparameters(session: Session, settings: Settings, user: User, request: CreateJobRequest) -> dict:
    """What `auto` would resolve to for this request, before creating it.
    Estimates: the worker resolves again on the real token counts and device."""
    _check_model(settings, request)
    device = _likely_worker_device(settings)
    checked = _checked_request(session, user, request, device=device)
    return {
        "object": "fine_tuning.job.preview",
        "device": device,
        "hyperparameters": checked.preview,
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
    for key, value in (request.metadata or {}).items():
        if len(key) > 64 or len(value) > 512:
            raise InvalidRequest("Metadata keys are at most 64 and values 512 characters.", param="metadata")
    checked = _checked_request(session, user, request)
    training, validation = checked.training, checked.validation
    for file, param in ((training, "training_file"), (validation, "validation_file")):
        if file is not None and not storage.exists(file.storage_key):
            raise Conflict(f"The content of file '{file.id}' is missing from storage.", param=param, code="file_missing")

    seed = request.seed if request.seed is not None else secrets.randbelow(2**31)
    job = JobRepository(session, user.id).add(
        FineTuningJob(
            id=new_id("ftjob-"),
            owner_id=user.id,
            model=request.model,
            training_file_id=training.id,
            validation_file_id=validation.id if validation else None,
            status="queued",
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
    add_event(session, job.id, f"Created fine-tuning job {job.id} on {job.model}")
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
    if queue.send(TRAIN_TASK, job.id):
        JobLifecycle(session).mark_enqueued(job.id)


def get_job(session: Session, user: User, job_id: str) -> FineTuningJob:
    job = JobRepository(session, user.id).get(job_id)
    if job is None:
        raise NotFound.of("fine-tuning job", job_id, param="fine_tuning_job_id")
    return job


def cancel_job(session: Session, user: User, job_id: str) -> FineTuningJob:
    job = get_job(session, user, job_id)
    if job.status not in ACTIVE_STATUSES:
        raise InvalidRequest(f"Job '{job_id}' has already {job.status}; it cannot be cancelled.", code="job_not_cancellable"
        )
    was_running = job.status == "running"
    # Conditional: a worker finishing at this very moment wins, not us.
    if not JobLifecycle(session).cancel(job.id):
        session.refresh(job)
        raise InvalidRequest(f"Job '{job_id}' has already {job.status}; it cannot be cancelled.", code="job_not_cancellable"
        )
    # A running worker sees the status at its next step and stops there.
    add_event(session, job.id, "Job cancelled" + (" (the worker stops at its next step)" if was_running else ""))
    session.commit()
    session.refresh(job)
    return job
