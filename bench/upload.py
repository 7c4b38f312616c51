"""Upload throughput and API memory for a large fine-tune file.

    .venv/bin/python bench/upload.py [--mb 512]

Generates a valid chat JSONL file of the given size, starts `tunehouse serve
--no-worker` on a free port, uploads the file through POST /v1/files, and
prints the upload (= streaming validation) throughput and the API process's
peak RSS growth.

The reference, measured in the same run just before and just after the
upload: the same multipart body (same file, same `purpose` field, same httpx
client) POSTed to a bare ASGI app served by uvicorn with the settings
`tunehouse serve` uses, which reads the body, hands it in 1 MiB steps to a
worker thread that SHA-256-hashes it and writes it to a file: HTTP, hashing
and a disk write, with no multipart parsing, no validation, no database, no
middleware. It is the ceiling an upload can reach on this machine. The file
read, hashed and written in this process without HTTP is printed too (the
reference of the earlier rows in bench/README.md).
"""

import argparse
import asyncio
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

WORDS = "the a model learns from data to answer questions about tokens weights training evaluation split".split()


def make_file(path: Path, target_bytes: int, seed: int = 0) -> int:
    rng = random.Random(seed)
    written = 0
    i = 0
    with path.open("w", encoding="utf-8") as out:
        while written < target_bytes:
            answer_words = rng.randint(20, 250)  # long-tailed answers, ~1 KB lines on average
            example = {
                "messages": [
                    {"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": f"Question {i}: " + " ".join(rng.choices(WORDS, k=12))},
                    {"role": "assistant", "content": " ".join(rng.choices(WORDS, k=answer_words))},
                ]
            }
            line = json.dumps(example) + "\n"
            out.write(line)
            written += len(line.encode())
            i += 1
    return written


def reference_copy(path: Path, out_dir: Path) -> float:
    """Seconds to read, sha256 and write the file in 1 MiB chunks."""
    start = time.perf_counter()
    digest = hashlib.sha256()
    with path.open("rb") as source, (out_dir / "copy").open("wb") as target:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
            target.write(chunk)
        target.flush()
        os.fsync(target.fileno())
    elapsed = time.perf_counter() - start
    (out_dir / "copy").unlink()
    return elapsed


# --------------------------------------------------------------------------
# The reference server: `bench/upload.py --reference-server PORT DIR`


def reference_app(out_dir: Path):
    """Bare ASGI app: POST reads the body, SHA-256 and writes it in 1 MiB steps
    in a worker thread (as the service does); GET answers 200 (health check)."""

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        received = 0
        if scope["method"] == "POST":
            digest = hashlib.sha256()
            with (out_dir / "upload").open("wb") as target:
                def write(data: bytes) -> None:
                    digest.update(data)
                    target.write(data)

                pending, pending_bytes, more = [], 0, True
                while more:
                    message = await receive()
                    more = message.get("more_body", False)
                    pending.append(message.get("body", b""))
                    pending_bytes += len(pending[-1])
                    received += len(pending[-1])
                    if pending_bytes >= 1 << 20 or not more:
                        await asyncio.to_thread(write, b"".join(pending))
                        pending, pending_bytes = [], 0
        body = json.dumps({"bytes": received}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    return app


def serve_reference(port: int, out_dir: Path) -> None:
    import uvicorn

    # The same uvicorn settings as `tunehouse serve` (api/cli.py): defaults, so
    # the same event loop (uvloop) and HTTP parser (httptools) where installed.
    uvicorn.Server(uvicorn.Config(reference_app(out_dir), host="127.0.0.1", port=port, log_level="warning")).run()


def reference_upload(data_file: Path, tmp_dir: Path) -> float:
    """Seconds to POST the file, as multipart with its purpose, to the reference server."""
    out_dir = tmp_dir / "reference"
    out_dir.mkdir(exist_ok=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, __file__, "--reference-server", str(port), str(out_dir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_healthy(base, server)
        with httpx.Client(base_url=base, timeout=3600) as client:
            client.post("/", data={"purpose": "fine-tune"}, files={"file": ("w.jsonl", b"{}\n" * 1000)}).raise_for_status()
            start = time.perf_counter()
            with data_file.open("rb") as handle:
                response = client.post("/", data={"purpose": "fine-tune"}, files={"file": ("train.jsonl", handle)})
            elapsed = time.perf_counter() - start
            response.raise_for_status()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        (out_dir / "upload").unlink(missing_ok=True)
    return elapsed


# --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not found")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_healthy(base: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("tunehouse serve exited")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("tunehouse serve did not become healthy")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=512, help="size of the generated file in MB (10^6 bytes)")
    parser.add_argument("--reference-server", nargs=2, metavar=("PORT", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference_server:
        serve_reference(int(args.reference_server[0]), Path(args.reference_server[1]))
        return
    load_before = os.getloadavg()

    with tempfile.TemporaryDirectory(prefix="tunehouse-bench-") as tmp:
        tmp_dir = Path(tmp)
        data_file = tmp_dir / "train.jsonl"
        size = make_file(data_file, args.mb * 1_000_000)
        print(f"file: {size / 1e6:.0f} MB, {sum(1 for _ in data_file.open('rb'))} lines")
        copy_s = reference_copy(data_file, tmp_dir)
        reference_before_s = reference_upload(data_file, tmp_dir)

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEHOUSE_")}
        env["TUNEHOUSE_MAX_UPLOAD_BYTES"] = str(4 * 1024**3)
        server = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "serve", "--no-worker", "--port", str(port), "--data-dir", str(tmp_dir / "data")],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_healthy(base, server)
            key = (tmp_dir / "data" / "admin-key").read_text().strip()
            headers = {"Authorization": f"Bearer {key}"}
            with httpx.Client(base_url=base, headers=headers, timeout=3600) as client:
                # Warm-up: the first upload imports and allocates what every upload needs.
                small = tmp_dir / "small.jsonl"
                make_file(small, 20_000, seed=1)
                client.post("/v1/files", data={"purpose": "fine-tune"}, files={"file": small.open("rb")}).raise_for_status()
                rss_before = rss_kib(server.pid, "VmRSS")
                cpu_before = cpu_seconds(server.pid)
                start = time.perf_counter()
                with data_file.open("rb") as handle:
                    response = client.post("/v1/files", data={"purpose": "fine-tune"}, files={"file": ("train.jsonl", handle)})
                elapsed = time.perf_counter() - start
                cpu = cpu_seconds(server.pid) - cpu_before
                response.raise_for_status()
                peak = rss_kib(server.pid, "VmHWM")
            report = response.json()["report"]
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
        reference_after_s = reference_upload(data_file, tmp_dir)

    def mb_s(seconds: float) -> float:
        return size / 1e6 / seconds

    upload_mb_s = mb_s(elapsed)
    reference_mb_s = (mb_s(reference_before_s) + mb_s(reference_after_s)) / 2
    print(f"examples validated: {report['examples']} (train {report['split']['train']}, test {report['split']['test']})")
    print(f"upload + streaming validation: {elapsed:.1f} s, {upload_mb_s:.1f} MB/s "
          f"(API process CPU time {cpu:.1f} s: less than the wall time when it waited for a core or the client)")
    print(f"reference, the same multipart POST to a bare uvicorn app (sha256 + write, no parsing, no validation): "
          f"{mb_s(reference_before_s):.1f} MB/s before, {mb_s(reference_after_s):.1f} MB/s after")
    print(f"ratio upload / reference (mean of the two): {upload_mb_s / reference_mb_s:.2f}")
    print(f"file read + sha256 + write in this process, no HTTP (earlier reference): {mb_s(copy_s):.1f} MB/s")
    print(f"API peak RSS growth during the upload: {(peak - rss_before) / 1024:.1f} MiB (before {rss_before / 1024:.0f} MiB)")
    load_after = os.getloadavg()
    print(f"load average (1/5/15 min): {' '.join(f'{x:.2f}' for x in load_before)} at the start, "
          f"{' '.join(f'{x:.2f}' for x in load_after)} at the end")


if __name__ == "__main__":
    main()
