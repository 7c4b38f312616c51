"""GET /metrics in Prometheus text format, on both backends.

The session `service` is shared with other tests (and has no worker), so the
gauges are compared before and after, never to absolute values.
"""

import socket
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from domain.jobs.events import add_event
from domain.runs.kinds import JOB
from domain.runs.leases import Leases
from api.observability import queue_depths
from domain.queue import create_celery
from domain.settings import Settings
from domain.observability.stats import BATCH_STATUSES, EVALUATION_STATUSES, JOB_STATUSES
from tests.api.jobs.test_endpoints import create, training_file
from tests.conftest import fresh_postgres_database, redis_db, running_service

QUEUES = {"default", "train", "inference"}


def scrape(client: httpx.Client) -> dict[str, dict[tuple, float]]:
    """{metric name: {sorted label items: value}} for every sample."""
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def by_label(samples: dict[str, dict[tuple, float]], name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: value for labels, value in samples[name].items()}


def test_metrics_need_no_key_and_list_every_queue_and_status(anonymous):
    samples = scrape(anonymous)
    assert set(by_label(samples, "tunehouse_queue_depth", "queue")) == QUEUES
    assert set(by_label(samples, "tunehouse_jobs", "status")) >= set(JOB_STATUSES)
    assert set(by_label(samples, "tunehouse_batches", "status")) >= set(BATCH_STATUSES)
    assert set(by_label(samples, "tunehouse_evaluations", "status")) >= set(EVALUATION_STATUSES)
    assert samples["tunehouse_training_tokens_per_second"][()] >= 0
    assert by_label(samples, "tunehouse_scrape_errors", "source") == {"broker": 0, "database": 0}


def test_a_queued_job_is_counted_and_waits_in_the_train_queue(service, alice, anonymous):
    file_id = training_file(alice)
    before = scrape(anonymous)
    response = create(alice, training_file=file_id)
    assert response.status_code == 200, response.text
    job_id = response.json()["id"]
    after = scrape(anonymous)

    jobs_before, jobs_after = (by_label(s, "tunehouse_jobs", "status") for s in (before, after))
    assert jobs_after["queued"] == jobs_before["queued"] + 1
    assert sum(jobs_after.values()) == sum(jobs_before.values()) + 1
    # No worker runs: the message waits in the broker's train queue.
    depth_before, depth_after = (by_label(s, "tunehouse_queue_depth", "queue") for s in (before, after))
    assert depth_after["train"] == depth_before["train"] + 1
    assert depth_after["inference"] == depth_before["inference"]

    assert alice.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").status_code == 200
    cancelled = by_label(scrape(anonymous), "tunehouse_jobs", "status")
    assert cancelled["queued"] == jobs_before["queued"]
    assert cancelled["cancelled"] == jobs_after["cancelled"] + 1


def test_training_throughput_sums_the_latest_metrics_of_running_jobs(service, alice, anonymous):
    job_id = create(alice, training_file=training_file(alice)).json()["id"]
    before = scrape(anonymous)["tunehouse_training_tokens_per_second"][()]
    with service.state.sessionmaker() as session:
        # What a worker does: claim the job, then log a metrics event per step.
        assert Leases(session, JOB).claim(job_id, "test-worker", heartbeat_timeout=600) is not None
        for step, speed in ((1, 250.0), (2, 1000.0)):
            add_event(session, job_id, f"step {step}", type="metrics", data={"step": step, "tokens_per_second": speed})
        add_event(session, job_id, "a message in between")
        session.commit()
    try:
        during = scrape(anonymous)
        assert during["tunehouse_training_tokens_per_second"][()] == pytest.approx(before + 1000.0)
        assert by_label(during, "tunehouse_jobs", "status")["running"] >= 1
    finally:
        assert alice.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").status_code == 200
    assert scrape(anonymous)["tunehouse_training_tokens_per_second"][()] == pytest.approx(before)


def test_request_latency_is_labelled_by_route_template(alice, anonymous):
    file_id = f"file-{uuid.uuid4().hex}"
    assert alice.get(f"/v1/files/{file_id}").status_code == 404
    counts = scrape(anonymous)["tunehouse_http_request_duration_seconds_count"]
    series = [dict(labels) for labels in counts]
    assert {"method": "GET", "route": "/v1/files/{file_id}", "status": "404"} in series
    # Never the raw path: the number of series must not grow with ids.
    assert not any(file_id in labels["route"] for labels in series)
    # The scrape itself is timed too, under its own route, once it has ended.
    later = scrape(anonymous)["tunehouse_http_request_duration_seconds_count"]
    assert {"method": "GET", "route": "/metrics", "status": "200"} in [dict(labels) for labels in later]


def test_filesystem_queue_depth_counts_only_whole_messages_of_each_queue(tmp_path):
    settings = Settings(data_dir=tmp_path)
    celery = create_celery(settings)  # makes the broker's folders
    for name in (
        "1000_aa.train.msg",
        "1001_bb.train.msg",
        "1002_cc.inference.msg",
        ".1003_dd.train.msg.tmp",  # domain/filesystem_broker.py's file being written
        "1004_ee.trainer.msg",
        "notes.txt",
    ):
        (settings.broker_dir / "queue" / name).write_text("{}")
    assert queue_depths(celery) == {"default": 0, "train": 2, "inference": 1}
    assert queue_depths(celery, ["train", "never-used"]) == {"train": 2, "never-used": 0}


def test_an_unreadable_broker_or_database_does_not_fail_the_scrape(tmp_path):
    # Nothing listens on port 1: every read of the queues fails.
    with fresh_postgres_database("tunehouse_metrics") as database_url:
        settings = Settings(data_dir=tmp_path, database_url=database_url, broker_url="redis://127.0.0.1:1/0")
        with running_service("broken", settings) as service, service.client(None) as client:
            samples = scrape(client)
            assert by_label(samples, "tunehouse_scrape_errors", "source") == {"broker": 1, "database": 0}
            assert "tunehouse_queue_depth" not in samples
            assert sum(by_label(samples, "tunehouse_jobs", "status").values()) == 0

            import psycopg

            from tests.conftest import POSTGRES_ADMIN_URL

            name = database_url.rsplit("/", 1)[1]
            with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            samples = scrape(client)
            assert by_label(samples, "tunehouse_scrape_errors", "source") == {"broker": 1, "database": 4}
            for name in ("tunehouse_jobs", "tunehouse_batches", "tunehouse_evaluations"):
                assert name not in samples
            assert "tunehouse_http_request_duration_seconds_count" in samples


def send_with_priorities(celery: Celery) -> None:
    """6 messages to train (every priority step, and none), 2 to inference, 1 to default."""
    for priority in (None, 0, 3, 5, 6, 9):
        celery.send_task("tunehouse.train", args=["ftjob-x"], queue="train", priority=priority)
    for priority in (None, 9):
        celery.send_task("tunehouse.chat", args=[{}], queue="inference", priority=priority)
    celery.send_task("tunehouse.ping", args=["x"])


def take_one(celery: Celery, queue: str) -> None:
    """What a worker does first: take a message off the queue."""
    with celery.connection_for_read() as connection, connection.channel() as channel:
        assert channel.basic_get(queue, no_ack=True) is not None


@pytest.fixture
def redis_broker(tmp_path) -> Iterator[Settings]:
    with redis_db("metrics") as url:
        yield Settings(data_dir=tmp_path, broker_url=url)


@pytest.mark.parametrize("broker", ["filesystem", "redis"])
def test_queue_depth_counts_real_messages_sent_with_priorities(broker, request, tmp_path):
    settings = Settings(data_dir=tmp_path) if broker == "filesystem" else request.getfixturevalue("redis_broker")
    celery = create_celery(settings)
    # Nothing sent yet: on Redis no queue exists at all; each counts 0 all the same.
    assert queue_depths(celery) == {"default": 0, "train": 0, "inference": 0}

    send_with_priorities(celery)
    assert queue_depths(celery) == {"default": 1, "train": 6, "inference": 2}
    for _ in range(2):
        take_one(celery, "inference")
    take_one(celery, "train")
    assert queue_depths(celery) == {"default": 1, "train": 5, "inference": 0}

    # The same through GET /metrics of an API on that broker.
    with running_service(broker, settings) as service, service.client(None) as client:
        samples = scrape(client)
        assert by_label(samples, "tunehouse_queue_depth", "queue") == {"default": 1, "train": 5, "inference": 0}
        assert by_label(samples, "tunehouse_scrape_errors", "source")["broker"] == 0
    # Reading the depths took nothing off the queues.
    assert queue_depths(celery) == {"default": 1, "train": 5, "inference": 0}


def test_a_broker_that_never_answers_fails_the_read_within_its_timeout(tmp_path):
    # A socket that accepts connections and never says a word.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        celery = create_celery(Settings(data_dir=tmp_path, broker_url=f"redis://127.0.0.1:{port}/0"))
        started = time.monotonic()
        with pytest.raises(Exception):
            queue_depths(celery, timeout=0.5)
        # One try, then the error: not kombu's retries (seconds each).
        assert time.monotonic() - started < 5
