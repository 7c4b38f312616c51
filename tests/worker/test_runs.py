"""The lease engine every background task runs on (worker/runs.py), with toy
work on a real database: how a run ends (done, failed, handed back, lost),
the failure table, the throttled cancel check, and a write that waits out a
PostgreSQL outage."""

import logging
import threading
import time
import uuid

import pytest
import torch
from sqlalchemy import update

from domain.batches.models import Batch
from domain.db import make_engine, make_sessionmaker, migrate
from domain.errors import InvalidRequest
from domain.runs.kinds import BATCH
from domain.runs.leases import Leases
from domain.settings import Settings
from domain.storage import StorageError
from tests.conftest import fresh_postgres_database
from tests.production.conftest import database_connections_refused
from worker.runs import FailureWords, HandBack, LeasedRun, RunFailure, RunLost, classify_failure

WORDS = FailureWords(
    generic_code="toy_error",
    generic_what="The toy failed",
    bad_data_code="invalid_toy_data",
    bad_data_what="The toy's data",
    out_of_memory="The toy ran out of memory.",
)


class ToyRun(LeasedRun):
    """Runs `body(self)` as its work."""

    kind = BATCH
    words = WORDS

    def __init__(self, settings, row_id, body):
        super().__init__(settings, row_id)
        self.body = body
        self.worked = False

    def work(self) -> None:
        self.worked = True
        self.body(self)


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request, tmp_path):
    if request.param == "sqlite":
        settings = Settings(data_dir=tmp_path)
        migrate(settings.database_url)
        yield settings
        return
    with fresh_postgres_database("tunehouse_runs") as url:
        settings = Settings(data_dir=tmp_path, database_url=url)
        migrate(url)
        yield settings


def new_batch(settings) -> str:
    engine = make_engine(settings.database_url)
    now = int(time.time())
    try:
        with make_sessionmaker(engine)() as session:
            from domain.auth.service import get_or_create_user

            user = get_or_create_user(session, f"toy-{uuid.uuid4().hex[:8]}")
            batch = Batch(
                id=f"batch_{uuid.uuid4().hex[:12]}", owner_id=user.id, endpoint="/v1/chat/completions",
                input_file_id="file-x", completion_window="24h", status="in_progress", request_total=0,
                request_completed=0, request_failed=0, created_at=now, expires_at=now + 86400, attempt=0, handbacks=0,
            )
            session.add(batch)
            session.commit()
            return batch.id
    finally:
        engine.dispose()


def batch_row(settings, batch_id: str) -> Batch:
    engine = make_engine(settings.database_url)
    try:
        with make_sessionmaker(engine)() as session:
            return session.get(Batch, batch_id)
    finally:
        engine.dispose()


def run_toy(settings, batch_id: str, body) -> ToyRun:
    run = ToyRun(settings, batch_id, body)
    try:
        run.run()
    finally:
        run.close()
    return run


def test_work_that_ends_writes_through_its_lease(settings):
    batch_id = new_batch(settings)
    run = run_toy(settings, batch_id, lambda run: run.write(status="completed", completed_at=1))
    assert run.worked and run.attempt == 1
    row = batch_row(settings, batch_id)
    assert (row.status, row.attempt, row.worker) == ("completed", 1, run.worker_name)


@pytest.mark.parametrize(
    "error, code, message",
    [
        (ValueError("line 3 is not JSON"), "invalid_toy_data", "The toy's data could not be used: line 3 is not JSON"),
        (StorageError("bucket gone"), "storage_error", "The artifact store failed: bucket gone"),
        (RunFailure("no_items", "Nothing to do."), "no_items", "Nothing to do."),
        (InvalidRequest("Bad model.", code="model_not_found"), "model_not_found", "Bad model."),
        (KeyError("x"), "toy_error", "The toy failed: KeyError: 'x'"),
        (MemoryError(), "out_of_memory", "The toy ran out of memory."),
    ],
)
def test_a_failure_is_recorded_with_a_code_and_words_a_person_can_act_on(settings, error, code, message):
    batch_id = new_batch(settings)

    def fail(_run):
        raise error

    run_toy(settings, batch_id, fail)
    row = batch_row(settings, batch_id)
    assert row.status == "failed"
    assert row.errors["data"][0]["code"] == code and row.errors["data"][0]["message"] == message


def test_the_failure_table_knows_torch_out_of_memory():
    assert classify_failure(torch.OutOfMemoryError("CUDA out of memory"), WORDS)[0] == "out_of_memory"


def test_a_hand_back_frees_the_row_and_sends_it_again(settings):
    batch_id = new_batch(settings)

    def pause(_run):
        raise HandBack("the lines not yet answered")

    run_toy(settings, batch_id, pause)
    row = batch_row(settings, batch_id)
    assert (row.status, row.worker, row.handbacks) == ("in_progress", None, 1)
    assert row.enqueued_at is not None  # the filesystem broker took the new message
    assert list((settings.broker_dir / "queue").glob("*.inference.msg"))


def test_a_lost_row_is_left_alone(settings):
    batch_id = new_batch(settings)

    def lose(run):
        with run.db() as other:  # another worker took it over meanwhile
            other.execute(update(Batch).where(Batch.id == batch_id).values(attempt=Batch.attempt + 1))
            other.commit()
        run.write(request_completed=99)

    run_toy(settings, batch_id, lose)
    row = batch_row(settings, batch_id)
    assert (row.status, row.request_completed, row.attempt) == ("in_progress", 0, 2)


def test_a_row_not_claimable_is_not_worked_on_and_too_many_lost_attempts_fail_it(settings):
    batch_id = new_batch(settings)
    engine = make_engine(settings.database_url)
    with make_sessionmaker(engine)() as session:
        assert Leases(session, BATCH).claim(batch_id, "someone-else", 60) == 1
    assert not run_toy(settings, batch_id, lambda run: None).worked  # held elsewhere
    with make_sessionmaker(engine)() as session:
        session.execute(update(Batch).where(Batch.id == batch_id).values(heartbeat_at=0, attempt=settings.max_job_attempts))
        session.commit()
    engine.dispose()
    assert not run_toy(settings, batch_id, lambda run: None).worked
    row = batch_row(settings, batch_id)
    assert row.status == "failed" and row.errors["data"][0]["code"] == "worker_lost"


def test_should_stop_notices_a_cancel_within_the_check_interval(settings):
    batch_id = new_batch(settings)
    seen = {}

    def watch(run):
        assert run.should_stop() is False
        with run.db() as other:
            other.execute(update(Batch).where(Batch.id == batch_id).values(status="cancelled"))
            other.commit()
        deadline = time.monotonic() + 5
        while not run.should_stop() and time.monotonic() < deadline:
            time.sleep(0.05)
        seen["stopped"] = run.should_stop()
        raise RunLost

    run_toy(settings, batch_id, watch)
    assert seen["stopped"] is True


class _Retried(logging.Handler):
    """Sets an event when the database layer says it is retrying."""

    def __init__(self):
        super().__init__()
        self.seen = threading.Event()

    def emit(self, record):
        if "database unavailable while" in record.getMessage():
            self.seen.set()


@pytest.mark.parametrize("settings", ["postgres"], indirect=True)
def test_a_write_waits_out_a_database_outage(settings):
    batch_id = new_batch(settings)
    first_written, outage_started = threading.Event(), threading.Event()
    retried = _Retried()
    logging.getLogger("tunehouse.db").addHandler(retried)

    def write_during_outage(run):
        run.write(request_completed=1)
        first_written.set()
        outage_started.wait(30)
        run.write(request_completed=2)  # the database is away: retried until it is back

    run = ToyRun(settings, batch_id, write_during_outage)
    worker = threading.Thread(target=run.run)
    try:
        worker.start()
        assert first_written.wait(30)
        with database_connections_refused(settings.database_url):
            outage_started.set()
            assert retried.seen.wait(30)
            assert worker.is_alive()  # waiting for the database, not failed
        worker.join(60)
    finally:
        logging.getLogger("tunehouse.db").removeHandler(retried)
        run.close()
    row = batch_row(settings, batch_id)
    assert (row.request_completed, row.status) == (2, "in_progress")
