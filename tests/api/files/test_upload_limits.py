"""Uploads over the size limit, stalled and trickled uploads, over raw sockets.

Raw sockets because what matters here is what an HTTP library hides: when the
answer arrives relative to the bytes sent, and whether the server closes the
connection instead of reading (and discarding) the rest of a refused body.
"""

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from itertools import chain
from pathlib import Path

import boto3
import httpx
import pytest

from domain.settings import Settings
from tests.api.files.test_endpoints import MULTIPART, multipart_body
from tests.chat_data import chat_example, chat_jsonl
from tests.conftest import STARTUP_TIMEOUT, answers_healthz, free_port, running_service, service_settings, wait_for

MIB = 1024 * 1024
BOUNDARY = MULTIPART.split("boundary=", 1)[1]
REPO_ROOT = Path(__file__).resolve().parents[3]


# ------------------------------------------------------------- raw HTTP helpers


def request_head(path: str, key: str, framing: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: {MULTIPART}\r\n{framing}\r\n\r\n"
    ).encode()


def file_preamble(filename: str = "big.jsonl") -> bytes:
    """The multipart body up to the first byte of the file's content."""
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/jsonl\r\n\r\n"
    ).encode()


def jsonl_blocks(total_bytes: int, block_bytes: int = MIB) -> Iterator[bytes]:
    """Valid fine-tune lines, generated as they are sent, in blocks of ~block_bytes."""
    sent, i = 0, 0
    while sent < total_bytes:
        lines = []
        size = 0
        while size < block_bytes:
            line = json.dumps(chat_example(i)).encode() + b"\n"
            lines.append(line)
            size += len(line)
            i += 1
        block = b"".join(lines)
        sent += len(block)
        yield block


def chunked(pieces: Iterator[bytes]) -> Iterator[bytes]:
    """HTTP/1.1 chunked framing, without the final zero-length chunk."""
    for piece in pieces:
        yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"


def send_until_answered(sock: socket.socket, pieces: Iterator[bytes], stall_timeout: float = 30.0) -> int:
    """Send `pieces` until the server answers or stops taking bytes; return the
    bytes the socket accepted. Fails if the server neither reads nor answers."""
    sock.setblocking(False)
    sent = 0
    try:
        for piece in pieces:
            view = memoryview(piece)
            while view:
                readable, writable, _ = select.select([sock], [sock], [], stall_timeout)
                if readable:
                    return sent  # the answer (or the close) is here: stop sending
                if not writable:
                    raise AssertionError(f"the server neither read nor answered for {stall_timeout}s")
                try:
                    n = sock.send(view)
                except (BrokenPipeError, ConnectionResetError):
                    return sent  # the server closed the connection after answering
                sent += n
                view = view[n:]
        return sent
    finally:
        sock.setblocking(True)


def read_response(sock: socket.socket, timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length body: status, headers, body."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a complete response: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed inside the response body: {body!r}")
        body += chunk
    return int(status_line.split()[1]), headers, body[:length]


def closed_by_server(sock: socket.socket, timeout: float = 10.0) -> bool:
    """True once the server has closed the connection (EOF or reset); no further
    response may arrive in between."""
    sock.settimeout(timeout)
    try:
        extra = sock.recv(65536)
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    assert extra == b"", f"unexpected bytes after the response: {extra[:200]!r}"
    return True


def assert_openai_error(body: bytes, code: str) -> dict:
    error = json.loads(body)["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "file"
    assert error["code"] == code
    return error


# ------------------------------------------------- memory, as a separate process


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def reset_peak_rss(pid: int) -> bool:
    """Make VmHWM (peak RSS) start again from the current RSS (Linux >= 4.0)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return rss_kib(pid, "VmHWM") <= rss_kib(pid, "VmRSS") + 1024


# The limit for the separate server, and how much the tests offer beyond it.
SERVER_LIMIT = 32 * MIB
CHUNKED_OFFER = 200 * MIB
DECLARED_LENGTH = 10 * 1024**3
# What a refusal may legitimately cost is set by the limit, not by the bytes
# sent: the validator's compact per-example arrays for up to SERVER_LIMIT of
# lines (~170k here) and allocator fragmentation around them, the ~1 MiB step
# being gathered and its joined copy, the multipart parser, uvicorn's 64 KiB
# read buffer. Measured: 11-17 MiB over runs (5-7 MiB with an 8 MiB limit).
# The bound is below SERVER_LIMIT, so a server that kept the accepted part of
# the file in memory fails (tried: 46 MiB), let alone one that read all 200 MiB.
RSS_GROWTH_BOUND = 28 * MIB
# Bytes a client can get into the connection before the answer shows: the
# limit plus multipart overhead, plus what the kernel buffers at both ends of a
# loopback connection (a few MiB each way). Far below CHUNKED_OFFER.
EARLY_ANSWER_BOUND = SERVER_LIMIT + 32 * MIB


@pytest.fixture
def server_process(tmp_path):
    data_dir = tmp_path / "data"
    port = free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("TUNEHOUSE_")}
    env["TUNEHOUSE_MAX_UPLOAD_BYTES"] = str(SERVER_LIMIT)
    log = open(tmp_path / "serve.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--no-worker", "--port", str(port), "--data-dir", str(data_dir)],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    try:
        wait_for(
            lambda: answers_healthz(f"http://127.0.0.1:{port}", process), STARTUP_TIMEOUT,
            "tunehouse serve to answer /healthz (its log: serve.log in the test's tmp dir)",
        )
        key = (data_dir / "admin-key").read_text().strip()
        yield process, port, key, data_dir
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.mark.slow
def test_oversized_uploads_are_refused_early_with_flat_memory(server_process):
    process, port, key, data_dir = server_process
    base_url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {key}"}

    # Warm-up: one accepted upload a little under the limit walks the same
    # code (worker threads, parser, validator, storage) the refusals will.
    warm = b"".join(jsonl_blocks(SERVER_LIMIT - 2 * MIB))
    with httpx.Client(base_url=base_url, headers=headers, timeout=60) as client:
        response = client.post("/v1/files", data={"purpose": "fine-tune"}, files={"file": ("warm.jsonl", warm)})
        assert response.status_code == 200, response.text
        assert client.delete(f"/v1/files/{response.json()['id']}").status_code == 200
    baseline = rss_kib(process.pid) * 1024
    peak_is_fresh = reset_peak_rss(process.pid)

    # (a) Chunked, no Content-Length: 200 MiB of lines offered, one MiB at a time.
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request_head("/v1/files", key, "Transfer-Encoding: chunked"))
        chunked_sent = send_until_answered(sock, chunked(chain([file_preamble()], jsonl_blocks(CHUNKED_OFFER))))
        status, response_headers, body = read_response(sock)
        assert status == 413, body
        assert_openai_error(body, "file_too_large")
        # Answered as soon as the limit was crossed, not after reading 200 MiB...
        assert SERVER_LIMIT < chunked_sent < EARLY_ANSWER_BOUND, chunked_sent
        # ...and the server does not go on reading the rest of the body.
        assert response_headers.get("connection") == "close"
        assert closed_by_server(sock)
    after_chunked = rss_kib(process.pid) * 1024

    # (b) Content-Length of 10 GiB: refused before the body is read at all.
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request_head("/v1/files", key, f"Content-Length: {DECLARED_LENGTH}"))
        first = file_preamble() + next(jsonl_blocks(64 * 1024, 64 * 1024))
        sock.sendall(first)
        status, response_headers, body = read_response(sock)  # sending nothing more
        assert status == 413, body
        assert_openai_error(body, "file_too_large")
        assert response_headers.get("connection") == "close"
        more = send_until_answered(sock, jsonl_blocks(64 * MIB))
        assert closed_by_server(sock)
    declared_sent = len(first) + more

    peak = rss_kib(process.pid, "VmHWM" if peak_is_fresh else "VmRSS") * 1024
    growth = max(peak, after_chunked, rss_kib(process.pid) * 1024) - baseline
    print(
        f"\nRSS baseline {baseline / MIB:.1f} MiB, growth {growth / MIB:.1f} MiB "
        f"({'peak' if peak_is_fresh else 'sampled'}); sent {chunked_sent} bytes chunked (of "
        f"{CHUNKED_OFFER // MIB} MiB offered, limit {SERVER_LIMIT}), {declared_sent} bytes after a declared 10 GiB"
    )
    assert growth < RSS_GROWTH_BOUND, f"RSS grew by {growth / MIB:.1f} MiB"

    # Nothing of either refused upload stays: no object, no temp file, no row.
    assert [p for p in (data_dir / "artifacts").rglob("*") if p.is_file()] == []
    with httpx.Client(base_url=base_url, headers=headers, timeout=60) as client:
        assert client.get("/v1/files").json()["data"] == []


# ------------------------------------------------------ stalled and slow uploads

IDLE_TIMEOUT = 1.0
# Over one S3 part (8 MiB), so the S3 writer has a multipart upload open when
# the client stalls; the limit leaves room for it.
PARTIAL_FILE_BYTES = 10 * MIB
IMPATIENT_LIMIT = 16 * MIB


@pytest.fixture(scope="module", params=["sqlite-local", "postgres-s3"])
def impatient_service(request, tmp_path_factory):
    settings = service_settings(
        request.param, tmp_path_factory.mktemp(f"impatient-{request.param}"), request, upload_idle_timeout=IDLE_TIMEOUT
    ).model_copy(update={"max_upload_bytes": IMPATIENT_LIMIT})
    with running_service(request.param, settings) as running:
        yield running


class Leftovers:
    """What an upload of `user_id` may leave in the service's storage."""

    def __init__(self, service, user_id: int):
        self.service = service
        self.user_id = user_id
        self.storage = service.state.storage
        if service.name == "postgres-s3":
            self.s3 = boto3.client("s3", endpoint_url=service.settings.s3_endpoint_url)
            self.object_prefix = f"{self.storage.prefix}/files/{user_id}/"

    def temp_files(self) -> list[Path]:
        """In-flight temp files of the local writer, anywhere in the data dir."""
        return [p for p in self.service.settings.data_dir.rglob(".tmp-*") if p.is_file()]

    def multipart_uploads(self) -> list[str]:
        """Open (neither completed nor aborted) S3 multipart uploads of the user."""
        uploads = self.s3.list_multipart_uploads(Bucket=self.storage.bucket).get("Uploads", [])
        return [u["Key"] for u in uploads if u["Key"].startswith(self.object_prefix)]

    def partial_upload_exists(self, file_bytes: int) -> bool:
        if self.service.name == "sqlite-local":
            return any(p.stat().st_size >= min(file_bytes, MIB) for p in self.temp_files())
        return bool(self.multipart_uploads())

    def nothing(self) -> bool:
        if self.storage.list_keys(f"files/{self.user_id}"):
            return False
        if self.service.name == "sqlite-local":
            return not self.temp_files()
        return not self.multipart_uploads()


def start_partial_upload(service, user, file_bytes: int) -> socket.socket:
    """Headers announcing a whole upload, then only its first `file_bytes` of file."""
    content = b"".join(jsonl_blocks(PARTIAL_FILE_BYTES + 2 * MIB))
    body = file_preamble() + content + f"\r\n--{BOUNDARY}--\r\n".encode()
    port = int(service.base_url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(request_head("/v1/files", user.key, f"Content-Length: {len(body)}"))
    sock.sendall(body[: len(file_preamble()) + file_bytes])
    return sock


@pytest.mark.parametrize("file_bytes", [0, PARTIAL_FILE_BYTES], ids=["no-file-bytes", "10MiB-of-file"])
def test_stalled_upload_gets_408_and_leaves_nothing_behind(impatient_service, file_bytes):
    service = impatient_service
    user = service.make_user("staller")
    leftovers = Leftovers(service, user.id)
    with start_partial_upload(service, user, file_bytes) as sock:
        if service.name == "sqlite-local" or file_bytes > 8 * MIB:
            # The partial object exists while the client stalls (the temp file;
            # on S3 an open multipart upload, once a whole part has gone out)...
            wait_for(lambda: leftovers.partial_upload_exists(file_bytes), 30, "the partial upload to reach storage")
        # ...until the idle timeout: the client is still connected, so it is told.
        status, headers, body = read_response(sock, timeout=30)
        assert status == 408, body
        error = assert_openai_error(body, "upload_timeout")
        assert f"{IDLE_TIMEOUT:g} seconds" in error["message"]
        assert headers.get("connection") == "close"
        assert closed_by_server(sock)
    # The writer is aborted before the answer is sent: nothing to wait for.
    assert leftovers.nothing()
    with service.client(user.key) as client:
        assert client.get("/v1/files").json()["data"] == []


def test_upload_interrupted_after_a_part_went_out_leaves_nothing_behind(impatient_service):
    service = impatient_service
    user = service.make_user("quitter")
    leftovers = Leftovers(service, user.id)
    with start_partial_upload(service, user, PARTIAL_FILE_BYTES):
        wait_for(lambda: leftovers.partial_upload_exists(PARTIAL_FILE_BYTES), 30, "the partial upload to reach storage")
    # Closed well within the idle timeout: cleanup comes from the disconnect.
    wait_for(leftovers.nothing, 10, "the partial upload to be removed")
    with service.client(user.key) as client:
        assert client.get("/v1/files").json()["data"] == []


def test_slow_but_steady_upload_succeeds(impatient_service):
    """The idle timeout is per piece of the body, not for the whole upload."""
    service = impatient_service
    user = service.make_user("trickler")
    content = chat_jsonl(40)
    body = multipart_body([("purpose", None, b"fine-tune"), ("file", "slow.jsonl", content)])
    pieces = 10
    gap = IDLE_TIMEOUT / 4
    size = -(-len(body) // pieces)

    def trickle() -> Iterator[bytes]:
        for start in range(0, len(body), size):
            if start:
                time.sleep(gap)  # the client's pace, the behaviour under test (not synchronisation)
            yield body[start : start + size]

    started = time.monotonic()
    with service.client(user.key) as client:
        response = client.post("/v1/files", content=trickle(), headers={"Content-Type": MULTIPART})
        elapsed = time.monotonic() - started
        assert response.status_code == 200, response.text
        assert elapsed > 2 * IDLE_TIMEOUT  # longer in total than the timeout, several times over
        file_id = response.json()["id"]
        assert response.json()["bytes"] == len(content)
        assert client.get(f"/v1/files/{file_id}/content").content == content
    assert service.state.storage.list_keys(f"files/{user.id}") == [f"files/{user.id}/{file_id}"]


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_upload_idle_timeout_must_be_positive(monkeypatch, tmp_path, value):
    monkeypatch.setenv("TUNEHOUSE_UPLOAD_IDLE_TIMEOUT", value)
    with pytest.raises(ValueError, match="TUNEHOUSE_UPLOAD_IDLE_TIMEOUT must be positive"):
        Settings(data_dir=tmp_path)


def test_upload_idle_timeout_is_read_from_the_environment_and_passed_on(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNEHOUSE_UPLOAD_IDLE_TIMEOUT", "2.5")
    settings = Settings(data_dir=tmp_path)
    assert settings.upload_idle_timeout == 2.5
    assert settings.as_env()["TUNEHOUSE_UPLOAD_IDLE_TIMEOUT"] == "2.5"
    monkeypatch.delenv("TUNEHOUSE_UPLOAD_IDLE_TIMEOUT")
    assert Settings(data_dir=tmp_path).upload_idle_timeout == 60.0
