"""Queries on fine-tuning jobs.

`JobRepository` answers a user: every query is scoped to the owner.
`JobLifecycle` is what workers and the recovery loop do to a job by id; every
write a worker makes is conditional on the attempt it claimed, so a worker
that lost its claim (presumed dead, requeued) can no longer change the job.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from domain.ids import new_id
from domain.jobs.models import FineTuningCheckpoint, FineTuningEvent, FineTuningJob

ACTIVE_STATUSES = ("validating_files", "queued", "running")
FINAL_STATUSES = ("succeeded", "failed", "cancelled")


class JobRepository:
    def __init__(self, session: Session, owner_id: int):
        self.session = session
        self.owner_id = owner_id

    def get(self, job_id: str) -> FineTuningJob | None:
        return self.session.scalar(
            select(FineTuningJob).where(FineTuningJob.id == job_id, FineTuningJob.owner_id == self.owner_id)
        )

    def get_by_model(self, model_name: str) -> FineTuningJob | None:
        return self.session.scalar(
            select(FineTuningJob).where(
                FineTuningJob.fine_tuned_model == model_name,
                FineTuningJob.owner_id == self.owner_id,
                FineTuningJob.model_deleted.is_(False),
            )
        )

    def list(self, *, after: str | None, limit: int, metadata: dict[str, str]) -> list[FineTuningJob]:
        query = select(FineTuningJob).where(FineTuningJob.owner_id == self.owner_id)
        if after:
            query = query.where(FineTuningJob.id < after)
        for key, value in metadata.items():
            query = query.where(FineTuningJob.user_metadata[key].as_string() == value)
        return list(self.session.scalars(query.order_by(FineTuningJob.id.desc()).limit(limit)))

    def list_fine_tuned_models(self) -> list[FineTuningJob]:
        query = select(FineTuningJob).where(
            FineTuningJob.owner_id == self.owner_id,
            FineTuningJob.status == "succeeded",
            FineTuningJob.fine_tuned_model.is_not(None),
            FineTuningJob.model_deleted.is_(False),
        )
        return list(self.session.scalars(query.order_by(FineTuningJob.id.desc())))

    def add(self, job: FineTuningJob) -> FineTuningJob:
        self.session.add(job)
        self.session.flush()
        return job

    def events(self, job_id: str, *, after: str | None, limit: int) -> list[FineTuningEvent]:
        """Newest first, like OpenAI's event list; `after` is an event id."""
        query = select(FineTuningEvent).where(FineTuningEvent.job_id == job_id)
        if after:
            after_seq = select(FineTuningEvent.seq).where(
                FineTuningEvent.id == after, FineTuningEvent.job_id == job_id
            ).scalar_subquery()
            query = query.where(FineTuningEvent.seq < after_seq)
        return list(self.session.scalars(query.order_by(FineTuningEvent.seq.desc()).limit(limit)))

    def checkpoints(self, job_id: str, *, after: str | None, limit: int) -> list[FineTuningCheckpoint]:
        query = select(FineTuningCheckpoint).where(FineTuningCheckpoint.job_id == job_id)
        if after:
            after_step = select(FineTuningCheckpoint.step_number).where(
                FineTuningCheckpoint.id == after, FineTuningCheckpoint.job_id == job_id
            ).scalar_subquery()
            query = query.where(FineTuningCheckpoint.step_number < after_step)
        return list(self.session.scalars(query.order_by(FineTuningCheckpoint.step_number.desc()).limit(limit)))

    def metrics_events(self, job_id: str) -> list[FineTuningEvent]:
        query = select(FineTuningEvent).where(FineTuningEvent.job_id == job_id, FineTuningEvent.type == "metrics")
        return list(self.session.scalars(query.order_by(FineTuningEvent.seq)))


def add_event(
    session: Session, job_id: str, message: str, *, level: str = "info", type: str = "message", data: dict | None = None
) -> FineTuningEvent:
    event = FineTuningEvent(
        id=new_id("ft-event-"),
        job_id=job_id,
        created_at=int(time.time()),
        level=level,
        type=type,
        message=message,
        data=data,
    )
    session.add(event)
    return event


class JobLifecycle:
    """System-side transitions of a job, by id (workers, the recovery loop)."""

    def __init__(self, session: Session):
        self.session = session

    def get(self, job_id: str) -> FineTuningJob | None:
        return self.session.get(FineTuningJob, job_id)

    def claim(self, job_id: str, worker: str, heartbeat_timeout: float) -> int | None:
        """Take the job for this worker: from `queued`, or from `running` when
        its worker's heartbeat is stale (it died). Returns the new attempt
        number, or None when the job is not ours to run (a duplicate delivery,
        finished, cancelled, or alive elsewhere)."""
        now = time.time()
        job = self.get(job_id)
        if job is None:
            return None
        claimable = or_(
            FineTuningJob.status == "queued",
            and_(FineTuningJob.status == "running", FineTuningJob.heartbeat_at < now - heartbeat_timeout),
        )
        result = self.session.execute(
            update(FineTuningJob)
            .where(FineTuningJob.id == job_id, FineTuningJob.attempt == job.attempt, claimable)
            .values(
                status="running",
                attempt=job.attempt + 1,
                heartbeat_at=now,
                worker=worker,
                started_at=job.started_at or int(now),
            )
            .execution_options(synchronize_session=False)
        )
        self.session.commit()
        return job.attempt + 1 if result.rowcount == 1 else None

    def update_running(self, job_id: str, attempt: int, **values: Any) -> bool:
        """Write to a job we still own (status running, same attempt)."""
        result = self.session.execute(
            update(FineTuningJob)
            .where(FineTuningJob.id == job_id, FineTuningJob.attempt == attempt, FineTuningJob.status == "running")
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        self.session.commit()
        return result.rowcount == 1

    def heartbeat(self, job_id: str, attempt: int) -> bool:
        return self.update_running(job_id, attempt, heartbeat_at=time.time())

    def still_ours(self, job_id: str, attempt: int) -> bool:
        row = self.session.execute(
            select(FineTuningJob.status, FineTuningJob.attempt).where(FineTuningJob.id == job_id)
        ).one_or_none()
        self.session.rollback()  # end the read transaction: the next read sees fresh data
        return row is not None and row.status == "running" and row.attempt == attempt

    def add_checkpoint(self, job_id: str, attempt: int, step: int, metrics: dict, storage_key: str) -> bool:
        """Record a checkpoint whose files are already in storage; it becomes the
        one a resumed attempt starts from."""
        if not self.update_running(job_id, attempt, checkpoint_step=step, checkpoint_key=storage_key):
            return False
        existing = self.session.scalar(
            select(FineTuningCheckpoint).where(
                FineTuningCheckpoint.job_id == job_id, FineTuningCheckpoint.step_number == step
            )
        )
        if existing is None:
            self.session.add(
                FineTuningCheckpoint(
                    id=new_id("ftckpt_"),
                    job_id=job_id,
                    step_number=step,
                    metrics=metrics,
                    storage_key=storage_key,
                    created_at=int(time.time()),
                )
            )
        else:  # a resumed attempt redid this step: keep one row, newest files
            existing.metrics, existing.storage_key = metrics, storage_key
        self.session.commit()
        return True

    def stale_running_jobs(self, heartbeat_timeout: float) -> list[FineTuningJob]:
        cutoff = time.time() - heartbeat_timeout
        query = select(FineTuningJob).where(FineTuningJob.status == "running", FineTuningJob.heartbeat_at < cutoff)
        return list(self.session.scalars(query))

    def unsent_queued_jobs(self, older_than: float) -> list[FineTuningJob]:
        cutoff = time.time() - older_than
        query = select(FineTuningJob).where(
            FineTuningJob.status == "queued", FineTuningJob.enqueued_at.is_(None), FineTuningJob.created_at < cutoff
        )
        return list(self.session.scalars(query))

    def requeue(self, job: FineTuningJob) -> bool:
        """Give a job whose worker died back to the queue (conditional on what we saw)."""
        result = self.session.execute(
            update(FineTuningJob)
            .where(
                FineTuningJob.id == job.id,
                FineTuningJob.attempt == job.attempt,
                FineTuningJob.status == "running",
                FineTuningJob.heartbeat_at == job.heartbeat_at,
            )
            .values(status="queued", enqueued_at=time.time(), worker=None)
            .execution_options(synchronize_session=False)
        )
        self.session.commit()
        return result.rowcount == 1

    def hand_back(self, job_id: str, attempt: int) -> bool:
        """A worker that is shutting down gives its running job back to the
        queue (after saving a checkpoint); the caller sends a new message."""
        result = self.session.execute(
            update(FineTuningJob)
            .where(FineTuningJob.id == job_id, FineTuningJob.attempt == attempt, FineTuningJob.status == "running")
            .values(status="queued", worker=None, enqueued_at=None, handbacks=FineTuningJob.handbacks + 1)
            .execution_options(synchronize_session=False)
        )
        self.session.commit()
        return result.rowcount == 1

    def mark_enqueued(self, job_id: str) -> None:
        self.session.execute(
            update(FineTuningJob)
            .where(FineTuningJob.id == job_id, FineTuningJob.status == "queued")
            .values(enqueued_at=time.time())
            .execution_options(synchronize_session=False)
        )
        self.session.commit()

    def cancel(self, job_id: str) -> bool:
        result = self.session.execute(
            update(FineTuningJob)
            .where(FineTuningJob.id == job_id, FineTuningJob.status.in_(ACTIVE_STATUSES))
            .values(status="cancelled", finished_at=int(time.time()), estimated_finish=None)
            .execution_options(synchronize_session=False)
        )
        return result.rowcount == 1

    def request_merge(self, job_id: str) -> bool:
        """Queue the merge unless it is queued, running or done. A failed merge
        is tried again on the next request."""
        result = self.session.execute(
            update(FineTuningJob)
            .where(
                FineTuningJob.id == job_id,
                or_(FineTuningJob.merged_status.is_(None), FineTuningJob.merged_status == "failed"),
            )
            .values(merged_status="queued", merged_error=None)
            .execution_options(synchronize_session=False)
        )
        self.session.commit()
        return result.rowcount == 1

    def fail(self, job_id: str, code: str, message: str, *, attempt: int | None = None) -> bool:
        """End a job as failed, unless it already ended (or, with `attempt`, unless we lost it)."""
        conditions = [FineTuningJob.id == job_id, FineTuningJob.status.in_(ACTIVE_STATUSES)]
        if attempt is not None:
            conditions.append(FineTuningJob.attempt == attempt)
        result = self.session.execute(
            update(FineTuningJob)
            .where(*conditions)
            .values(status="failed", error={"code": code, "message": message, "param": None}, finished_at=int(time.time()))
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:
            add_event(self.session, job_id, message, level="error")
        self.session.commit()
        return result.rowcount == 1
