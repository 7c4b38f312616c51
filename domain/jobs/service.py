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
from domain.jobs.hyperparameters import HyperparameterError, requested_values, resolve, stats_from_report
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

# The API cannot know a model's context length without loading it; this only
# lets the preview resolution check what it can (batch size vs examples, …).
_UNKNOWN_MODEL_MAX_LENGTH = 1 << 20


def _requested_hyperparameters(request: CreateJobRequest) -> tuple[dict[str, Any], str]:
    """The explicit hyperparameters (validated with the request) and the
    request path they came from."""
    supervised = request.method.supervised if request.method else None
    in_method = supervised.hyperparameters if supervised else None
    given_in_method = in_method is not None and bool(in_method.model_fields_set)
    if given_in_method and request.hyperparameters is not None and request.hyperparameters.model_fields_set:
        raise InvalidRequest(
            "Give hyperparameters either at the top level or in method.supervised, not both.",
            param="hyperparameters",
        )
    if given_in_method:
        return requested_values(in_method), "method.supervised.hyperparameters"
    return requested_values(request.hyperparameters), "hyperparameters"


def _training_file(session: Session, storage: Storage, user: User, file_id: str, param: str) -> File:
    # A missing file is a 400 here (the fine-tuning API always said so).
    return usable_file(
        session, user, file_id, purpose="fine-tune", param=param, missing=InvalidRequest, storage=storage
    )


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


def preview_hyperparameters(
    session: Session, storage: Storage, settings: Settings, user: User, request: CreateJobRequest
) -> dict:
    """What `auto` would resolve to for this request, before creating it; it
    refuses what create would refuse. Estimates: the worker resolves again on
    the real token counts and device."""
    _check_model(settings, request)
    device = _likely_worker_device(settings)
    checked = _checked_request(session, storage, user, request, device=device)
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
    checked = _checked_request(session, storage, user, request)
    training, validation = checked.training, checked.validation

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
    send_to_worker(session, queue, JOB, job.id)


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
    if not repository.cancel(session, job.id):
        session.refresh(job)
        raise InvalidRequest(f"Job '{job_id}' has already {job.status}; it cannot be cancelled.", code="job_not_cancellable"
        )
    # A running worker sees the status at its next step and stops there.
    add_event(session, job.id, "Job cancelled" + (" (the worker stops at its next step)" if was_running else ""))
    session.commit()
    session.refresh(job)
    return job
