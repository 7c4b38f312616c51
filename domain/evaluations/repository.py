"""Queries on evaluations. `EvaluationRepository` answers a user: every query
is scoped to the owner, so another user's evaluation does not exist here.
Workers go through domain/runs/leases.py instead (by id, fenced by attempt)."""

from __future__ import annotations

import time

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from domain.evaluations.models import WORKING_STATUSES, Evaluation


class EvaluationRepository:
    def __init__(self, session: Session, owner_id: int):
        self.session = session
        self.owner_id = owner_id

    def get(self, evaluation_id: str) -> Evaluation | None:
        return self.session.scalar(
            select(Evaluation).where(Evaluation.id == evaluation_id, Evaluation.owner_id == self.owner_id)
        )

    def list(self, *, after: str | None, limit: int, fine_tuning_job_id: str | None = None) -> list[Evaluation]:
        """Newest first; `after` is an evaluation id (ids sort by creation time)."""
        query = select(Evaluation).where(Evaluation.owner_id == self.owner_id)
        if after:
            query = query.where(Evaluation.id < after)
        if fine_tuning_job_id:
            query = query.where(Evaluation.fine_tuning_job_id == fine_tuning_job_id)
        return list(self.session.scalars(query.order_by(Evaluation.id.desc()).limit(limit)))

    def add(self, evaluation: Evaluation) -> Evaluation:
        self.session.add(evaluation)
        self.session.flush()
        return evaluation

    def cancel(self, evaluation_id: str) -> bool:
        """Conditional: an evaluation that finished meanwhile stays finished.
        Does not commit. A running worker sees the status between chunks and stops."""
        result = self.session.execute(
            update(Evaluation)
            .where(
                Evaluation.id == evaluation_id,
                Evaluation.owner_id == self.owner_id,
                Evaluation.status.in_(WORKING_STATUSES),
            )
            .values(status="cancelled", finished_at=int(time.time()))
            .execution_options(synchronize_session=False)
        )
        return result.rowcount == 1
