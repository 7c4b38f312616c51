"""One engine for leased work on a worker. Every background task (training
a job, answering a batch, running an evaluation, making an export) is a
`LeasedRun`: it claims its row (domain/runs/leases.py), keeps a heartbeat,
writes only while it still holds the row, rides out a database restart,
checks for a cancel at most every half second, hands the row back when the
worker is asked to shut down, and ends a failure with a code and a message
a person can act on (one table for all kinds, `classify_failure`). A
subclass says what the work is (`work`) and how its failures read.

A row whose worker dies is not this module's business: its heartbeat goes
stale and the API's recovery loop (domain/runs/recovery.py) sends it again.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from domain.db import is_disconnect, make_engine, make_sessionmaker, retry_on_disconnect
from domain.errors import ServiceError
from domain.queue_client import TaskQueue
from domain.runs.leases import LeaseKind, Leases, lost_attempts, send_to_worker
from domain.settings import Settings, get_settings
from domain.storage import StorageError, storage_from_url
from worker import shutdown

log = logging.getLogger("tunehouse.worker")
T = TypeVar("T")

# How often a run reads its row to see whether it was cancelled.
STOP_CHECK_SECONDS = 0.5
# How long a run retries a write while the database is unreachable before it
# gives the row up (its lease then runs out and the recovery loop requeues it).
DATABASE_PATIENCE_SECONDS = 60.0


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class RunLost(Exception):
    """The row is no longer ours: cancelled, ended elsewhere, or requeued
    after we were presumed dead. The run stops without writing anything."""


class HandBack(Exception):
    """The worker is shutting down and what is done is saved: give the row
    back, to be resumed from `resumes_from` (words for its history)."""

    def __init__(self, resumes_from: str):
        super().__init__(resumes_from)
        self.resumes_from = resumes_from


class RunFailure(Exception):
    """A failure whose code and message are already meant for the user."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class FailureWords:
    """How one kind's failures read (the rest of the table is shared)."""

    generic_code: str  # anything unforeseen
    generic_what: str  # "Training failed", ...
    bad_data_code: str  # the user's data could not be used
    bad_data_what: str  # "The training data", ...
    out_of_memory: str  # what to lower


def classify_failure(exc: BaseException, words: FailureWords) -> tuple[str, str]:
    """A specific error code and a message a person can act on; never a traceback."""
    from worker.models.catalog import BaseModelError
    from worker.inference.requests import RequestError

    from domain.jobs.hyperparameters import HyperparameterError

    if isinstance(exc, RunFailure):
        return exc.code, exc.message
    try:
        import torch

        out_of_memory = isinstance(exc, torch.OutOfMemoryError | MemoryError)
    except ImportError:  # pragma: no cover
        out_of_memory = isinstance(exc, MemoryError)
    if out_of_memory:
        return "out_of_memory", words.out_of_memory
    if isinstance(exc, ServiceError):
        return exc.code or words.generic_code, exc.message
    if isinstance(exc, RequestError):
        return exc.code or words.generic_code, exc.message
    if isinstance(exc, BaseModelError):
        return "model_load_failed", str(exc)
    if isinstance(exc, HyperparameterError):
        return "invalid_hyperparameters", f"{exc.param}: {exc.message}"
    if isinstance(exc, StorageError):
        return "storage_error", f"The artifact store failed: {exc}"
    if isinstance(exc, ValueError):
        return words.bad_data_code, f"{words.bad_data_what} could not be used: {str(exc)[:500]}"
    return words.generic_code, f"{words.generic_what}: {type(exc).__name__}: {str(exc)[:500]}"


class Heartbeat(threading.Thread):
    """Calls `beat(session)` every `interval` seconds in a fresh session; sets
    `lost` when it returns False (the row is no longer ours)."""

    def __init__(self, db, beat: Callable[[Session], bool], interval: float, name: str):
        super().__init__(daemon=True, name=f"heartbeat-{name}")
        self.db, self.beat, self.interval = db, beat, interval
        self.lost = threading.Event()
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.wait(self.interval):
            try:
                with self.db() as session:
                    if not self.beat(session):
                        self.lost.set()
                        return
            except Exception:  # the database may be away for a moment: try again next beat
                log.exception("%s failed", self.name)

    def stop(self) -> None:
        self._stopping.set()


class LeasedRun:
    """One attempt at one leased row. Subclasses set `kind` and `words` and
    implement `work()`; inside it they write through `write()` /
    `transaction()`, check `should_stop()` / `should_pause()` between units
    of work, and store artifacts through `stored()`."""

    kind: ClassVar[LeaseKind]
    words: ClassVar[FailureWords]

    def __init__(self, settings: Settings, row_id: str):
        self.settings = settings
        self.row_id = row_id
        self.engine = make_engine(settings.database_url)
        self.db = make_sessionmaker(self.engine)
        self.session = self.db()
        self.leases = Leases(self.session, self.kind)
        self.storage = storage_from_url(settings.storage_url, endpoint_url=settings.s3_endpoint_url)
        self.worker_name = worker_name()
        self.attempt: int | None = None
        self.heartbeat: Heartbeat | None = None
        self._last_stop_check = 0.0
        self._stop_requested = False
        self._pause_requested = False
        # The row's user asked to pause it (POST .../pause), as last read.
        self._user_paused = False

    def close(self) -> None:
        self.session.close()
        self.engine.dispose()

    # -- what a subclass provides ---------------------------------------------

    def work(self) -> None:
        raise NotImplementedError

    def record(self, message: str, level: str = "info") -> None:
        """A line of the row's history a person reads; only logged by default."""
        log.log(logging.WARNING if level == "warn" else logging.INFO, "%s %s: %s", self.kind.name, self.row_id, message)

    def cleanup(self) -> None:
        """Runs after every attempt, whatever its end (scratch files)."""

    # -- the database, riding out restarts -------------------------------------

    def transaction(self, unit: Callable[[], T], what: str) -> T:
        """A whole unit of work on `self.session` (commit included), run again
        while the database is unreachable, for up to DATABASE_PATIENCE_SECONDS.
        The unit must be safe to repeat."""
        return retry_on_disconnect(
            self.session, unit, what=f"{what} ({self.kind.name} {self.row_id})", patience=DATABASE_PATIENCE_SECONDS
        )

    def write(self, what: str = "writing", **values) -> None:
        """A fenced write, committed; raises RunLost when the row is not ours any more."""
        if not self.try_write(what, **values):
            raise RunLost

    def try_write(self, what: str = "writing", **values) -> bool:
        """A fenced write, committed; False (and `should_stop()` from now on)
        when the row is not ours any more: for writes made from inside a loop
        that stops at its next check."""

        def fenced() -> bool:
            if not self.leases.update(self.row_id, self.attempt, **values):
                self.session.rollback()
                return False
            self.session.commit()
            return True

        held = self.transaction(fenced, what)
        self._stop_requested = self._stop_requested or not held
        return held

    def status(self) -> str | None:
        """The row's status while we hold it, else None."""
        return self.transaction(lambda: self.leases.status_if_ours(self.row_id, self.attempt), "reading its status")

    # -- checks between units of work ------------------------------------------

    def should_stop(self) -> bool:
        """Cancelled, or no longer ours; reads the row at most every STOP_CHECK_SECONDS
        (and, in the same read, whether its user asked to pause it)."""
        if self._stop_requested or (self.heartbeat is not None and self.heartbeat.lost.is_set()):
            return True
        self._read_row()
        return self._stop_requested

    def _read_row(self) -> None:
        now = time.monotonic()
        if now - self._last_stop_check >= STOP_CHECK_SECONDS:
            self._last_stop_check = now
            status, self._user_paused = self.transaction(
                lambda: self.leases.hold(self.row_id, self.attempt), "reading its status"
            )
            self._stop_requested = status is None

    def should_pause(self) -> bool:
        """The worker is shutting down (worker/shutdown.py), or the row's user
        paused it: save and hand back."""
        if self.kind.paused_status is not None:  # only pausable kinds read their row here
            self._read_row()
        self._pause_requested = self._pause_requested or shutdown.requested(self.settings)
        return self._pause_requested or self._user_paused

    # -- storage ----------------------------------------------------------------

    def stored(self, what: str, operation: Callable[[], None]) -> None:
        """An upload, tried TUNEHOUSE_STORAGE_ATTEMPTS times with growing
        pauses; then the StorageError fails the run (it never succeeds
        without its files)."""
        attempts = self.settings.storage_attempts
        for attempt in range(1, attempts + 1):
            try:
                operation()
                return
            except StorageError as exc:
                if attempt == attempts:
                    raise StorageError(f"{what} failed {attempts} times; the last error: {exc}") from exc
                delay = self.settings.storage_retry_delay * 2 ** (attempt - 1)
                self.record(f"{what} failed (attempt {attempt} of {attempts}): {exc}; retrying in {delay:g} s", "warn")
                time.sleep(delay)

    # -- the attempt ------------------------------------------------------------

    def run(self) -> None:
        self.attempt = self.transaction(
            lambda: self.leases.claim(self.row_id, self.worker_name, self.settings.heartbeat_timeout), "claiming"
        )
        if self.attempt is None:
            log.info("%s %s is not claimable (duplicate delivery, finished or alive elsewhere)", self.kind.name, self.row_id)
            return
        earlier = lost_attempts(self.leases.get(self.row_id)) - 1
        if earlier >= self.settings.max_job_attempts:
            self.fail("worker_lost", f"The {self.kind.name} was started {earlier} times without finishing; giving up.")
            return
        row_id, attempt, kind = self.row_id, self.attempt, self.kind
        self.heartbeat = Heartbeat(
            self.db, lambda session: Leases(session, kind).heartbeat(row_id, attempt), self.settings.heartbeat_interval, row_id
        )
        self.heartbeat.start()
        try:
            self.work()
        except HandBack as pause:
            self.session.rollback()
            self.hand_back(pause.resumes_from)
        except RunLost:
            self.session.rollback()
            log.info("%s %s stopped: cancelled, or no longer ours", self.kind.name, self.row_id)
        except Exception as exc:
            if isinstance(exc, DBAPIError) and is_disconnect(exc):
                raise  # not the row's fault: its lease runs out and it is requeued
            log.exception("%s %s failed", self.kind.name, self.row_id)
            self.session.rollback()
            code, message = classify_failure(exc, self.words)
            self.fail(code, message)
        finally:
            self.heartbeat.stop()
            self.cleanup()

    def fail(self, code: str, message: str) -> None:
        self.transaction(
            lambda: self.leases.fail(self.row_id, code, message, attempt=self.attempt), "recording the failure"
        )

    def hand_back(self, resumes_from: str) -> bool:
        """Graceful shutdown, or the user paused it: what is done is saved.
        Paused, the row waits (status paused, no worker) until resumed;
        otherwise it goes back to the queue for another worker to resume
        from `resumes_from`. False when it was not ours any more (cancelled
        meanwhile)."""
        if self.heartbeat is not None:
            self.heartbeat.stop()
            self.heartbeat.join()
        if self._user_paused and self.transaction(
            lambda: self.leases.hand_back(self.row_id, self.attempt, paused=True), "pausing it"
        ):
            self.record(f"Paused: the {self.kind.name} resumes from {resumes_from} when resumed, on any worker")
            log.info("%s %s paused", self.kind.name, self.row_id)
            return True
        # Not paused (or the pause was withdrawn meanwhile): back to the queue.
        if not self.transaction(lambda: self.leases.hand_back(self.row_id, self.attempt), "handing it back"):
            return False
        why = (
            "the pause was withdrawn (resumed) meanwhile"
            if self._user_paused and not self._pause_requested
            else f"Worker {self.worker_name} is shutting down"
        )
        self.record(f"{why}: the {self.kind.name} goes back to the queue to resume from {resumes_from}")
        log.info("%s %s handed back", self.kind.name, self.row_id)
        # Sent after the commit; if the broker does not take it, the recovery loop sends it.
        self.transaction(lambda: send_to_worker(self.session, TaskQueue(self.settings), self.kind, self.row_id), "sending it again")
        return True


def run_leased(run_class: type[LeasedRun], row_id: str) -> None:
    """The body of every leased task: the message is the row id only."""
    run = run_class(get_settings(), row_id)
    try:
        run.run()
    except DBAPIError as exc:
        if not is_disconnect(exc):
            raise
        # The database stayed away longer than we wait: this attempt is over.
        # The row keeps our stale lease; the recovery loop requeues it.
        log.error("%s %s: the database is unreachable; leaving it to be requeued", run_class.kind.name, row_id)
    finally:
        run.close()
