"""What the end-to-end tests share: real `tunehouse worker` processes with a
service's configuration, the tiny model's name and the chat data it learns
from, and helpers that start a job and wait for it."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from domain.settings import Settings
from tests.api.files.test_endpoints import upload
from tests.conftest import fresh_postgres_database, make_bucket, redis_db, running_service, wait_for

BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
TINY = "tiny-llama"
BROKEN = "broken-model"
JOB_TIMEOUT = 240
# Each worker's log is kept for when a test fails (test-artifacts/ is git-ignored).
WORKER_LOGS = Path(__file__).resolve().parent.parent / "test-artifacts" / "worker-logs"
HEARTBEAT_TIMEOUT = 4.0


def tiny_chat_jsonl(n: int = 24) -> bytes:
    """Short, repetitive conversations a tiny model can learn a little of."""
    lines = []
    for i in range(n):
        animal = ["cat", "dog", "cow", "owl"][i % 4]
        lines.append(
            {
                "messages": [
                    {"role": "user", "content": f"What sound does a {animal} make? ({i})"},
                    {"role": "assistant", "content": {"cat": "Meow.", "dog": "Woof.", "cow": "Moo.", "owl": "Hoot."}[animal]},
                ]
            }
        )
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


class Workers:
    """`tunehouse worker` processes with the service's configuration."""

    def __init__(self, settings: Settings):
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEHOUSE_")} | settings.as_env()
        self.processes: list[subprocess.Popen] = []

    def start(self, queues: str | None = None, **extra_env: str) -> subprocess.Popen:
        # The worker's log is kept for when a test fails (test-artifacts/ is git-ignored).
        WORKER_LOGS.mkdir(parents=True, exist_ok=True)
        log_path = WORKER_LOGS / f"worker-{uuid.uuid4().hex[:12]}-{(queues or 'all').replace(',', '+')}.log"
        with log_path.open("wb") as log:
            # A process group of its own, so a test can SIGKILL the worker and its children at once.
            process = subprocess.Popen(
                [sys.executable, "-m", "api.cli", "worker", *(["--queues", queues] if queues else [])],
                env=self.env | extra_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process.log_path = log_path  # type: ignore[attr-defined]
        self.processes.append(process)
        return process

    def stop(self, process: subprocess.Popen, timeout: float = 60) -> None:
        """SIGTERM to the Celery parent: its warm shutdown (a training job checkpoints and goes back to the queue)."""
        process.terminate()
        process.wait(timeout=timeout)

    def kill(self, process: subprocess.Popen) -> None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def stop_all(self) -> None:
        # SIGTERM to the Celery parent only (its warm shutdown stops the pool):
        # a signal to the whole group also hits the pool's child, which can die
        # holding a pool lock and leave the parent waiting for ever.
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            with contextlib.suppress(ProcessLookupError):  # nothing of it may outlive the test
                os.killpg(process.pid, signal.SIGKILL)


def start_job(client, data: bytes, **hyperparameters) -> dict:
    file_id = upload(client, data).json()["id"]
    response = client.post(
        "/v1/fine_tuning/jobs",
        json={"model": TINY, "training_file": file_id, "seed": 3, "suffix": "e2e", "hyperparameters": hyperparameters},
    )
    assert response.status_code == 200, response.text
    return response.json()


def wait_until_done(client, job_id: str, timeout: float = JOB_TIMEOUT) -> dict:
    def finished():
        job = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None

    return wait_for(finished, timeout, f"job {job_id} to finish", interval=0.5)


def event_messages(client, job_id: str) -> list[str]:
    events = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
    return [event["message"] for event in reversed(events)]



@contextlib.contextmanager
def service_with_worker(request, tmp: Path, name: str, **settings_values):
    """A running service (request.param: "sqlite-local" or "postgres-s3", the
    production parts in a fresh database, Redis db and bucket) with one
    `tunehouse worker` on every queue; yields the service (its `workers`
    attribute: the `Workers`, to stop or start more)."""
    with contextlib.ExitStack() as stack:
        if request.param == "postgres-s3":
            endpoint = request.getfixturevalue("s3_endpoint")
            settings_values |= dict(
                database_url=stack.enter_context(fresh_postgres_database(f"tunehouse_{name}")),
                # Redis db "jobs": module-scoped services of the e2e modules never overlap.
                broker_url=stack.enter_context(redis_db("jobs")),
                storage_url=f"s3://{make_bucket(endpoint)}/artifacts",
                s3_endpoint_url=endpoint,
            )
        settings = Settings(data_dir=tmp, **settings_values)
        service = stack.enter_context(running_service(request.param, settings))
        workers = Workers(settings)
        workers.start()
        service.workers = workers
        try:
            yield service
        finally:
            workers.stop_all()


def tiny_service_with_worker(request, tmp_path_factory, tiny_model_dir, name: str, *, smollm2: bool = True):
    """`service_with_worker` offering the tiny Llama and (unless `smollm2` is
    False) SmolLM2, with the e2e heartbeat timeout and short automatic
    evaluations. Leave SmolLM2 out where no test uses it: a training worker
    offered it reads its shape from the bundled GGUF's header as it starts
    (worker/devices.py), ~7 s of CPU beside the test's first job on 2 cores."""
    return service_with_worker(
        request, tmp_path_factory.mktemp(f"{name}-{request.param}"), name,
        base_models={**({BASE: "bundled:smollm2"} if smollm2 else {}), TINY: f"path:{tiny_model_dir}"},
        heartbeat_timeout=HEARTBEAT_TIMEOUT, max_completion_tokens=16,
    )
