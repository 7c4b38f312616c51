"""The fixed cost of a fine-tuning job: what a job costs beyond its training
steps, measured the way the test suite pays it (tiny model, embedded mode).

    .venv/bin/python bench/job_overhead.py [--jobs 6]

Starts `tunehouse serve` (embedded: SQLite, filesystem broker, local
storage, a training and an inference worker) with a tiny random Llama (the
test suite's, SmolLM2's tokenizer) as a base model, then runs jobs one after
another, each on 8 examples for 1 epoch of 1 step (so training itself is a
few milliseconds), and reports per job:

- `job`: wall time from the create request to the job's `succeeded`, seen by
  polling every 20 ms: queueing, the worker's process, loading the data, the
  tokenizer and the model, the step, the artifacts, the database writes;
- `evaluation`: from the job's success to its automatic evaluation's (base
  vs fine-tune on the 4 held-out examples, 16 tokens each);
- `events` and `objects`: the job's event rows and the storage objects under
  its prefix (each a commit or an upload the job pays for).

The first job is reported apart (it converts nothing, but pays the worker's
first imports). The script runs against the tree it sits in, or the one
named by PYTHONPATH: to measure an older checkout, run this script from that
checkout's folder with `PYTHONPATH=<that checkout>` (the server subprocess
inherits both).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from batch_inference import wait_until  # this folder is on sys.path when a script here runs

if not os.environ.get("PYTHONPATH"):  # else PYTHONPATH names the tree to measure
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TINY = "tiny-llama"
POLL = 0.02


def chat_lines(n: int, test: int) -> bytes:
    lines = []
    for i in range(n):
        animal = ["cat", "dog", "cow", "owl"][i % 4]
        lines.append({
            "messages": [
                {"role": "user", "content": f"What sound does a {animal} make? ({i})"},
                {"role": "assistant", "content": {"cat": "Meow.", "dog": "Woof.", "cow": "Moo.", "owl": "Hoot."}[animal]},
            ],
            "split": "TEST" if i < test else "TRAIN",
        })
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=6)
    args = parser.parse_args()

    from tests.tiny_model import build_tiny_llama, save_smollm2_tokenizer

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = build_tiny_llama(tmp / "tiny", save_smollm2_tokenizer(tmp / "tokenizer"))
        port = 18000 + os.getpid() % 1000
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEHOUSE_")} | {
            "TUNEHOUSE_DATA_DIR": str(tmp / "data"),
            "TUNEHOUSE_BASE_MODELS": json.dumps({TINY: f"path:{model}"}),
            "TUNEHOUSE_MAX_COMPLETION_TOKENS": "16",
        }
        server = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "serve", "--port", str(port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until(lambda: _healthy(base), 120, "the service", POLL)
            key = wait_until(lambda: (tmp / "data" / "admin-key").exists() and (tmp / "data" / "admin-key").read_text().strip(),
                             300, "the admin key", POLL)
            client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60)
            file_id = client.post(
                "/v1/files", data={"purpose": "fine-tune"}, files={"file": ("t.jsonl", chat_lines(12, 4), "application/jsonl")}
            ).json()["id"]
            rows = [_one_job(client, file_id, tmp / "data" / "artifacts") for _ in range(args.jobs)]
        finally:
            server.terminate()
            server.wait(60)
    first, rest = rows[0], rows[1:]
    print(f"first job: job {first['job']:.2f} s, evaluation {first['evaluation']:.2f} s")
    for name in ("job", "evaluation"):
        values = [row[name] for row in rest]
        print(f"{name}: median {statistics.median(values):.2f} s (min {min(values):.2f}, max {max(values):.2f}) over {len(values)} jobs")
    print(f"events per job: {statistics.median(row['events'] for row in rest):.0f}; "
          f"storage objects per job: {statistics.median(row['objects'] for row in rest):.0f}")


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _one_job(client: httpx.Client, file_id: str, artifacts: Path) -> dict:
    started = time.monotonic()
    job = client.post(
        "/v1/fine_tuning/jobs",
        json={"model": TINY, "training_file": file_id, "hyperparameters": {"n_epochs": 1, "batch_size": 8}},
    ).json()

    def done():
        current = client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
        return current if current["status"] in ("succeeded", "failed", "cancelled") else None

    finished = wait_until(done, 300, "the job to end", POLL)
    assert finished["status"] == "succeeded", finished["error"]
    job_seconds = time.monotonic() - started

    def evaluated():
        current = client.get(f"/v1/evaluations/{finished['evaluation_id']}").json()
        return current if current["status"] in ("succeeded", "failed", "cancelled") else None

    evaluation = wait_until(evaluated, 300, "its evaluation to end", POLL)
    assert evaluation["status"] == "succeeded", evaluation
    events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", params={"limit": 1000}).json()["data"]
    objects = sum(1 for path in (artifacts / "jobs" / job["id"]).rglob("*") if path.is_file())
    return {
        "job": job_seconds,
        "evaluation": time.monotonic() - started - job_seconds,
        "events": len(events),
        "objects": objects,
    }


if __name__ == "__main__":
    main()
