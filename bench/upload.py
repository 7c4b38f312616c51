"""Upload throughput and API memory for a large fine-tune file.

    .venv/bin/python bench/upload.py [--mb 512]

Generates a valid chat JSONL file of the given size, starts `tunehouse serve
--no-worker` on a free port, uploads the file through POST /v1/files, and
prints the upload (= streaming validation) throughput and the API process's
peak RSS growth. The reference is the same bytes read, hashed and written to
disk in this process: what the upload would cost with no parsing or validation.
"""

import argparse
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not found")


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
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tunehouse-bench-") as tmp:
        tmp_dir = Path(tmp)
        data_file = tmp_dir / "train.jsonl"
        size = make_file(data_file, args.mb * 1_000_000)
        print(f"file: {size / 1e6:.0f} MB, {sum(1 for _ in data_file.open('rb'))} lines")
        reference_s = reference_copy(data_file, tmp_dir)

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
                start = time.perf_counter()
                with data_file.open("rb") as handle:
                    response = client.post("/v1/files", data={"purpose": "fine-tune"}, files={"file": ("train.jsonl", handle)})
                elapsed = time.perf_counter() - start
                response.raise_for_status()
                peak = rss_kib(server.pid, "VmHWM")
            report = response.json()["report"]
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)

    upload_mb_s = size / 1e6 / elapsed
    reference_mb_s = size / 1e6 / reference_s
    print(f"examples validated: {report['examples']} (train {report['split']['train']}, test {report['split']['test']})")
    print(f"upload + streaming validation: {elapsed:.1f} s, {upload_mb_s:.1f} MB/s")
    print(f"reference (read + sha256 + write, no validation): {reference_mb_s:.1f} MB/s")
    print(f"ratio upload / reference: {upload_mb_s / reference_mb_s:.2f}")
    print(f"API peak RSS growth during the upload: {(peak - rss_before) / 1024:.1f} MiB (before {rss_before / 1024:.0f} MiB)")


if __name__ == "__main__":
    main()
