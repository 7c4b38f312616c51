"""Queries on fine-tuning jobs.

`JobRepository` answers a user: every query is scoped to the owner. What
workers do to a job by id goes through its lease (domain/runs/leases.py,
kind JOB): every write is conditional on the attempt the worker claimed, so a
worker that lost its claim (presumed dead, requeued) can no longer change it.
"""

from __future__ import annotations

import time

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from domain.ids import new_id
from domain.jobs.models import FineTuningCheckpoint, FineTuningEvent, FineTuningJob
from domain.runs.kinds import JOB
from domain.runs.leases import Leases

ACTIVE_STATUSES = ("validating_files", "queued", "running", "paused")
# Statuses in which no worker holds the job: a pause takes effect at once.
WAITING_STATUSES = ("validating_files", "queued")
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

    def checkpoint(self, job_id: str, step: int) -> FineTuningCheckpoint | None:
        """One checkpoint of one of the owner's jobs (not of a deleted model)."""
        return self.session.scalar(
            select(FineTuningCheckpoint)
            .join(FineTuningJob, FineTuningJob.id == FineTuningCheckpoint.job_id)
            .where(
                FineTuningJob.id == job_id,
                FineTuningJob.owner_id == self.owner_id,
                FineTuningJob.model_deleted.is_(False),
                FineTuningCheckpoint.step_number == step,
            )
        )

    def checkpoint_models(self) -> list[tuple[FineTuningJob, FineTuningCheckpoint]]:
        """Every checkpoint of the owner's jobs (each one a model), newest job
        first, each job's in step order."""
        query = (
            select(FineTuningJob, FineTuningCheckpoint)
            .join(FineTuningCheckpoint, FineTuningCheckpoint.job_id == FineTuningJob.id)
            .where(FineTuningJob.owner_id == self.owner_id, FineTuningJob.model_deleted.is_(False))
            .order_by(FineTuningJob.id.desc(), FineTuningCheckpoint.step_number)
        )
        return [(job, checkpoint) for job, checkpoint in self.session.execute(query)]

    def metrics_events(self, job_id: str) -> list[FineTuningEvent]:
        query = select(FineTuningEvent).where(FineTuningEvent.job_id == job_id, FineTuningEvent.type == "metrics")
        return list(self.session.scalars(query.order_by(FineTuningEvent.seq)))


def record_checkpoint(session: Session, job_id: str, attempt: int, step: int, metrics: dict, storage_key: str) -> bool:
    """Record a checkpoint whose files are already in storage, fenced by the
    worker's attempt; it becomes the one a resumed attempt starts from. Commits."""
    leases = Leases(session, JOB)
    if not leases.update(job_id, attempt, checkpoint_step=step, checkpoint_key=storage_key):
        session.rollback()
        return False
    existing = session.scalar(
        select(FineTuningCheckpoint).where(FineTuningCheckpoint.job_id == job_id, FineTuningCheckpoint.step_number == step)
    )
    if existing is None:
        session.add(
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
    session.commit()
    return True


def cancel(session: Session, job_id: str) -> bool:
    """Conditional: a worker finishing at this very moment wins. Does not commit."""
    result = session.execute(
        update(FineTuningJob)
        .where(FineTuningJob.id == job_id, FineTuningJob.status.in_(ACTIVE_STATUSES))
        .values(status="cancelled", finished_at=int(time.time()), estimated_finish=None)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1
