"""Work a worker leases by id: claim, heartbeat, fenced writes, hand-back,
release, failure. Every kind of background work (fine-tuning jobs, batches,
evaluations, exports such as merged weights) is a row with the same lease
columns (`LeaseColumns`) and the same rules; `LeaseKind` says what differs.

A row is claimable when its status says it still has work and nobody holds
it: no worker, or a worker whose heartbeat is older than the timeout (it
died). Claiming bumps `attempt`; every later write is conditional on that
attempt and on a status in which the holder may still write, so a worker
that lost its claim (presumed dead and requeued, or the row was cancelled)
can no longer change the row. A duplicate message finds the row held (or
done) and does nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Float, Integer, String, or_, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column


class LeaseColumns:
    """The columns every leased row has (a mixin for the ORM models)."""

    # `attempt` counts claims; a worker's writes are fenced by it.
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    # Attempts a worker ended on purpose (graceful shutdown: save what is
    # done, hand the row back); they do not count as lost.
    handbacks: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)
    heartbeat_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # When the row's message was last given to the broker (None: never, or
    # the broker did not take it; the recovery loop sends it again).
    enqueued_at: Mapped[float | None] = mapped_column(Float, nullable=True)


@dataclass(frozen=True)
class LeaseKind:
    """One kind of leased work."""

    name: str  # what a person calls it, in messages: "job", "batch", ...
    model: Any  # the ORM class (has LeaseColumns, `id`, `status`, `created_at`)
    task: str  # the Celery task that runs it (domain/queue_client.py)
    claimable: tuple[str, ...]  # statuses in which a worker may take it
    held: tuple[str, ...]  # statuses in which its holder may still write
    failed_values: Callable[[str, str], dict[str, Any]]  # the columns of a failure (code, message)
    # Columns a claim sets beside the lease (e.g. status "running"), from the row as read.
    claim_values: Callable[[Any, float], dict[str, Any]] = lambda row, now: {}
    # Columns set when it goes back to the queue (e.g. status "queued").
    release_values: dict[str, Any] = field(default_factory=dict)
    # Writes a line to the row's history, if the kind keeps one (jobs' events).
    record: Callable[[Session, str, str, str], None] | None = None
    # Where a requeued row resumes from, for that history ("to resume from ...").
    resume_note: Callable[[Any], str] = lambda row: ""
    # Kinds a user may pause (the model has a `pause_requested` column): the
    # columns of a paused row, its status among them (one that no worker
    # claims and the recovery loop leaves alone).
    paused_values: dict[str, Any] | None = None

    @property
    def paused_status(self) -> str | None:
        return self.paused_values["status"] if self.paused_values else None


class Leases:
    def __init__(self, session: Session, kind: LeaseKind):
        self.session = session
        self.kind = kind
        self.model = kind.model

    def get(self, row_id: str):
        return self.session.get(self.model, row_id)

    def claim(self, row_id: str, worker: str, heartbeat_timeout: float) -> int | None:
        """The new attempt number, or None when the row is not ours to run."""
        model, now = self.model, time.time()
        row = self.get(row_id)
        if row is None:
            return None
        free = or_(model.worker.is_(None), model.heartbeat_at < now - heartbeat_timeout)
        result = self.session.execute(
            update(model)
            .where(model.id == row_id, model.attempt == row.attempt, model.status.in_(self.kind.claimable), free)
            .values(attempt=row.attempt + 1, heartbeat_at=now, worker=worker, **self.kind.claim_values(row, now))
            .execution_options(synchronize_session=False)
        )
        self.session.commit()
        if result.rowcount != 1:
            return None
        self.session.refresh(row)
        return row.attempt

    def update(self, row_id: str, attempt: int, **values: Any) -> bool:
        """Write to a row we still hold (same attempt, a status we may write
        in). Does not commit: the caller may add rows to the same transaction."""
        model = self.model
        result = self.session.execute(
            update(model)
            .where(model.id == row_id, model.attempt == attempt, model.status.in_(self.kind.held))
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
        return self.hold(row_id, attempt)[0]

    def hold(self, row_id: str, attempt: int) -> tuple[str | None, bool]:
        """(the row's status while we hold it, else None; whether its user
        asked to pause it), in one read."""
        model = self.model
        pausable = self.kind.paused_status is not None
        columns = [model.status, model.attempt] + ([model.pause_requested] if pausable else [])
        row = self.session.execute(select(*columns).where(model.id == row_id)).one_or_none()
        self.session.rollback()  # end the read transaction: the next read sees fresh data
        if row is None or row.attempt != attempt or row.status not in self.kind.held:
            return None, False
        return row.status, bool(pausable and row.pause_requested)

    def fail(self, row_id: str, code: str, message: str, *, attempt: int | None = None) -> bool:
        """End the row as failed, unless it already ended (or, with `attempt`,
        unless we lost it). Commits."""
        model = self.model
        conditions = [model.id == row_id, model.status.in_(self.kind.claimable + self.kind.held)]
        if attempt is not None:
            conditions.append(model.attempt == attempt)
        result = self.session.execute(
            update(model).where(*conditions).values(**self.kind.failed_values(code, message))
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1 and self.kind.record is not None:
            self.kind.record(self.session, row_id, message, "error")
        self.session.commit()
        return result.rowcount == 1

    def hand_back(self, row_id: str, attempt: int, *, paused: bool = False) -> bool:
        """A worker that is shutting down gives the row back to the queue
        (after saving what it did); the caller sends a new message. With
        `paused`, a row whose user asked to pause it becomes paused instead
        (no message): False when that request was withdrawn meanwhile (resume),
        and the caller hands it back to the queue instead."""
        model = self.model
        query = (
            update(model)
            .where(model.id == row_id, model.attempt == attempt, model.status.in_(self.kind.held))
            .where(model.worker.is_not(None))
        )
        if paused:
            query = query.where(model.pause_requested.is_(True)).values(pause_requested=False, **self.kind.paused_values)
        else:
            query = query.values(**self.kind.release_values)
        result = self.session.execute(
            query.values(worker=None, enqueued_at=None, handbacks=model.handbacks + 1)
            .execution_options(synchronize_session=False)
        )
        self.session.commit()
        return result.rowcount == 1

    # -- pause and resume (the user's; kinds with a paused_status) --------------

    def pause(self, row_id: str, waiting: tuple[str, ...]) -> str | None:
        """A row no worker holds (status in `waiting`) becomes paused at once
        ("paused"); one a worker runs gets a pause request, which the worker
        carries out at its next step ("requested"); None when neither applies
        (finished, already paused). Does not commit."""
        model = self.model
        paused = self.session.execute(
            update(model)
            .where(model.id == row_id, model.status.in_(waiting))
            .values(pause_requested=False, worker=None, **self.kind.paused_values)
            .execution_options(synchronize_session=False)
        )
        if paused.rowcount == 1:
            return "paused"
        requested = self.session.execute(
            update(model)
            .where(model.id == row_id, model.status.in_(self.kind.held), model.worker.is_not(None))
            .values(pause_requested=True)
            .execution_options(synchronize_session=False)
        )
        return "requested" if requested.rowcount == 1 else None

    def resume(self, row_id: str) -> str | None:
        """A paused row goes back to the queue ("queued": the caller sends its
        message after the commit); a pause not yet carried out is withdrawn
        ("withdrawn": its worker goes on). None when the row is neither. Does
        not commit."""
        model = self.model
        queued = self.session.execute(
            update(model)
            .where(model.id == row_id, model.status == self.kind.paused_status)
            .values(worker=None, enqueued_at=None, pause_requested=False, **self.kind.release_values)
            .execution_options(synchronize_session=False)
        )
        if queued.rowcount == 1:
            return "queued"
        withdrawn = self.session.execute(
            update(model)
            .where(model.id == row_id, model.status.in_(self.kind.held), model.pause_requested.is_(True))
            .values(pause_requested=False)
            .execution_options(synchronize_session=False)
        )
        return "withdrawn" if withdrawn.rowcount == 1 else None

    # -- recovery (domain/runs/recovery.py) ------------------------------------

    def stale(self, heartbeat_timeout: float) -> list:
        model = self.model
        cutoff = time.time() - heartbeat_timeout
        query = select(model).where(
            model.status.in_(self.kind.claimable), model.worker.is_not(None), model.heartbeat_at < cutoff
        )
        return list(self.session.scalars(query))

    def unsent(self, older_than: float) -> list:
        """Rows whose message never reached the broker (it was down)."""
        model = self.model
        cutoff = time.time() - older_than
        query = select(model).where(
            model.status.in_(self.kind.claimable),
            model.worker.is_(None),
            model.enqueued_at.is_(None),
            model.created_at < cutoff,
        )
        return list(self.session.scalars(query))

    def release(self, row) -> bool:
        """Give a row whose worker died back (conditional on what we saw).
        A row its user asked to pause becomes paused instead (no message to
        send): see `pausing`."""
        model = self.model
        seen_heartbeat = (
            model.heartbeat_at == row.heartbeat_at if row.heartbeat_at is not None else model.heartbeat_at.is_(None)
        )
        if self.pausing(row):
            values = {"pause_requested": False, **self.kind.paused_values}
        else:
            values = {"enqueued_at": time.time(), **self.kind.release_values}
        result = self.session.execute(
            update(model)
            .where(model.id == row.id, model.attempt == row.attempt, model.status.in_(self.kind.claimable))
            .where(seen_heartbeat)
            .values(worker=None, **values)
            .execution_options(synchronize_session=False)
        )
        self.session.commit()
        return result.rowcount == 1

    def pausing(self, row) -> bool:
        """Its user asked to pause it (a pausable kind)."""
        return self.kind.paused_status is not None and bool(row.pause_requested)

    def mark_enqueued(self, row_id: str) -> None:
        model = self.model
        self.session.execute(
            update(model)
            .where(model.id == row_id, model.worker.is_(None))
            .values(enqueued_at=time.time())
            .execution_options(synchronize_session=False)
        )
        self.session.commit()


def send_to_worker(session: Session, queue, kind: LeaseKind, row_id: str) -> bool:
    """Give a row's message to the broker (after its commit: a worker must
    never receive work it cannot read). When the broker does not take it,
    the row stays unsent and the recovery loop sends it again."""
    if queue.send(kind.task, row_id):
        Leases(session, kind).mark_enqueued(row_id)
        return True
    return False


def lost_attempts(row) -> int:
    """Attempts that ended without finishing and were not handed back: the
    ones that count towards TUNEHOUSE_MAX_JOB_ATTEMPTS."""
    return row.attempt - (row.handbacks or 0)
