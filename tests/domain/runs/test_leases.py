"""The lease rules, the same for every kind of background work (jobs,
batches, evaluations, exports), on SQLite and PostgreSQL: one claim at a
time, fenced writes, hand-backs that do not count as lost attempts, and the
recovery loop's release, give-up and resend."""

import time
import uuid

import pytest
from sqlalchemy import update

from domain.batches.models import Batch
from domain.evaluations.models import Evaluation
from domain.exports.models import Export
from domain.jobs.models import FineTuningEvent, FineTuningJob
from domain.runs.kinds import ALL_KINDS, BATCH, EVALUATION, JOB
from domain.runs.leases import Leases, lost_attempts
from domain.runs.recovery import recover

TIMEOUT = 60.0


def _job(owner_id: int, status: str = "queued") -> FineTuningJob:
    return FineTuningJob(
        id=f"ftjob-{uuid.uuid4().hex[:12]}", owner_id=owner_id, model="m", training_file_id="file-x",
        status=status, requested_hyperparameters={}, seed=1, seed_origin="auto", model_deleted=False,
        result_files=[], created_at=int(time.time()), attempt=0, handbacks=0,
    )


def new_row(service, kind) -> str:
    """A fresh row of `kind`, waiting for a worker."""
    user = service.make_user("leases")
    now = int(time.time())
    with service.state.sessionmaker() as session:
        if kind is JOB:
            row = _job(user.id)
        elif kind is BATCH:
            row = Batch(
                id=f"batch_{uuid.uuid4().hex[:12]}", owner_id=user.id, endpoint="/v1/chat/completions",
                input_file_id="file-x", completion_window="24h", status="validating", request_total=0,
                request_completed=0, request_failed=0, created_at=now, expires_at=now + 86400, attempt=0, handbacks=0,
            )
        elif kind is EVALUATION:
            row = Evaluation(
                id=f"eval_{uuid.uuid4().hex[:12]}", owner_id=user.id, file_id="file-x", split="test", models=["m"],
                max_tokens=8, temperature=0.0, metrics=["exact_match"], seed=1, status="queued", results={},
                items_done=0, created_at=now, attempt=0, handbacks=0,
            )
        else:
            job = _job(user.id, status="succeeded")
            session.add(job)
            session.flush()
            row = Export(
                id=f"export_{uuid.uuid4().hex[:12]}", job_id=job.id, owner_id=user.id, format="merged",
                status="queued", created_at=now, attempt=0, handbacks=0,
            )
        session.add(row)
        session.commit()
        return row.id


def row_of(service, kind, row_id: str):
    with service.state.sessionmaker() as session:
        return session.get(kind.model, row_id)


def age_heartbeat(service, kind, row_id: str, seconds: float) -> None:
    with service.state.sessionmaker() as session:
        session.execute(update(kind.model).where(kind.model.id == row_id).values(heartbeat_at=time.time() - seconds))
        session.commit()


kinds = pytest.mark.parametrize("kind", ALL_KINDS, ids=[kind.name for kind in ALL_KINDS])


@kinds
def test_one_claim_at_a_time_and_a_dead_holder_is_fenced_off(service, kind):
    row_id = new_row(service, kind)
    with service.state.sessionmaker() as session:
        leases = Leases(session, kind)
        first = leases.claim(row_id, "worker-a", TIMEOUT)
        assert first == 1
        assert leases.claim(row_id, "worker-b", TIMEOUT) is None  # a duplicate delivery does nothing
        status = leases.status_if_ours(row_id, first)
        assert status in kind.held
    age_heartbeat(service, kind, row_id, TIMEOUT + 1)
    with service.state.sessionmaker() as session:
        leases = Leases(session, kind)
        second = leases.claim(row_id, "worker-b", TIMEOUT)
        assert second == 2
        # The first holder comes back to life: nothing it writes lands.
        assert leases.heartbeat(row_id, first) is False
        assert leases.update(row_id, first, worker="worker-a") is False
        session.commit()
        assert leases.status_if_ours(row_id, first) is None
        assert leases.status_if_ours(row_id, second) == status
        assert leases.fail(row_id, "x", "late", attempt=first) is False
    assert row_of(service, kind, row_id).worker == "worker-b"


@kinds
def test_a_hand_back_requeues_without_counting_as_a_lost_attempt(service, kind):
    row_id = new_row(service, kind)
    with service.state.sessionmaker() as session:
        leases = Leases(session, kind)
        attempt = leases.claim(row_id, "worker-a", TIMEOUT)
        assert leases.hand_back(row_id, attempt) is True
        assert leases.hand_back(row_id, attempt) is False  # once: it is not ours any more
    row = row_of(service, kind, row_id)
    assert row.worker is None and row.status in kind.claimable
    assert lost_attempts(row) == row.attempt - row.handbacks
    with service.state.sessionmaker() as session:
        # Free again at once (no waiting for a heartbeat to go stale).
        assert Leases(session, kind).claim(row_id, "worker-b", TIMEOUT) == attempt + 1


@kinds
def test_failing_ends_the_row_once(service, kind):
    row_id = new_row(service, kind)
    with service.state.sessionmaker() as session:
        leases = Leases(session, kind)
        attempt = leases.claim(row_id, "worker-a", TIMEOUT)
        assert leases.fail(row_id, "out_of_memory", "Ran out of memory.", attempt=attempt) is True
        assert leases.fail(row_id, "out_of_memory", "Again.", attempt=attempt) is False
        assert leases.claim(row_id, "worker-b", TIMEOUT) is None  # a failed row is never run again
    assert row_of(service, kind, row_id).status == "failed"


@kinds
def test_recovery_releases_a_silent_holder_and_sends_the_row_again(service, kind):
    row_id = new_row(service, kind)
    with service.state.sessionmaker() as session:
        Leases(session, kind).claim(row_id, "worker-a", TIMEOUT)
    age_heartbeat(service, kind, row_id, service.settings.heartbeat_timeout + 5)
    assert row_id in recover(service.state.sessionmaker, service.settings, service.state.queue)
    row = row_of(service, kind, row_id)
    assert row.worker is None and row.status in kind.claimable and row.enqueued_at is not None
    assert row_id not in recover(service.state.sessionmaker, service.settings, service.state.queue)
    with service.state.sessionmaker() as session:
        assert Leases(session, kind).claim(row_id, "worker-b", TIMEOUT) == 2


@kinds
def test_recovery_gives_up_after_the_last_lost_attempt_but_not_for_hand_backs(service, kind):
    row_id = new_row(service, kind)
    attempts = service.settings.max_job_attempts
    with service.state.sessionmaker() as session:
        leases = Leases(session, kind)
        # One more attempt than allowed, but one of them was handed back.
        for n in range(1, attempts + 1):
            assert leases.claim(row_id, f"worker-{n}", TIMEOUT) == n
            if n == 1:
                leases.hand_back(row_id, n)
            else:
                age_heartbeat(service, kind, row_id, TIMEOUT + 1)
    age_heartbeat(service, kind, row_id, service.settings.heartbeat_timeout + 5)
    assert row_id in recover(service.state.sessionmaker, service.settings, service.state.queue)  # 2 lost of 3
    with service.state.sessionmaker() as session:
        assert Leases(session, kind).claim(row_id, "worker-last", TIMEOUT) == attempts + 1
    age_heartbeat(service, kind, row_id, service.settings.heartbeat_timeout + 5)
    assert row_id not in recover(service.state.sessionmaker, service.settings, service.state.queue)
    row = row_of(service, kind, row_id)
    assert row.status == "failed"
    error = str(row.errors if kind is BATCH else row.error)  # a batch keeps OpenAI's `errors` list
    assert "worker_lost" in error and f"this {kind.name} stopped responding" in error


@kinds
def test_recovery_sends_rows_whose_message_never_reached_the_broker(service, kind):
    row_id = new_row(service, kind)
    with service.state.sessionmaker() as session:
        session.execute(
            update(kind.model).where(kind.model.id == row_id).values(enqueued_at=None, created_at=int(time.time()) - 60)
        )
        session.commit()
    assert row_id in recover(service.state.sessionmaker, service.settings, service.state.queue)
    assert row_of(service, kind, row_id).enqueued_at is not None


def test_a_jobs_history_tells_of_its_requeue_and_its_failure(service):
    row_id = new_row(service, JOB)
    with service.state.sessionmaker() as session:
        Leases(session, JOB).claim(row_id, "worker-a", TIMEOUT)
    age_heartbeat(service, JOB, row_id, service.settings.heartbeat_timeout + 5)
    recover(service.state.sessionmaker, service.settings, service.state.queue)
    with service.state.sessionmaker() as session:
        attempt = Leases(session, JOB).claim(row_id, "worker-b", TIMEOUT)
        Leases(session, JOB).fail(row_id, "training_error", "Training failed: boom", attempt=attempt)
        messages = [
            event.message
            for event in session.query(FineTuningEvent).filter_by(job_id=row_id).order_by(FineTuningEvent.seq)
        ]
    assert messages[0].startswith("Worker worker-a stopped responding") and messages[0].endswith("to resume from the start")
    assert messages[-1] == "Training failed: boom"


def test_a_paused_job_is_handed_back_as_paused_and_left_alone_until_resumed(service):
    row_id = new_row(service, JOB)
    with service.state.sessionmaker() as session:
        leases = Leases(session, JOB)
        attempt = leases.claim(row_id, "worker-a", TIMEOUT)
        assert leases.hold(row_id, attempt) == ("running", False)
        assert leases.pause(row_id, ("queued",)) == "requested"  # a worker holds it: it is asked
        session.commit()
        assert leases.hold(row_id, attempt) == ("running", True)
        assert leases.hand_back(row_id, attempt, paused=True) is True
    row = row_of(service, JOB, row_id)
    assert (row.status, row.worker, row.pause_requested) == ("paused", None, False)
    assert lost_attempts(row) == 0  # a pause is no lost attempt
    # No worker claims it, and the recovery loop neither requeues nor resends it, however old its heartbeat.
    age_heartbeat(service, JOB, row_id, service.settings.heartbeat_timeout + 5)
    with service.state.sessionmaker() as session:
        session.execute(update(FineTuningJob).where(FineTuningJob.id == row_id).values(enqueued_at=None, created_at=0))
        session.commit()
        assert Leases(session, JOB).claim(row_id, "worker-b", TIMEOUT) is None
    assert row_id not in recover(service.state.sessionmaker, service.settings, service.state.queue)
    assert row_of(service, JOB, row_id).status == "paused"
    with service.state.sessionmaker() as session:
        leases = Leases(session, JOB)
        assert leases.resume(row_id) == "queued"
        session.commit()
        assert leases.resume(row_id) is None  # not paused any more
        assert leases.claim(row_id, "worker-b", TIMEOUT) == attempt + 1


def test_a_withdrawn_pause_hands_the_job_back_to_the_queue_instead(service):
    row_id = new_row(service, JOB)
    with service.state.sessionmaker() as session:
        leases = Leases(session, JOB)
        attempt = leases.claim(row_id, "worker-a", TIMEOUT)
        assert leases.pause(row_id, ("queued",)) == "requested"
        assert leases.resume(row_id) == "withdrawn"
        session.commit()
        assert leases.hand_back(row_id, attempt, paused=True) is False
        assert leases.hand_back(row_id, attempt) is True
    assert row_of(service, JOB, row_id).status == "queued"


def test_a_queued_job_pauses_without_a_worker_and_a_finished_one_does_not(service):
    row_id = new_row(service, JOB)
    with service.state.sessionmaker() as session:
        leases = Leases(session, JOB)
        assert leases.pause(row_id, ("queued",)) == "paused"
        assert leases.pause(row_id, ("queued",)) is None  # already paused
        assert leases.resume(row_id) == "queued"
        attempt = leases.claim(row_id, "worker-a", TIMEOUT)
        leases.update(row_id, attempt, status="succeeded")
        session.commit()
        assert leases.pause(row_id, ("queued",)) is None
        assert leases.resume(row_id) is None
    assert row_of(service, JOB, row_id).status == "succeeded"


def test_a_job_whose_worker_died_while_pausing_is_paused_not_requeued(service):
    row_id = new_row(service, JOB)
    with service.state.sessionmaker() as session:
        leases = Leases(session, JOB)
        leases.claim(row_id, "worker-a", TIMEOUT)
        assert leases.pause(row_id, ("queued",)) == "requested"
        session.commit()
    age_heartbeat(service, JOB, row_id, service.settings.heartbeat_timeout + 5)
    assert row_id not in recover(service.state.sessionmaker, service.settings, service.state.queue)
    row = row_of(service, JOB, row_id)
    assert (row.status, row.worker, row.pause_requested) == ("paused", None, False)
    with service.state.sessionmaker() as session:
        events = session.query(FineTuningEvent).filter_by(job_id=row_id).all()
        assert any("stopped responding while pausing" in event.message for event in events)
        assert Leases(session, JOB).resume(row_id) == "queued"
