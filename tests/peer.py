"""A second tunehouse instance for tests of external endpoints: embedded mode
(its own data dir, SQLite, filesystem broker) serving a tiny Llama, with an
inference worker (and a training worker if asked) and a user with an API key.
It speaks the OpenAI API, so it plays any OpenAI-compatible endpoint: a
connection's target, a hosted provider to move from.

    with running_peer(tmp_path) as peer:               # or running_peer(tmp_path, tiny_model_dir)
        openai.OpenAI(base_url=peer.base_url, api_key=peer.api_key).chat.completions.create(
            model=peer.models[0], messages=[...], max_tokens=8)

The services, workers and tiny model are the suite's own (tests/conftest.py,
tests/e2e.py, tests/tiny_model.py)."""

import collections
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from domain.settings import Settings
from tests.api.files.test_endpoints import upload
from tests.conftest import RunningService, ServiceUser, running_service
from tests.e2e import HEARTBEAT_TIMEOUT, TINY, Workers, start_job, tiny_chat_jsonl
from tests.production.conftest import FaultyProxy

# Long enough for a judge's or a comparison's short answers, small enough to stay fast.
PEER_MAX_TOKENS = 64
# The first request waits for the worker to start and load the tiny model.
WARM_UP_TIMEOUT = 120


@dataclass
class Peer:
    service: RunningService
    user: ServiceUser
    workers: Workers
    models: list[str]  # the model ids it serves (its base models)

    @property
    def base_url(self) -> str:
        """Ends in /v1, as an OpenAI client's base_url does."""
        return f"{self.service.base_url}/v1"

    @property
    def api_key(self) -> str:
        return self.user.key

    @property
    def settings(self) -> Settings:
        return self.service.settings

    def client(self) -> httpx.Client:
        """httpx on the peer's root URL (paths start with /v1), as its user."""
        return self.service.client(self.api_key)

    def upload(self, data: bytes, *, purpose: str = "fine-tune", filename: str = "train.jsonl") -> dict:
        """A file on the peer, as its user; returns the file object."""
        with self.client() as client:
            response = upload(client, data, purpose=purpose, filename=filename)
            assert response.status_code == 200, response.text
            return response.json()

    def create_job(self, data: bytes | None = None, **hyperparameters) -> dict:
        """A fine-tuning job of the tiny model on the peer (uploads `data`,
        default tests.e2e.tiny_chat_jsonl()); it runs only with training=True."""
        with self.client() as client:
            return start_job(client, data if data is not None else tiny_chat_jsonl(), **hyperparameters)


@contextmanager
def running_peer(tmp_path: Path, tiny_model_dir: Path | None = None, *, training: bool = False,
                 **settings_values) -> Iterator[Peer]:
    """A peer on a free loopback port, its worker warmed up (it has answered
    one chat) when the block starts. `tiny_model_dir`: the suite's
    `tiny_model_dir` fixture, else one is built under tmp_path. `training`:
    also a training worker (for jobs on the peer)."""
    root = tmp_path / f"peer-{id(tmp_path):x}"
    if tiny_model_dir is None:
        from tests.tiny_model import build_tiny_llama, save_smollm2_tokenizer

        tiny_model_dir = build_tiny_llama(root / "tiny-llama", save_smollm2_tokenizer(root / "tokenizer"))
    settings = Settings(
        data_dir=root / "data",
        base_models={TINY: f"path:{tiny_model_dir}"},
        heartbeat_timeout=HEARTBEAT_TIMEOUT,
        max_completion_tokens=PEER_MAX_TOKENS,
        inference_queue_timeout=WARM_UP_TIMEOUT,
        **settings_values,
    )
    with running_service("peer", settings) as service:
        workers = Workers(settings)
        try:
            workers.start("inference")
            if training:
                workers.start("default,train")
            peer = Peer(service=service, user=service.make_user("peer"), workers=workers, models=[TINY])
            _warm_up(peer)
            yield peer
        finally:
            workers.stop_all()


def _warm_up(peer: Peer) -> None:
    with httpx.Client(timeout=WARM_UP_TIMEOUT + 10) as client:
        response = client.post(
            f"{peer.base_url}/chat/completions",
            headers={"Authorization": f"Bearer {peer.api_key}"},
            json={"model": peer.models[0], "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
        )
    assert response.status_code == 200, f"the peer did not answer a chat: {response.status_code} {response.text}"


# ------------------------------------------------------------ HTTP faults


class FaultyHttpProxy(FaultyProxy):
    """FaultyProxy (TCP: cut, restore, cut_on) that also answers requests
    itself: `fail_next("429", "500", "stall", "reset")` queues faults, each
    taken by the next request that arrives (in order):
    - "429" / "500" / "503": that status with an OpenAI error body (and
      `Retry-After: {retry_after}` if given), then the connection closes;
    - "stall": the request is swallowed, nothing is ever answered;
    - "reset": the connection is closed at once.
    Requests without a queued fault reach the target. `requests` counts the
    requests seen, `faulted` those answered with a fault."""

    def __init__(self, target_port: int):
        super().__init__(target_port)
        self._faults: collections.deque[tuple[str, float | None]] = collections.deque()
        self.requests = 0
        self.faulted = 0

    def fail_next(self, *faults: str, retry_after: float | None = None) -> None:
        with self._lock:
            self._faults.extend((fault, retry_after) for fault in faults)

    def _pump(self, source, sink, from_client: bool) -> None:
        if from_client:
            sink = _FaultingSink(self, source, sink)
        super()._pump(source, sink, from_client)

    def _take_fault(self, data: bytes) -> tuple[str, float | None] | None:
        if not data.split(b" ", 1)[0] in (b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"PATCH"):
            return None  # the rest of a request already on its way
        with self._lock:
            self.requests += 1
            if not self._faults:
                return None
            self.faulted += 1
            return self._faults.popleft()


class _FaultingSink:
    """The upstream socket as FaultyProxy._pump sees it: requests with a
    queued fault are answered here instead (an OSError ends the pump, which
    closes both sides)."""

    def __init__(self, proxy: FaultyHttpProxy, client, upstream):
        self.proxy, self.client, self.upstream = proxy, client, upstream
        self.stalled = False

    def sendall(self, data: bytes) -> None:
        fault = None if self.stalled else self.proxy._take_fault(data)
        if fault is None:
            if not self.stalled:
                self.upstream.sendall(data)
            return
        kind, retry_after = fault
        if kind == "stall":
            self.stalled = True  # this connection's bytes go nowhere from now on
            return
        if kind == "reset":
            raise OSError("fault injected: reset")
        body = json.dumps({"error": {"message": f"injected {kind}", "type": "server_error", "param": None,
                                     "code": None}}).encode()
        headers = f"Retry-After: {retry_after:g}\r\n" if retry_after is not None else ""
        self.client.sendall(
            f"HTTP/1.1 {kind} Injected\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"{headers}Connection: close\r\n\r\n".encode() + body
        )
        raise OSError(f"fault injected: {kind}")

    def shutdown(self, how) -> None:
        self.upstream.shutdown(how)


@contextmanager
def http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A small HTTP server on loopback (a thread); yields its base URL (ending in /v1)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


class QuietHandler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def send_json(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@contextmanager
def redirecting_server(location: str, status: int = 302) -> Iterator[str]:
    """An HTTP server on loopback answering every request with a redirect
    to `location`; yields its base URL (ending in /v1)."""

    class Redirect(QuietHandler):
        def _redirect(self) -> None:
            self.send_response(status)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = _redirect

    with http_server(Redirect) as url:
        yield url
