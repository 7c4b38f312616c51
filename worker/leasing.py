"""A worker's hold on a batch or evaluation row (see domain/runs/leases.py): the
heartbeat thread that keeps it, and the names and sessions it needs."""

import logging
import os
import socket
import threading
from collections.abc import Callable

from sqlalchemy.orm import Session

from domain.runs.leases import Leases

log = logging.getLogger("tunehouse.worker")


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Heartbeat(threading.Thread):
    """Calls `beat(session)` every `interval` seconds in a fresh session; sets
    `lost` when it returns False (the work is no longer ours: requeued after
    we were presumed dead, cancelled or done)."""

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


def lease_heartbeat(db, model, row_id: str, attempt: int, interval: float, working: tuple[str, ...]) -> Heartbeat:
    """The heartbeat of a leased batch or evaluation row (domain/runs/leases.py)."""
    return Heartbeat(
        db, lambda session: Leases(session, model, working=working).heartbeat(row_id, attempt), interval, row_id
    )
