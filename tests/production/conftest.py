"""Production mode for real: the API as its own `tunehouse serve --no-worker`
process, separate `tunehouse worker` processes (one training, one
inference), PostgreSQL, a Redis server of the test's own with AOF on (so a
test can crash and restart it), and moto's S3 server reached through a TCP
proxy the tests can cut. Nothing is shared with the rest of the suite."""

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from domain.auth.service import create_key, get_or_create_user
from domain.db import make_engine, make_sessionmaker
from domain.settings import Settings
from tests.conftest import (
    _fail_on_server_error,
    answers_healthz,
    free_port,
    fresh_postgres_database,
    make_bucket,
    wait_for,
)
from tests.e2e import TINY, WORKER_LOGS, Workers

HEARTBEAT_TIMEOUT = 6.0
STARTUP_TIMEOUT = 60.0


class RedisServer:
    """redis-server on its own port and folder, AOF fsynced on every write:
    what a production Redis (compose: --appendonly yes) keeps across a crash."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        WORKER_LOGS.mkdir(parents=True, exist_ok=True)
        with (WORKER_LOGS / f"redis-{self.port}.log").open("ab") as log:
            self.process = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
                 "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
                stdout=log, stderr=subprocess.STDOUT,
            )
        client = redis.Redis.from_url(self.url)
        wait_for(lambda: _pings(client), STARTUP_TIMEOUT, "redis-server to answer")
        client.close()

    def crash(self) -> None:
        """SIGKILL: no shutdown save, only what the AOF already holds survives."""
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


def _pings(client: redis.Redis) -> bool:
    try:
        return client.ping()
    except redis.ConnectionError:
        return False


class FaultyProxy:
    """A TCP proxy in front of a service. `cut()` closes every open connection
    and closes new ones at once (the service is unreachable); `restore()`
    ends that. `cut_on(pattern)` arms a one-shot cut for the moment a client
    sends bytes matching the regex (before they reach the service)."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._cut = False
        self._trigger: re.Pattern | None = None
        self.triggered = threading.Event()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def restore(self) -> None:
        with self._lock:
            self._cut = False

    def cut_on(self, pattern: bytes) -> None:
        self.triggered.clear()
        self._trigger = re.compile(pattern)

    def close(self) -> None:
        self._closed = True
        self.cut()
        self.listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                refused = self._cut
            if refused:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets |= {client, upstream}
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        window = b""
        try:
            while data := source.recv(65536):
                if from_client and self._trigger is not None:
                    window = window[-512:] + data
                    if self._trigger.search(window):
                        self._trigger = None
                        self.triggered.set()
                        self.cut()
                        return
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


class ApiProcess:
    """`tunehouse serve --no-worker`, as the compose file's `api` service runs it."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        WORKER_LOGS.mkdir(parents=True, exist_ok=True)
        with (WORKER_LOGS / f"api-{self.port}-{uuid.uuid4().hex[:6]}.log").open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "api.cli", "serve", "--no-worker", "--port", str(self.port)],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        wait_for(lambda: answers_healthz(self.base_url, self.process), STARTUP_TIMEOUT, "the API to answer /healthz")

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Stack:
    settings: Settings
    api: ApiProcess
    workers: Workers
    redis: RedisServer
    storage_proxy: FaultyProxy
    database_url: str
    training_worker: subprocess.Popen
    inference_worker: subprocess.Popen

    def make_user(self, prefix: str) -> tuple[str, str]:
        """(name, key) of a new user, made as `tunehouse keys create` does."""
        engine = make_engine(self.settings.database_url)
        try:
            with make_sessionmaker(engine)() as session:
                user = get_or_create_user(session, f"{prefix}-{uuid.uuid4().hex[:8]}")
                key = create_key(session, user)
                session.commit()
                return user.name, key
        finally:
            engine.dispose()

    def client(self, key: str, *, fail_on_5xx: bool = True) -> httpx.Client:
        hooks = {"response": [_fail_on_server_error]} if fail_on_5xx else {}
        return httpx.Client(
            base_url=self.api.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60,
            event_hooks=hooks, follow_redirects=True,
        )

    def broker(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis.url)


@pytest.fixture(scope="package")
def stack(tmp_path_factory, tiny_model_dir, s3_endpoint) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("production")
    (tmp / "redis").mkdir()
    redis_server = RedisServer(tmp / "redis")
    redis_server.start()
    proxy = FaultyProxy(int(s3_endpoint.rsplit(":", 1)[1]))
    with fresh_postgres_database("tunehouse_production") as database_url:
        settings = Settings(
            data_dir=tmp / "data",
            database_url=database_url,
            broker_url=redis_server.url,
            storage_url=f"s3://{make_bucket(s3_endpoint)}/artifacts",
            s3_endpoint_url=proxy.url,
            base_models={TINY: f"path:{tiny_model_dir}"},
            heartbeat_timeout=HEARTBEAT_TIMEOUT,
            max_completion_tokens=16,
            storage_retry_delay=0.5,
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEHOUSE_")} | settings.as_env()
        api = ApiProcess(env)
        workers = Workers(settings)
        try:
            api.start()
            training_worker = workers.start("train,default")
            inference_worker = workers.start("inference")
            yield Stack(settings, api, workers, redis_server, proxy, database_url, training_worker, inference_worker)
        finally:
            workers.stop_all()
            api.stop()
            proxy.close()
            redis_server.stop()


@contextmanager
def database_connections_refused(database_url: str) -> Iterator[None]:
    """PostgreSQL goes away for the block: every backend of the database is
    terminated and new connections are refused until the block ends."""
    import psycopg

    from tests.conftest import POSTGRES_ADMIN_URL

    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        try:
            yield
        finally:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
