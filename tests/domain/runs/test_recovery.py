"""Claiming, fencing and recovery of leased work, on SQLite and PostgreSQL."""

import time

from sqlalchemy import update

from domain.jobs.models import FineTuningJob
from domain.jobs.repository import record_checkpoint
from domain.runs.kinds import JOB
from domain.runs.leases import Leases
from domain.runs.recovery import recover
from tests.api.jobs.test_endpoints import create, training_file

TIMEOUT = 60.0


def queued_job(alice) -> str:
    return create(alice, training_file=training_file(alice)).json()["id"]


def set_heartbeat(service, job_id: str, age_seconds: float) -> None:
    with service.state.sessionmaker() as session:
        session.execute(
            update(FineTuningJob).where(FineTuningJob.id == job_id).values(heartbeat_at=time.time() - age_seconds)
        )
        session.commit()


def job_row(service, job_id: str) -> FineTuningJob:
    with service.state.sessionmaker() as session:
        return session.get(FineTuningJob, job_id)


def test_a_job_is_claimed_once(service, alice):
    job_id = queued_job(alice)
    with service.state.sessionmaker() as session:
        lifecycle = Leases(session, JOB)
        assert lifecycle.claim(job_id, "worker-a", TIMEOUT) == 1
        # A duplicate delivery while the first worker is alive does nothing.
        assert lifecycle.claim(job_id, "worker-b", TIMEOUT) is None
    row = job_row(service, job_id)
    assert (row.status, row.attempt, row.worker) == ("running", 1, "worker-a")


def test_a_dead_workers_job_can_be_claimed_again_and_the_old_worker_is_fenced_off(service, alice):
    job_id = queued_job(alice)
    with service.state.sessionmaker() as session:
        lifecycle = Leases(session, JOB)
        first = lifecycle.claim(job_id, "worker-a", TIMEOUT)
    set_heartbeat(service, job_id, TIMEOUT + 1)
    with service.state.sessionmaker() as session:
        lifecycle = Leases(session, JOB)
        second = lifecycle.claim(job_id, "worker-b", TIMEOUT)
        assert (first, second) == (1, 2)
        # The first worker comes back to life: none of its writes land.
        assert lifecycle.heartbeat(job_id, first) is False
        assert lifecycle.update(job_id, first, status="succeeded") is False
        session.commit()
        assert record_checkpoint(session, job_id, first, 5, {}, "jobs/x/checkpoints/step-000005") is False
        assert lifecycle.status_if_ours(job_id, first) is None and lifecycle.status_if_ours(job_id, second) == "running"
    assert job_row(service, job_id).status == "running"


def test_finished_and_cancelled_jobs_are_never_claimed(service, alice):
    job_id = queued_job(alice)
    assert alice.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    with service.state.sessionmaker() as session:
        assert Leases(session, JOB).claim(job_id, "worker-a", TIMEOUT) is None


def test_recovery_requeues_a_silent_job(service, alice):
    job_id = queued_job(alice)
    with service.state.sessionmaker() as session:
        Leases(session, JOB).claim(job_id, "worker-a", TIMEOUT)
    set_heartbeat(service, job_id, service.settings.heartbeat_timeout + 5)
    sent = recover(service.state.sessionmaker, service.settings, service.state.queue)
    assert job_id in sent
    row = job_row(service, job_id)
    assert (row.status, row.worker) == ("queued", None)
    messages = [e["message"] for e in alice.get(f"/v1/fine_tuning/jobs/{job_id}/events").json()["data"]]
    assert messages[0].startswith("Worker worker-a stopped responding") and "from the start" in messages[0]
    # A second pass finds nothing more to do for it.
    assert job_id not in recover(service.state.sessionmaker, service.settings, service.state.queue)


def test_recovery_gives_up_after_the_last_attempt(service, alice):
    job_id = queued_job(alice)
    with service.state.sessionmaker() as session:
        lifecycle = Leases(session, JOB)
        for attempt in range(1, service.settings.max_job_attempts + 1):
            assert lifecycle.claim(job_id, f"worker-{attempt}", TIMEOUT) == attempt
            set_heartbeat(service, job_id, TIMEOUT + 1)
    set_heartbeat(service, job_id, service.settings.heartbeat_timeout + 5)
    assert job_id not in recover(service.state.sessionmaker, service.settings, service.state.queue)
    job = alice.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    assert job["status"] == "failed"
    assert job["error"]["code"] == "worker_lost"
    assert "giving up" in job["error"]["message"]


def test_recovery_sends_jobs_whose_message_never_left(service, alice):
    job_id = queued_job(alice)
    with service.state.sessionmaker() as session:
        session.execute(
            update(FineTuningJob)
            .where(FineTuningJob.id == job_id)
            .values(enqueued_at=None, created_at=int(time.time()) - 60)
        )
        session.commit()
    assert job_id in recover(service.state.sessionmaker, service.settings, service.state.queue)
    assert job_row(service, job_id).enqueued_at is not None
