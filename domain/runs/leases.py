"""Work a worker leases by id: claim, heartbeat, fenced writes, requeue.

Batches and evaluations share this (fine-tuning jobs have their own statuses
in domain/jobs/repository.py, with the same rules). A row is claimable when its
status says it still has work and nobody holds it: no worker, or a worker whose
heartbeat is older than the timeout (it died). Claiming bumps `attempt`; every
later write is conditional on that attempt, so a worker that lost its claim
can no longer change the row. A duplicate message finds the row held (or
done) and does nothing.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session


class Leases:
    def __init__(self, session: Session, model, *, working: tuple[str, ...]):
        """`working`: statuses in which the row has work left for a worker."""
        self.session = session
        self.model = model
        self.working = working

    def get(self, row_id: str):
        return self.session.get(self.model, row_id)

    def claim(self, row_id: str, worker: str, heartbeat_timeout: float, **values: Any) -> int | None:
        """The new attempt number, or None when the row is not ours to run."""
        model = self.model
        now = time.time()
        row = self.get(row_id)
        if row is None:
            return None
        free = or_(model.worker.is_(None), model.heartbeat_at < now - heartbeat_timeout)
        result = self.session.execute(
            update(model)
            .where(model.id == row_id, model.attempt == row.attempt, model.status.in_(self.working), free)
            .values(attempt=row.attempt + 1, heartbeat_at=now, worker=worker, **values)
            .execution_options(synchronize_session=False)
        )
        self.session.commit()
        if result.rowcount != 1:
            return None
        self.session.refresh(row)
        return row.attempt

    def update(self, row_id: str, attempt: int, **values: Any) -> bool:
        """Write to a row we still hold (same attempt, still working). Does
        not commit: the caller may add rows to the same transaction."""
        model = self.model
        result = self.session.execute(
            update(model)
            .where(model.id == row_id, model.attempt == attempt, model.status.in_(self.working))
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        return result.rowcount == 1

    def heartbeat(self, row_id: str, attempt: int) -> bool:
        held = self.update(row_id, attempt, heartbeat_at=time.time())
        self.session.commit()
        return held

    def status_if_ours(self, row_id: str, attempt: int) -> str | None:
        """The row's status while we hold it, else None (lost, or finished)."""
        model = self.model
        row = self.session.execute(select(model.status, model.attempt).where(model.id == row_id)).one_or_none()
        self.session.rollback()  # end the read transaction: the next read sees fresh data
        if row is None or row.attempt != attempt or row.status not in self.working:
            return None
        return row.status

    def stale(self, heartbeat_timeout: float) -> list:
        model = self.model
        cutoff = time.time() - heartbeat_timeout
        query = select(model).where(
            model.status.in_(self.working), model.worker.is_not(None), model.heartbeat_at < cutoff
        )
        return list(self.session.scalars(query))

    def unsent(self, older_than: float) -> list:
        """Rows whose message never reached the broker (it was down)."""
        model = self.model
        cutoff = time.time() - older_than
        query = select(model).where(
            model.status.in_(self.working),
            model.worker.is_(None),
            model.enqueued_at.is_(None),
            model.created_at < cutoff,
        )
        return list(self.session.scalars(query))

    def release(self, row) -> bool:
        """Give a row whose worker died back (conditional on what we saw)."""
        model = self.model
        result = self.session.execute(
            update(model)
            .where(model.id == row.id, model.attempt == row.attempt, model.status.in_(self.working))
            .where(model.heartbeat_at == row.heartbeat_at if row.heartbeat_at is not None else model.heartbeat_at.is_(None))
            .values(worker=None, enqueued_at=time.time())
            .execution_options(synchronize_session=False)
        )
        self.session.commit()
        return result.rowcount == 1

    def mark_enqueued(self, row_id: str) -> None:
        model = self.model
        self.session.execute(
            update(model).where(model.id == row_id).values(enqueued_at=time.time()).execution_options(synchronize_session=False)
        )
        self.session.commit()
