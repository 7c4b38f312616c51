"""A real `tunehouse worker` process consumes tasks on each broker."""

import json
import os
import signal
import subprocess
import sys
import uuid

import pytest

from domain.queue import create_celery
from domain.settings import Settings
from domain.storage import storage_from_url
from tests.conftest import redis_db, wait_for


@pytest.fixture
def redis_broker():
    with redis_db("worker") as url:
        yield url


@pytest.fixture(params=["filesystem", "redis"])
def broker_url(request):
    return "filesystem://" if request.param == "filesystem" else request.getfixturevalue("redis_broker")


@pytest.mark.slow
def test_worker_consumes_the_queue_with_the_service_configuration(tmp_path, broker_url):
    # No base model on disk to size: a training worker offered the bundled
    # SmolLM2 would read its GGUF header as it starts (~7 s of CPU on 2 cores).
    settings = Settings(data_dir=tmp_path, broker_url=broker_url, base_models={"absent": f"path:{tmp_path / 'absent'}"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEHOUSE_")} | settings.as_env()
    worker = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "worker"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        nonces = [uuid.uuid4().hex for _ in range(3)]
        celery = create_celery(settings)
        for nonce in nonces:
            celery.send_task("tunehouse.ping", args=[nonce])
        storage = storage_from_url(settings.storage_url)
        for nonce in nonces:
            wait_for(lambda: storage.exists(f"system/ping/{nonce}"), 60, f"ping {nonce}")
            assert json.loads(storage.get_bytes(f"system/ping/{nonce}"))["pid"] != os.getpid()
    finally:
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0, output
