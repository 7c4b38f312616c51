"""Recovery of batches and evaluations whose worker died (fine-tuning jobs:
domain/runs/job_recovery.py). Run by the API's recovery loop: a working row whose
heartbeat is older than TUNEHOUSE_HEARTBEAT_TIMEOUT is released and sent
again; the next worker skips what is already done (batch lines stored in
batch_results, evaluation models stored in the artifact store). After
TUNEHOUSE_MAX_JOB_ATTEMPTS attempts it fails instead. Rows whose message
never reached the broker are sent again."""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from domain.batches.models import WORKING_STATUSES as BATCH_WORKING
from domain.batches.models import Batch
from domain.batches.models import failed_values as batch_failed_values
from domain.evaluations.models import WORKING_STATUSES as EVALUATION_WORKING
from domain.evaluations.models import Evaluation
from domain.evaluations.models import failed_values as evaluation_failed_values
from domain.runs.leases import Leases
from domain.queue_client import BATCH_TASK, EVALUATION_TASK, TaskQueue
from domain.settings import Settings

log = logging.getLogger("tunehouse.recovery")


@dataclass(frozen=True)
class WorkKind:
    model: Any
    working: tuple[str, ...]
    task: str
    failed_values: Callable[[str, str], dict]


WORK_KINDS = (
    WorkKind(Batch, BATCH_WORKING, BATCH_TASK, batch_failed_values),
    WorkKind(Evaluation, EVALUATION_WORKING, EVALUATION_TASK, evaluation_failed_values),
)


def recover_work(db: sessionmaker[Session], settings: Settings, queue: TaskQueue) -> list[str]:
    """One pass over every kind. Returns the ids sent to the queue again."""
    sent = []
    with db() as session:
        for kind in WORK_KINDS:
            leases = Leases(session, kind.model, working=kind.working)
            for row in leases.stale(settings.heartbeat_timeout):
                if row.attempt >= settings.max_job_attempts:
                    message = (
                        f"The worker stopped responding (attempt {row.attempt} of {settings.max_job_attempts}); giving up."
                    )
                    session.execute(
                        update(kind.model)
                        .where(kind.model.id == row.id, kind.model.attempt == row.attempt,
                               kind.model.status.in_(kind.working))
                        .values(**kind.failed_values("worker_lost", message))
                        .execution_options(synchronize_session=False)
                    )
                    session.commit()
                    continue
                if not leases.release(row):
                    continue  # it moved on meanwhile
                log.warning("released %s (worker %s stopped responding)", row.id, row.worker)
                if queue.send(kind.task, row.id):
                    sent.append(row.id)
            for row in leases.unsent(older_than=5.0):
                if queue.send(kind.task, row.id):
                    leases.mark_enqueued(row.id)
                    sent.append(row.id)
    return sent
