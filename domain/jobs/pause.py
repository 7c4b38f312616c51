"""OpenAI's pause and resume of a fine-tuning job, on the lease engine
(domain/runs/leases.py): a paused job holds no worker, is claimed by none and
is left alone by the recovery loop until it is resumed; it then continues from
the checkpoint of the step it was paused at, on any worker."""

from sqlalchemy.orm import Session

from domain.auth.models import User
from domain.errors import Conflict
from domain.jobs.events import add_event
from domain.jobs.models import FineTuningJob
from domain.jobs.repository import WAITING_STATUSES
from domain.jobs.service import enqueue, get_job
from domain.queue_client import TaskQueue
from domain.runs.kinds import JOB
from domain.runs.leases import Leases


def pause_job(session: Session, user: User, job_id: str) -> FineTuningJob:
    """OpenAI's pause. A job no worker holds is paused at once; a running one
    is asked to pause: its worker saves a checkpoint of the step it is at,
    frees itself and the job becomes `paused` (until then it shows
    `progress.pause_requested`). Conditional, like cancel: whatever a worker
    does at the same moment, the job ends in one consistent state."""
    job = get_job(session, user, job_id)
    outcome = Leases(session, JOB).pause(job.id, WAITING_STATUSES)
    if outcome is None:
        session.rollback()
        session.refresh(job)
        if job.status == "paused" or job.pause_requested:
            raise Conflict(f"Job '{job_id}' is already paused.", code="job_already_paused")
        raise Conflict(f"Job '{job_id}' has already {job.status}; it cannot be paused.", code="job_not_pausable")
    if outcome == "paused":
        add_event(session, job.id, "Job paused; resume it to start training")
    else:
        add_event(session, job.id, "Pause requested: the worker saves a checkpoint at its next step, then the job is paused")
    session.commit()
    session.refresh(job)
    return job


def resume_job(session: Session, queue: TaskQueue, user: User, job_id: str) -> FineTuningJob:
    """OpenAI's resume: a paused job goes back to the queue and any worker
    continues it from the checkpoint it was paused at (a pause its worker has
    not carried out yet is simply withdrawn). Anything else is a 409."""
    job = get_job(session, user, job_id)
    outcome = Leases(session, JOB).resume(job.id)
    if outcome is None:
        session.rollback()
        session.refresh(job)
        raise Conflict(f"Job '{job_id}' is {job.status}, not paused; only a paused job can be resumed.", code="job_not_paused")
    where = f"the checkpoint at step {job.checkpoint_step}" if job.checkpoint_step else "the start"
    if outcome == "queued":
        add_event(session, job.id, f"Job resumed: queued to continue from {where}")
    else:
        add_event(session, job.id, "Pause withdrawn: the job goes on running")
    session.commit()
    if outcome == "queued":
        enqueue(session, queue, job)  # after the commit
    session.refresh(job)
    return job
