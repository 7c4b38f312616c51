"""Structured logs: the JSON formatter, the id context, and real processes
(`tunehouse worker` and its Celery pool processes, `tunehouse serve`) writing
JSON lines with TUNEHOUSE_LOG_FORMAT=json."""

import asyncio
import io
import json
import logging
import signal
import subprocess
import threading
import uuid
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from domain.observability.logs import ContextFilter, JsonFormatter, TextFormatter, configure_logging, current_context, log_context
from domain.queue import create_celery
from domain.settings import Settings
from domain.storage import storage_from_url
from tests.api.test_cli import TUNEHOUSE, clean_env
from tests.conftest import answers_healthz, free_port, run_async, wait_for


def capture(formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
    """A logger of its own writing through `formatter` to a StringIO."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(ContextFilter())
    logger = logging.getLogger(f"tunehouse.test.{uuid.uuid4().hex}")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_have_time_level_logger_message():
    logger, stream = capture(JsonFormatter())
    before = datetime.now(timezone.utc)
    logger.warning("disk %s is %d%% full", "/data", 93)
    [entry] = lines(stream)
    assert set(entry) == {"ts", "level", "logger", "message"}
    assert (entry["level"], entry["logger"], entry["message"]) == ("WARNING", logger.name, "disk /data is 93% full")
    assert entry["ts"].endswith("Z")
    ts = datetime.fromisoformat(entry["ts"].replace("Z", "+00:00"))
    assert ts.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=1) <= ts <= datetime.now(timezone.utc) + timedelta(seconds=1)


def test_ids_in_context_are_added_nested_and_removed_after():
    logger, stream = capture(JsonFormatter())
    with log_context(job_id="ftjob-1", attempt=None):
        logger.info("outer")
        with log_context(batch_id="batch-2", job_id="ftjob-override"):
            logger.info("inner")
        logger.info("outer again")
    logger.info("outside")
    outer, inner, outer_again, outside = lines(stream)
    assert outer["job_id"] == "ftjob-1" and "attempt" not in outer  # None is left out
    assert (inner["job_id"], inner["batch_id"]) == ("ftjob-override", "batch-2")
    assert outer_again["job_id"] == "ftjob-1" and "batch_id" not in outer_again
    assert "job_id" not in outside
    assert current_context() == {}


def test_context_cannot_replace_the_fixed_fields_and_odd_values_become_text():
    logger, stream = capture(JsonFormatter())
    with log_context(message="spoofed", level="NONE", path=Path("/data/x"), evaluation_id="eval-3"):
        logger.info("the real message")
    [entry] = lines(stream)
    assert (entry["message"], entry["level"]) == ("the real message", "INFO")
    assert (entry["path"], entry["evaluation_id"]) == ("/data/x", "eval-3")


def test_an_exception_is_one_string_field_and_the_line_stays_one_line():
    logger, stream = capture(JsonFormatter())
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        logger.exception("it failed")
    assert len(stream.getvalue().splitlines()) == 1
    [entry] = lines(stream)
    assert entry["message"] == "it failed"
    assert entry["exc_info"].startswith("Traceback (most recent call last):")
    assert "RuntimeError: boom\nsecond line" in entry["exc_info"]


def test_the_context_follows_asyncio_tasks_but_not_unrelated_threads():
    logger, stream = capture(JsonFormatter())

    async def handle(request_id: str) -> None:
        with log_context(request_id=request_id):
            await asyncio.sleep(0)  # let the other task run in between
            logger.info("handled")

    async def both() -> None:
        await asyncio.gather(handle("req-a"), handle("req-b"))

    run_async(both())
    with log_context(job_id="ftjob-9"):
        thread = threading.Thread(target=lambda: logger.info("from a thread"))
        thread.start()
        thread.join()
    a, b, from_thread = lines(stream)
    assert {a["request_id"], b["request_id"]} == {"req-a", "req-b"}
    assert "job_id" not in from_thread  # a new thread starts with an empty context


def test_text_lines_keep_their_format_and_show_the_ids():
    logger, stream = capture(TextFormatter())
    logger.info("plain")
    with log_context(job_id="ftjob-1"):
        logger.info("with ids")
    plain, with_ids = stream.getvalue().splitlines()
    assert plain.endswith(f"INFO {logger.name}: plain")
    assert with_ids.endswith(f"INFO {logger.name}: with ids [job_id=ftjob-1]")


def test_the_worker_routes_billiards_process_logger_to_ours(root_logging):
    from billiard import util

    from api.cli import _celery_logs_through_ours

    stream = io.StringIO()
    configure_logging("json", stream=stream)
    process_logger = util.get_logger()
    propagate, level = process_logger.propagate, process_logger.level
    try:
        _celery_logs_through_ours()
        # What the worker's parent logs when a pool process dies.
        util.error("Process %r pid:%r exited with %r", "ForkPoolWorker-1", 4242, "signal 9 (SIGKILL)")
        util.info("noise below ERROR")
    finally:
        process_logger.propagate, process_logger.level = propagate, level
    [entry] = lines(stream)
    assert (entry["level"], entry["logger"]) == ("ERROR", process_logger.name)
    assert "pid:4242 exited with 'signal 9 (SIGKILL)'" in entry["message"]


@pytest.fixture
def root_logging():
    """configure_logging changes the root logger: put it back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


def test_configure_logging_is_one_root_handler_and_captures_warnings(root_logging):
    first, stream = io.StringIO(), io.StringIO()
    configure_logging("text", stream=first)
    handler = configure_logging("json", stream=stream)
    root = logging.getLogger()
    assert [h for h in root.handlers if type(h) is type(handler)] == [handler]
    with log_context(job_id="ftjob-5"):
        logging.getLogger("celery.app.trace").info("Task done")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("running as root", UserWarning)
    task, warning = lines(stream)
    assert (task["logger"], task["message"], task["job_id"]) == ("celery.app.trace", "Task done", "ftjob-5")
    assert warning["logger"] == "py.warnings" and "running as root" in warning["message"]
    assert first.getvalue() == ""
    with pytest.raises(ValueError):
        configure_logging("xml")


def test_the_log_format_setting(tmp_path, monkeypatch):
    monkeypatch.delenv("TUNEHOUSE_LOG_FORMAT", raising=False)
    assert Settings(data_dir=tmp_path).log_format == "text"
    monkeypatch.setenv("TUNEHOUSE_LOG_FORMAT", "JSON")
    settings = Settings(data_dir=tmp_path)
    assert settings.log_format == "json"
    assert settings.as_env()["TUNEHOUSE_LOG_FORMAT"] == "json"
    monkeypatch.setenv("TUNEHOUSE_LOG_FORMAT", "xml")
    with pytest.raises(ValidationError):
        Settings(data_dir=tmp_path)


def test_a_bad_log_format_is_a_clear_cli_error(tmp_path):
    result = subprocess.run(
        [*TUNEHOUSE, "keys", "list", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, env=clean_env(tmp_path, TUNEHOUSE_LOG_FORMAT="xml"), timeout=120,
    )
    assert result.returncode == 2
    assert "TUNEHOUSE_LOG_FORMAT must be 'text' or 'json'" in result.stderr


# ----------------------------------------------------------- real processes


def stop(process: subprocess.Popen, signum: int) -> str:
    """Signal `process`, wait for it to end (killing it if it hangs), return its stderr."""
    process.send_signal(signum)
    try:
        _stdout, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        _stdout, stderr = process.communicate()
    return stderr


def json_lines(stderr: str) -> list[dict]:
    """Every non-empty line must be one JSON object."""
    entries = []
    for line in stderr.splitlines():
        if line.strip():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                pytest.fail(f"not a JSON line on stderr: {line!r}\n--- stderr ---\n{stderr}")
    return entries


@pytest.mark.slow
@pytest.mark.parametrize(("queues", "forks"), [("train,default", True), ("default", False)])
def test_worker_and_its_pool_processes_log_json_lines(tmp_path, queues, forks):
    """A worker with the train queue runs tasks in forked pool processes; one
    without it (inference) in threads of its own process. Both log JSON."""
    # No base model on disk to size: a training worker offered the bundled
    # SmolLM2 would read its GGUF header as it starts (~7 s of CPU on 2 cores).
    settings = Settings(data_dir=tmp_path, log_format="json", base_models={"absent": f"path:{tmp_path / 'absent'}"})
    worker = subprocess.Popen(
        [*TUNEHOUSE, "worker", "--queues", queues],
        env=clean_env(tmp_path, **settings.as_env()),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    celery = create_celery(settings)
    storage = storage_from_url(settings.storage_url)

    def ping() -> tuple[str, int]:
        nonce = uuid.uuid4().hex
        celery.send_task("tunehouse.ping", args=[nonce])
        wait_for(lambda: storage.exists(f"system/ping/{nonce}"), 90, "the worker to answer a ping")
        return nonce, json.loads(storage.get_bytes(f"system/ping/{nonce}"))["pid"]

    try:
        nonce, pool_pid = ping()
    finally:
        stderr = stop(worker, signal.SIGTERM)
    assert worker.returncode == 0, stderr
    assert (pool_pid != worker.pid) is forks  # a forked pool process, or a thread of the worker's

    entries = json_lines(stderr)
    assert all({"ts", "level", "logger", "message"} <= set(entry) for entry in entries)
    # Logged inside the task: JSON, with the task's ids.
    [answer] = [e for e in entries if e["message"] == f"ping {nonce} answered by pid {pool_pid}"]
    assert answer["logger"] == "tunehouse.worker" and answer["task_id"]
    # Celery's own lines go through the same handler, in both processes.
    assert any(e["logger"] == "celery.app.trace" and answer["task_id"] in e["message"] for e in entries), stderr
    assert any(e["logger"].startswith("celery.worker") for e in entries), stderr


@pytest.mark.slow
def test_serve_logs_json_lines_with_the_request_id_on_the_access_log(tmp_path):
    port = free_port()
    env = clean_env(tmp_path, TUNEHOUSE_LOG_FORMAT="json")
    server = subprocess.Popen(
        [*TUNEHOUSE, "serve", "--no-worker", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: answers_healthz(base), 60, "the API to answer /healthz")
        response = httpx.get(f"{base}/v1/files", headers={"X-Request-ID": "trace-42"})
        assert response.status_code == 401
        assert response.headers["x-request-id"] == "trace-42"
    finally:
        stderr = stop(server, signal.SIGINT)
    assert server.returncode == 0, stderr

    entries = json_lines(stderr)
    [access] = [e for e in entries if e["logger"] == "uvicorn.access" and e.get("request_id") == "trace-42"]
    assert "GET /v1/files" in access["message"] and "401" in access["message"]
    assert any(e["logger"] == "uvicorn.error" and "Uvicorn running on" in e["message"] for e in entries)
