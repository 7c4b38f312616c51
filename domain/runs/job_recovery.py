"""Recovery of jobs whose worker died, run periodically by the API process.

A worker writes a heartbeat into its job row every few seconds. A running job
whose heartbeat is older than TUNEHOUSE_HEARTBEAT_TIMEOUT lost its worker (killed,
machine gone): it goes back to `queued` and a new message is sent, and the next
worker resumes from the last checkpoint. This does not wait for the broker's
own redelivery (Redis's visibility timeout is an hour). After
TUNEHOUSE_MAX_JOB_ATTEMPTS attempts the job fails instead. Every transition is a
conditional update, so several API processes can run this loop side by side.
"""

import logging
import time

from sqlalchemy.orm import Session, sessionmaker

from domain.jobs.repository import JobLifecycle, add_event
from domain.queue_client import TRAIN_TASK, TaskQueue
from domain.settings import Settings

log = logging.getLogger("tunehouse.recovery")


def recover_jobs(db: sessionmaker[Session], settings: Settings, queue: TaskQueue) -> list[str]:
    """One pass. Returns the ids of the jobs it sent to the queue again."""
    sent = []
    with db() as session:
        lifecycle = JobLifecycle(session)
        for job in lifecycle.stale_running_jobs(settings.heartbeat_timeout):
            silent_for = int(time.time() - (job.heartbeat_at or 0))
            lost_attempts = job.attempt - job.handbacks  # handed back on shutdown: not lost
            if lost_attempts >= settings.max_job_attempts:
                lifecycle.fail(
                    job.id,
                    "worker_lost",
                    f"The worker running this job stopped responding (attempt {lost_attempts} of "
                    f"{settings.max_job_attempts}); giving up.",
                    attempt=job.attempt,
                )
                continue
            if not lifecycle.requeue(job):
                continue  # it moved on meanwhile (heartbeat, finished, another loop)
            resume = f"from the checkpoint at step {job.checkpoint_step}" if job.checkpoint_step else "from the start"
            add_event(
                session,
                job.id,
                f"Worker {job.worker} stopped responding (no heartbeat for {silent_for} s); "
                f"requeued to resume {resume}",
                level="warn",
            )
            session.commit()
            log.warning("requeued job %s (worker %s silent for %s s)", job.id, job.worker, silent_for)
            if queue.send(TRAIN_TASK, job.id):
                lifecycle.mark_enqueued(job.id)
            sent.append(job.id)
        # Jobs whose message never reached the broker (it was down at creation).
        for job in lifecycle.unsent_queued_jobs(older_than=5.0):
            if queue.send(TRAIN_TASK, job.id):
                lifecycle.mark_enqueued(job.id)
                sent.append(job.id)
    return sent
