"""Shared fixtures: real PostgreSQL, Redis, moto's S3 server and a real uvicorn.

The API suite runs twice: on the embedded parts (SQLite + local directory) and
on the production parts (PostgreSQL + S3 over HTTP).
"""

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
import uvicorn
from fastapi import FastAPI

from api.app import create_app
from api.auth.service import create_key, get_or_create_user
from api.db import migrate
from api.settings import Settings
from api.state import AppState

POSTGRES_ADMIN_URL = os.environ.get("TUNEHOUSE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_TEST_URL = os.environ.get("TUNEHOUSE_TEST_REDIS", "redis://127.0.0.1:6379/13")
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


def _service_settings(kind: str, tmp: Path, request) -> Settings:
    if kind == "sqlite-local":
        return Settings(data_dir=tmp, max_upload_bytes=TEST_UPLOAD_LIMIT)
    endpoint = request.getfixturevalue("s3_endpoint")
    return Settings(
        data_dir=tmp,
        database_url=request.getfixturevalue("postgres_url"),
        storage_url=f"s3://{make_bucket(endpoint)}/artifacts",
        s3_endpoint_url=endpoint,
        max_upload_bytes=TEST_UPLOAD_LIMIT,
    )


def start_uvicorn(app, port: int) -> tuple[uvicorn.Server, threading.Thread]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, STARTUP_TIMEOUT, "uvicorn to start")
    return server, thread


@pytest.fixture(scope="session", params=["sqlite-local", "postgres-s3"])
def service(request, tmp_path_factory) -> Iterator[RunningService]:
    settings = _service_settings(request.param, tmp_path_factory.mktemp(request.param), request)
    migrate(settings.database_url)
    app = create_app(settings)
    port = free_port()
    server, thread = start_uvicorn(app, port)
    yield RunningService(
        name=request.param,
        base_url=f"http://127.0.0.1:{port}",
        settings=settings,
        app=app,
        state=app.state.tunehouse,
    )
    server.should_exit = True
    thread.join(timeout=30)


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
