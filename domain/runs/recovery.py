"""Recovery of leased work whose worker died, run periodically by the API
process (api/app.py), for every kind at once (domain/runs/kinds.py).

A worker writes a heartbeat into the row it holds every few seconds. A row
whose heartbeat is older than TUNEHOUSE_HEARTBEAT_TIMEOUT lost its worker
(killed, machine gone): it is released and a new message is sent, and the
next worker resumes from what was saved (a training checkpoint, the batch
lines already answered, the evaluation's finished models). This does not
wait for the broker's own redelivery (Redis's visibility timeout is an
hour). After TUNEHOUSE_MAX_JOB_ATTEMPTS lost attempts (hand-backs on a
graceful shutdown do not count) it fails with `worker_lost` instead. Rows
whose message never reached the broker (it was down) are sent again. Every
transition is a conditional update, so several API processes can run this
side by side.
"""

import logging
import time

from sqlalchemy.orm import Session, sessionmaker

from domain.queue_client import TaskQueue
from domain.runs.kinds import ALL_KINDS
from domain.runs.leases import LeaseKind, Leases, lost_attempts, send_to_worker
from domain.settings import Settings

log = logging.getLogger("tunehouse.recovery")

# A row's message is sent right after its commit; one still unsent this long
# after creation was refused by the broker.
UNSENT_AFTER_SECONDS = 5.0


def recover(db: sessionmaker[Session], settings: Settings, queue: TaskQueue) -> list[str]:
    """One pass over every kind. Returns the ids sent to the queue again."""
    sent: list[str] = []
    with db() as session:
        for kind in ALL_KINDS:
            sent += _recover_kind(session, kind, settings, queue)
    return sent


def _recover_kind(session: Session, kind: LeaseKind, settings: Settings, queue: TaskQueue) -> list[str]:
    leases = Leases(session, kind)
    sent = []
    for row in leases.stale(settings.heartbeat_timeout):
        silent_for = int(time.time() - (row.heartbeat_at or 0))
        lost = lost_attempts(row)
        if lost >= settings.max_job_attempts:
            leases.fail(
                row.id,
                "worker_lost",
                f"The worker running this {kind.name} stopped responding (attempt {lost} of "
                f"{settings.max_job_attempts}); giving up.",
                attempt=row.attempt,
            )
            continue
        worker, note, pausing = row.worker, kind.resume_note(row), leases.pausing(row)
        if not leases.release(row):
            continue  # it moved on meanwhile (heartbeat, finished, another loop)
        if pausing:  # asked to pause: it stays put until resumed, from what was saved
            if kind.record is not None:
                kind.record(
                    session, row.id,
                    f"Worker {worker} stopped responding while pausing (no heartbeat for {silent_for} s); "
                    f"paused{note.replace(' to resume', ', to resume')} when resumed", "warn",
                )
                session.commit()
            log.warning("paused %s %s (worker %s silent for %s s)", kind.name, row.id, worker, silent_for)
            continue
        if kind.record is not None:
            kind.record(
                session, row.id, f"Worker {worker} stopped responding (no heartbeat for {silent_for} s); requeued{note}", "warn"
            )
            session.commit()
        log.warning("requeued %s %s (worker %s silent for %s s)", kind.name, row.id, worker, silent_for)
        queue.send(kind.task, row.id)  # release() stamped enqueued_at
        sent.append(row.id)
    for row in leases.unsent(older_than=UNSENT_AFTER_SECONDS):
        if send_to_worker(session, queue, kind, row.id):
            sent.append(row.id)
    return sent
