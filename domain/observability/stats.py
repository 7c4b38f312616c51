"""Aggregate counts over every user, for GET /metrics (api/observability.py).

Nothing here is scoped to an owner: the answers are counts and rates only,
never an id, a name or any content.
"""

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from domain.batches.models import Batch
from domain.evaluations.models import Evaluation
from domain.jobs.models import FineTuningEvent, FineTuningJob

# Every status each kind of work can be in (api/*/schemas.py), so each is
# reported, 0 included: a series that disappears is harder to alert on.
JOB_STATUSES = ("validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled")
BATCH_STATUSES = (
    "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"
)
EVALUATION_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


def _counts_by_status(session: Session, model, statuses: tuple[str, ...]) -> dict[str, int]:
    counts = dict.fromkeys(statuses, 0)
    for status, count in session.execute(select(model.status, func.count()).group_by(model.status)):
        counts[status] = count  # a status unknown here is reported too
    return counts


def job_counts_by_status(session: Session) -> dict[str, int]:
    return _counts_by_status(session, FineTuningJob, JOB_STATUSES)


def batch_counts_by_status(session: Session) -> dict[str, int]:
    return _counts_by_status(session, Batch, BATCH_STATUSES)


def evaluation_counts_by_status(session: Session) -> dict[str, int]:
    return _counts_by_status(session, Evaluation, EVALUATION_STATUSES)


def running_tokens_per_second(session: Session) -> float:
    """Training throughput now: over running jobs, the tokens_per_second of each
    one's latest `metrics` event (the worker writes one per logged step); 0
    when nothing runs."""
    latest = (
        select(FineTuningEvent.job_id, func.max(FineTuningEvent.seq).label("seq"))
        .join(FineTuningJob, FineTuningJob.id == FineTuningEvent.job_id)
        .where(FineTuningJob.status == "running", FineTuningEvent.type == "metrics")
        .group_by(FineTuningEvent.job_id)
        .subquery()
    )
    rows = session.scalars(select(FineTuningEvent.data).join(latest, FineTuningEvent.seq == latest.c.seq))
    total = 0.0
    for data in rows:
        value = (data or {}).get("tokens_per_second")
        if isinstance(value, int | float) and value > 0:
            total += float(value)
    return total
