"""Every kind of leased work, in one place: what the recovery loop walks and
what a worker's run (worker/runs.py) is parameterised by."""

import time
from typing import Any

from sqlalchemy.orm import Session

from domain.batches import models as batches
from domain.evaluations import models as evaluations
from domain.exports import models as exports
from domain.jobs.models import FineTuningJob
from domain.jobs.events import add_event
from domain.queue_client import BATCH_TASK, EVALUATION_TASK, EXPORT_TASK, TRAIN_TASK
from domain.runs.leases import LeaseKind


def _job_failed_values(code: str, message: str) -> dict[str, Any]:
    return {
        "status": "failed",
        "error": {"code": code, "message": message, "param": None},
        "finished_at": int(time.time()),
        "estimated_finish": None,
    }


def _job_event(session: Session, job_id: str, message: str, level: str) -> None:
    add_event(session, job_id, message, level=level)


def _job_resume_note(job) -> str:
    where = f"the checkpoint at step {job.checkpoint_step}" if job.checkpoint_step else "the start"
    return f" to resume from {where}"


def _running_since(row, now: float) -> dict[str, Any]:
    # A re-claim keeps the first start.
    return {"status": "running", "started_at": row.started_at or int(now)}


JOB = LeaseKind(
    name="job",
    model=FineTuningJob,
    task=TRAIN_TASK,
    claimable=("queued", "running"),
    held=("running",),
    failed_values=_job_failed_values,
    claim_values=_running_since,
    release_values={"status": "queued"},
    record=_job_event,
    resume_note=_job_resume_note,
    paused_values={"status": "paused", "estimated_finish": None},
)

BATCH = LeaseKind(
    name="batch",
    model=batches.Batch,
    task=BATCH_TASK,
    claimable=batches.WORKING_STATUSES,
    held=batches.WORKING_STATUSES,
    failed_values=batches.failed_values,
)

EVALUATION = LeaseKind(
    name="evaluation",
    model=evaluations.Evaluation,
    task=EVALUATION_TASK,
    claimable=evaluations.WORKING_STATUSES,
    held=evaluations.WORKING_STATUSES,
    failed_values=evaluations.failed_values,
    claim_values=_running_since,
)

EXPORT = LeaseKind(
    name="export",
    model=exports.Export,
    task=EXPORT_TASK,
    claimable=exports.CLAIMABLE_STATUSES,
    held=("running",),
    failed_values=exports.failed_values,
    claim_values=lambda row, now: {"status": "running"},
    release_values={"status": "queued"},
)

ALL_KINDS = (JOB, BATCH, EVALUATION, EXPORT)
