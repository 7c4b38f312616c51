"""Shared fixtures: real PostgreSQL, Redis, moto's S3 server and a real uvicorn.

The API suite runs twice: on the embedded parts (SQLite + local directory) and
on the production parts (PostgreSQL + S3 over HTTP).
"""

import asyncio
import fcntl
import functools
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# Before torch loads anywhere in this process: the suite runs model code here
# while worker processes compute beside it, and OpenMP's busy-waiting threads
# would spin against them (see api/cli.py's worker command).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import httpx  # noqa: E402
import psycopg  # noqa: E402
import pytest
import uvicorn
from fastapi import FastAPI

from api.app import create_app
from domain.auth.service import create_key, get_or_create_user
from domain.db import migrate
from domain.settings import Settings
from api.deps import AppState

POSTGRES_ADMIN_URL = os.environ.get("TUNEHOUSE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_TEST_SERVER = os.environ.get("TUNEHOUSE_TEST_REDIS", "redis://127.0.0.1:6379")
# Each group of tests gets its own Redis db number, emptied before and after:
# 5 numbers per test process, in one of REDIS_SLOTS slots (dbs 10-14, 5-9,
# 0-4). A process takes the first free slot when it first needs Redis and
# holds it with a lock file until it exits, so pytest-xdist's workers, a
# worker that replaces a crashed one and two runs of the suite on one machine
# (two checkouts) never empty each other's dbs. TUNEHOUSE_TEST_REDIS_DB_SHIFT
# sets the shift instead (a Redis that several machines share).
REDIS_DBS_UNSHIFTED = {"api": 13, "worker": 12, "jobs": 14, "rate_limits": 11, "metrics": 10}
REDIS_SLOTS = 3
_redis_slot_locks = []  # the held lock file, open for the life of the process


@functools.cache
def _redis_db_shift() -> int:
    if "TUNEHOUSE_TEST_REDIS_DB_SHIFT" in os.environ:
        return int(os.environ["TUNEHOUSE_TEST_REDIS_DB_SHIFT"])
    server = REDIS_TEST_SERVER.split("://")[-1].replace(":", "-").replace("/", "-")
    preferred = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0) % REDIS_SLOTS
    for slot in sorted(range(REDIS_SLOTS), key=lambda slot: slot != preferred):
        lock = open(Path(tempfile.gettempdir()) / f"tunehouse-test-redis-{server}-slot{slot}.lock", "a")  # noqa: SIM115
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        _redis_slot_locks.append(lock)
        return 5 * slot
    raise RuntimeError(f"all {REDIS_SLOTS} slots of Redis test dbs are held by other test processes on this "
                       "machine: run at most 3 at once (make test runs 3)")


def redis_db_number(purpose: str) -> int:
    return REDIS_DBS_UNSHIFTED[purpose] - _redis_db_shift()


TEST_UPLOAD_LIMIT = 2 * 1024 * 1024  # small, so the 413 tests stay fast
STARTUP_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition, timeout: float, what: str, interval: float = 0.05):
    """Poll `condition` until it returns a truthy value or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def run_async(coroutine):
    """asyncio.run(coroutine) in a thread of its own. The browser tests'
    Playwright (sync API) keeps an event loop running in the main thread for
    the rest of the process, and under pytest-xdist any test file may run
    after them in that process, where asyncio.run would refuse to start."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="run_async") as pool:
        return pool.submit(asyncio.run, coroutine).result()


def answers_healthz(base_url: str, process=None) -> bool:
    """For wait_for: does a server started as a separate process answer /healthz
    yet? Fails at once if that process has exited."""
    if process is not None and process.poll() is not None:
        raise AssertionError(f"the server process exited with {process.returncode}")
    try:
        return httpx.get(f"{base_url}/healthz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


# --------------------------------------------------------------------- databases


@contextmanager
def fresh_postgres_database(prefix: str = "tunehouse_test") -> Iterator[str]:
    """A new database on the machine's PostgreSQL, dropped afterwards; yields its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with fresh_postgres_database() as url:
        yield url


# ------------------------------------------------------------------------ storage


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 in server mode: boto3 talks to it over real HTTP."""
    from moto.server import ThreadedMotoServer

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        os.environ[name] = value
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def make_bucket(endpoint: str) -> str:
    import boto3

    bucket = f"tunehouse-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    return bucket


# ------------------------------------------------------------------- the service


@dataclass
class RunningService:
    name: str
    base_url: str
    settings: Settings
    app: FastAPI
    state: AppState

    def make_user(self, prefix: str = "user") -> "ServiceUser":
        """A new user with a new key: each test starts with nothing of its own."""
        with self.state.sessionmaker() as session:
            user = get_or_create_user(session, f"{prefix}-{uuid.uuid4().hex[:8]}")
            key = create_key(session, user)
            session.commit()
            return ServiceUser(name=user.name, id=user.id, key=key)

    def client(self, key: str | None = None, **kwargs) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=60,
            event_hooks={"response": [_fail_on_server_error]},
            **kwargs,
        )


@dataclass
class ServiceUser:
    name: str
    id: int
    key: str


def _fail_on_server_error(response: httpx.Response) -> None:
    # No request in the suite may get a 5xx: fail right where it happens.
    if response.status_code >= 500:
        response.read()
        raise AssertionError(f"{response.request.method} {response.request.url} -> {response.status_code}: {response.text}")


def service_settings(kind: str, tmp: Path, request, **overrides) -> Settings:
    """Embedded parts ("sqlite-local") or production parts ("postgres-s3":
    PostgreSQL, S3 over HTTP and Redis) for a service under test."""
    if kind == "sqlite-local":
        return Settings(data_dir=tmp, max_upload_bytes=TEST_UPLOAD_LIMIT, **overrides)
    endpoint = request.getfixturevalue("s3_endpoint")
    return Settings(
        data_dir=tmp,
        database_url=request.getfixturevalue("postgres_url"),
        storage_url=f"s3://{make_bucket(endpoint)}/artifacts",
        s3_endpoint_url=endpoint,
        broker_url=request.getfixturevalue("redis_broker_url"),
        max_upload_bytes=TEST_UPLOAD_LIMIT,
        **overrides,
    )


def start_uvicorn(app, port: int) -> tuple[uvicorn.Server, threading.Thread]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, STARTUP_TIMEOUT, "uvicorn to start")
    return server, thread


@contextmanager
def running_service(name: str, settings: Settings) -> Iterator[RunningService]:
    """The API on a free port in this process (a real HTTP server)."""
    migrate(settings.database_url)
    app = create_app(settings)
    port = free_port()
    server, thread = start_uvicorn(app, port)
    try:
        yield RunningService(
            name=name, base_url=f"http://127.0.0.1:{port}", settings=settings, app=app, state=app.state.tunehouse
        )
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextmanager
def redis_db(purpose: str) -> Iterator[str]:
    import redis

    url = f"{REDIS_TEST_SERVER}/{redis_db_number(purpose)}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


@pytest.fixture(scope="session")
def redis_broker_url() -> Iterator[str]:
    with redis_db("api") as url:
        yield url


@pytest.fixture(scope="session", params=["sqlite-local", "postgres-s3"])
def service(request, tmp_path_factory) -> Iterator[RunningService]:
    # No worker runs beside this service: a chat request gives up quickly. All
    # tests reach it from 127.0.0.1 and the auth tests alone fail hundreds of
    # authentications a minute, so the brute-force limit is out of their way
    # here (tests/api/test_rate_limit.py tests it on services of its own).
    settings = service_settings(
        request.param,
        tmp_path_factory.mktemp(request.param),
        request,
        inference_queue_timeout=1.0,
        auth_failures_per_minute=1_000_000,
    )
    with running_service(request.param, settings) as running:
        yield running


@pytest.fixture
def alice_user(service) -> ServiceUser:
    return service.make_user("alice")


@pytest.fixture
def bob_user(service) -> ServiceUser:
    return service.make_user("bob")


@pytest.fixture
def alice(service, alice_user) -> Iterator[httpx.Client]:
    with service.client(alice_user.key) as client:
        yield client


@pytest.fixture
def bob(service, bob_user) -> Iterator[httpx.Client]:
    with service.client(bob_user.key) as client:
        yield client


@pytest.fixture
def anonymous(service) -> Iterator[httpx.Client]:
    with service.client(None) as client:
        yield client


# ------------------------------------------------------------------------ models


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """torch on one thread for a module's tests, as before afterwards."""
    import torch  # here: the API tests never load it

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(tmp_path_factory) -> Path:
    from tests.tiny_model import save_smollm2_tokenizer

    return save_smollm2_tokenizer(tmp_path_factory.mktemp("smollm2-tokenizer"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2_tokenizer_dir) -> Path:
    """A tiny random Llama with SmolLM2's tokenizer, saved as safetensors."""
    from tests.tiny_model import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), smollm2_tokenizer_dir)


@pytest.fixture(scope="session")
def converted_smollm2(tmp_path_factory) -> Path:
    """The bundled SmolLM2 converted from its GGUF once per session (about a
    minute on 2 cores). The conversion itself, two processes racing for it,
    is tested in tests/worker/models/test_gguf.py; the e2e tests that train
    SmolLM2 seed their service's work dir with this copy
    (`seed_converted_smollm2`) instead of converting it again."""
    from worker.models.catalog import BUNDLED_SMOLLM2_ID, resolve_base_model

    return resolve_base_model(BUNDLED_SMOLLM2_ID, "bundled:smollm2", tmp_path_factory.mktemp("smollm2")).local_dir


def seed_converted_smollm2(converted: Path, settings: Settings) -> None:
    """The converted SmolLM2 in a service's worker cache, hard-linked (the
    folder is only ever read), where a worker's resolve finds it done."""
    target = settings.work_dir / "base-models" / converted.name
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(converted, target, copy_function=os.link)
