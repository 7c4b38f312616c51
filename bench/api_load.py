"""List/get requests under 10 to 200 concurrent clients, in both modes.

    .venv/bin/python bench/api_load.py [--modes sqlite,postgres] [--levels 10,30,100,200] [--duration 10]

For each mode the script starts the service itself, on a free port of
127.0.0.1, in a temporary data directory:

- `sqlite`: embedded mode, `tunehouse serve` (SQLite file, filesystem broker,
  local artifacts, a training and an inference worker beside the API);
- `postgres`: `tunehouse serve --no-worker` on a new PostgreSQL database
  (dropped afterwards) with a Redis broker (`--redis-db`, emptied before and
  after; the test suite never uses db 15).

It creates a user `bench` (`tunehouse keys create`) with a few fine-tune files
and jobs, so that the lists are not empty (in embedded mode the jobs are
created before the workers start and cancelled at once, so no training runs
during the measurement), waits until the service's processes are idle, then
runs each level: that many clients, each on its own keep-alive connection,
sending `GET /v1/files`, `/v1/fine_tuning/jobs`, `/v1/models` and
`/v1/files/{id}` in turn for `--duration` seconds (closed loop: a client
sends its next request when the last one is answered, after `--think`
seconds). The clients are a small hand-written HTTP/1.1 client on asyncio, so
that the load generator, which shares the machine's cores with the service,
costs as little as possible. Bounded: loopback only, at most `--max-requests`
requests per level, each given up after `--timeout` seconds.

Printed per mode and level: requests answered, throughput, its ratio to the
first level's, p50/p99/max latency and the count of each status. The API
key's rate limit is raised out of the way (TUNEHOUSE_RATE_LIMIT_PER_MINUTE),
not turned off, so each request still pays for counting. The script runs
against whatever tree is first on `sys.path`: to measure another checkout, run
it from there with `PYTHONPATH=<that checkout>` (the server inherits it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
EXAMPLE = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
POSTGRES_ADMIN_URL = os.environ.get("TUNEHOUSE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_SERVER = os.environ.get("TUNEHOUSE_TEST_REDIS", "redis://127.0.0.1:6379")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------ the service


@dataclass
class Service:
    mode: str
    base_url: str
    data_dir: Path
    env: dict[str, str]
    log: Path
    process: subprocess.Popen | None = None

    def start(self, *, workers: bool) -> None:
        port = self.base_url.rsplit(":", 1)[1]
        command = [sys.executable, "-m", "api.cli", "serve", "--port", port, "--data-dir", str(self.data_dir)]
        if not workers:
            command.append("--no-worker")
        with self.log.open("ab") as log:
            # A process group of its own: stopping it stops the workers too.
            self.process = subprocess.Popen(command, env=self.env, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tunehouse serve exited with {self.process.returncode}; see {self.log}")
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError("tunehouse serve did not become healthy in 120 s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)  # serve stops its workers, then exits
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def create_key(self, user: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "api.cli", "keys", "create", "--user", user, "--data-dir", str(self.data_dir)],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        )
        return result.stdout.strip().splitlines()[-1]

    def wait_idle(self, max_wait: float = 120.0, cpu_share: float = 0.05) -> float:
        """Wait until the service's processes (API and workers) use less than
        `cpu_share` of a core over a second: worker start-up (imports) must
        not be measured. Returns the seconds waited."""
        import psutil

        assert self.process is not None
        started = time.monotonic()
        root = psutil.Process(self.process.pid)

        def cpu_seconds() -> float:
            total = 0.0
            for proc in [root, *root.children(recursive=True)]:
                try:
                    times = proc.cpu_times()
                    total += times.user + times.system
                except psutil.Error:
                    pass
            return total

        while time.monotonic() - started < max_wait:
            before = cpu_seconds()
            time.sleep(1.0)
            if cpu_seconds() - before < cpu_share:
                break
        return time.monotonic() - started

    def api_cpu_seconds(self) -> float:
        """CPU time of the API (the `serve` process itself, not its workers)."""
        import psutil

        assert self.process is not None
        times = psutil.Process(self.process.pid).cpu_times()
        return times.user + times.system

    def log_count(self, text: str) -> int:
        return self.log.read_text(errors="replace").count(text)


@contextmanager
def postgres_database():
    import psycopg

    name = f"tunehouse_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def redis_db(db: int):
    import redis

    url = f"{REDIS_SERVER}/{db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


def seed(service: Service, key: str, files: int, jobs: int, cancel_jobs: bool) -> list[str]:
    """A few fine-tune files and jobs of the bench user; returns the file ids."""
    body = "".join(json.dumps(EXAMPLE) + "\n" for _ in range(20)).encode()
    file_ids = []
    with httpx.Client(base_url=service.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        for i in range(files):
            response = client.post(
                "/v1/files", data={"purpose": "fine-tune"}, files={"file": (f"train-{i}.jsonl", body)}
            )
            response.raise_for_status()
            file_ids.append(response.json()["id"])
        for i in range(jobs):
            response = client.post(
                "/v1/fine_tuning/jobs",
                json={"model": BASE_MODEL, "training_file": file_ids[i % len(file_ids)], "suffix": f"bench{i}"},
            )
            response.raise_for_status()
            if cancel_jobs:
                client.post(f"/v1/fine_tuning/jobs/{response.json()['id']}/cancel").raise_for_status()
    return file_ids


# ------------------------------------------------------------------ the clients


class Connection:
    """One keep-alive HTTP/1.1 connection; GET only, small JSON answers."""

    def __init__(self, host: str, port: int, key: str):
        self.host, self.port = host, port
        self.auth = f"Authorization: Bearer {key}\r\n"
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        reader = self.reader
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n{self.auth}\r\n".encode("latin-1"))
        status_line = await reader.readline()
        if not status_line:
            raise ConnectionError("connection closed by the server")
        status = int(status_line.split()[1])
        length, chunked, close = None, False, False
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value
            elif name == b"connection":
                close = value == b"close"
        if chunked:
            while True:
                size = int((await reader.readline()).split(b";")[0], 16)
                await reader.readexactly(size + 2)
                if size == 0:
                    break
        elif length is not None:
            await reader.readexactly(length)
        else:
            await reader.read()
            close = True
        if close:
            await self.close()
        return status

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
        self.reader = self.writer = None


@dataclass
class LevelResult:
    clients: int
    latencies: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    elapsed: float = 0.0
    # CPU seconds the API process used during the level (user + system).
    api_cpu: float = 0.0

    @property
    def cpu_per_request_ms(self) -> float:
        return self.api_cpu / self.answered * 1000 if self.answered else float("nan")

    @property
    def answered(self) -> int:
        return len(self.latencies)

    @property
    def throughput(self) -> float:
        return self.answered / self.elapsed if self.elapsed else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    def status_text(self) -> str:
        return ", ".join(f"{status}: {count}" for status, count in sorted(self.statuses.items(), key=lambda kv: str(kv[0])))


async def run_level(
    base_url: str, key: str, paths: list[str], clients: int, duration: float, think: float, timeout: float, max_requests: int
) -> LevelResult:
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    result = LevelResult(clients)
    started = time.perf_counter()
    deadline = started + duration
    sent = 0

    async def client(index: int) -> None:
        nonlocal sent
        connection = Connection(host, int(port), key)
        i = index  # clients start at different points of the mix
        rng = random.Random(index)
        if think:  # paced clients start spread out, not all at once
            await asyncio.sleep(rng.uniform(0, think))
        try:
            while time.perf_counter() < deadline and sent < max_requests:
                sent += 1
                path = paths[i % len(paths)]
                i += 1
                begin = time.perf_counter()
                try:
                    status: int | str = await asyncio.wait_for(connection.get(path), timeout)
                except asyncio.TimeoutError:
                    status = "timeout"
                    await connection.close()
                except (OSError, ConnectionError, ValueError, asyncio.IncompleteReadError) as exc:
                    status = f"error:{type(exc).__name__}"
                    await connection.close()
                end = time.perf_counter()
                result.statuses[status] += 1
                if isinstance(status, int):
                    result.latencies.append(end - begin)
                if think:  # on average `think`, jittered: arrivals do not fall into step
                    await asyncio.sleep(rng.uniform(0.5 * think, 1.5 * think))
        finally:
            await connection.close()

    await asyncio.gather(*(client(i) for i in range(clients)))
    # Until the last client is done: a request sent just before the deadline
    # and answered (or given up) long after it counts in the level's time.
    result.elapsed = time.perf_counter() - started
    return result


# ------------------------------------------------------------------ one mode


def measure_mode(mode: str, args, tmp: Path) -> tuple[list[LevelResult], dict]:
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEHOUSE_")}
    # Counted (a Redis call per request in production), never reached.
    base_env["TUNEHOUSE_RATE_LIMIT_PER_MINUTE"] = "100000000"
    for setting in args.setting:
        name, _, value = setting.partition("=")
        base_env[f"TUNEHOUSE_{name.upper()}"] = value
    data_dir = tmp / mode
    data_dir.mkdir()
    service = Service(mode, f"http://127.0.0.1:{free_port()}", data_dir, base_env, tmp / f"{mode}.log")
    with ExitStack() as stack:
        if mode == "postgres":
            database_url = stack.enter_context(postgres_database())
            broker_url = stack.enter_context(redis_db(args.redis_db))
            service.env = {**base_env, "TUNEHOUSE_DATABASE_URL": database_url, "TUNEHOUSE_BROKER_URL": broker_url}
        workers = mode == "sqlite"
        try:
            # Seeded without workers: in embedded mode the jobs are cancelled
            # before any worker exists, so none trains during the measurement.
            service.start(workers=False)
            key = service.create_key("bench")
            file_ids = seed(service, key, args.files, args.jobs, cancel_jobs=workers)
            if workers:
                service.stop()
                service.start(workers=True)
            idle_wait = service.wait_idle()
            paths = ["/v1/files", "/v1/fine_tuning/jobs", "/v1/models", f"/v1/files/{file_ids[0]}"]
            results = asyncio.run(_levels(service.base_url, key, paths, args, service.api_cpu_seconds))
        finally:
            service.stop()
        notes = {
            "idle_wait_s": idle_wait,
            "pool_timeouts_in_log": service.log_count("sqlalchemy.exc.TimeoutError"),
            "log": str(service.log),
        }
        return results, notes


async def _levels(base_url: str, key: str, paths: list[str], args, api_cpu_seconds) -> list[LevelResult]:
    # Warm-up (not reported): imports, first queries, pool connections.
    await run_level(base_url, key, paths, min(args.levels), args.warmup, 0.0, args.timeout, args.max_requests)
    results = []
    for clients in args.levels:
        cpu_before = api_cpu_seconds()
        result = await run_level(base_url, key, paths, clients, args.duration, args.think, args.timeout, args.max_requests)
        result.api_cpu = api_cpu_seconds() - cpu_before
        results.append(result)
        print(f"  {clients} clients: {format_row(results[-1], results[0])}", flush=True)
        await asyncio.sleep(args.pause)
    return results


# ------------------------------------------------------------------ report


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def format_row(result: LevelResult, first: LevelResult) -> str:
    ratio = result.throughput / first.throughput if first.throughput else float("nan")
    return (
        f"{result.answered} answered, {result.throughput:.1f} req/s (x{ratio:.2f} of {first.clients} clients), "
        f"p50 {ms(result.percentile(50))}, p99 {ms(result.percentile(99))}, max {ms(max(result.latencies, default=0))}, "
        f"API CPU {result.cpu_per_request_ms:.2f} ms/request; {result.status_text()}"
    )


def markdown(mode: str, results: list[LevelResult], notes: dict) -> str:
    lines = [
        f"| {mode} | clients | answered | req/s | / {results[0].clients} clients | p50 | p99 | max | API CPU / request | statuses |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        ratio = result.throughput / results[0].throughput if results[0].throughput else float("nan")
        lines.append(
            f"| | {result.clients} | {result.answered} | {result.throughput:.1f} | {ratio:.2f} | "
            f"{ms(result.percentile(50))} | {ms(result.percentile(99))} | {ms(max(result.latencies, default=0))} | "
            f"{result.cpu_per_request_ms:.2f} ms | {result.status_text()} |"
        )
    lines.append(f"\npool checkout timeouts (sqlalchemy.exc.TimeoutError) in the server log: {notes['pool_timeouts_in_log']}")
    lines.append(f"machine load average (1 min): {notes['load']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    parser.add_argument("--levels", default="10,30,100,200", help="concurrent clients per level, comma-separated")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds each level sends requests")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up before the first level")
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between levels")
    parser.add_argument(
        "--think", type=float, default=0.0,
        help="seconds a client waits between its requests (on average; paced clients start spread out)",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="a request not answered in this time counts as 'timeout'")
    parser.add_argument("--max-requests", type=int, default=50_000, help="at most this many requests per level")
    parser.add_argument("--files", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--redis-db", type=int, default=15, help="Redis db of the postgres mode's broker (emptied)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (server logs)")
    parser.add_argument(
        "--setting", action="append", default=[], metavar="NAME=VALUE",
        help="a setting of the service, e.g. db_pool_size=4 (TUNEHOUSE_DB_POOL_SIZE); repeatable",
    )
    args = parser.parse_args()
    args.levels = [int(level) for level in args.levels.split(",")]
    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    for mode in modes:
        if mode not in ("sqlite", "postgres"):
            parser.error(f"unknown mode {mode!r}")

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    tmp = Path(tempfile.mkdtemp(prefix="tunehouse-load-"))
    reports = []
    try:
        for mode in modes:
            print(f"{mode}: starting the service", flush=True)
            load_before = os.getloadavg()[0]
            results, notes = measure_mode(mode, args, tmp)
            # The machine's other work competes for the same cores: say how busy it was.
            notes["load"] = f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
            print(f"{mode}: waited {notes['idle_wait_s']:.0f} s for an idle service before measuring", flush=True)
            reports.append(markdown(mode, results, notes))
    finally:
        if args.keep:
            print(f"logs kept in {tmp}")
        else:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"\n{args.duration:g} s per level, think time {args.think:g} s, "
        f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}\n"
    )
    print("\n\n".join(reports))


if __name__ == "__main__":
    main()
