"""Concurrent chat requests on one inference worker (SmolLM2-135M-Instruct, CPU).

    .venv/bin/python bench/concurrent_chat.py [--chats 8] [--max-tokens 64]

Starts `tunehouse serve` (embedded mode: SQLite, filesystem broker, local
storage, one training and one inference worker) on a free port, warms the
inference worker up (base model loaded, batch budget measured), then measures
through POST /v1/chat/completions, greedy, `max_tokens` 64:

  (1) each of N prompts alone, one after the other: the reference (the
      median latency);
  (2) the same N prompts sent at once, non-streamed: the time until the last
      answer, and the median latency;
  (1) and (2) alternate for --rounds rounds, so that a neighbour's load on a
  shared machine weighs on both alike; the ratio is the median over rounds;
  (3) the same N prompts sent at once, streamed: time to first text and
      until the last answer; each streamed text is compared with its answer
      in (1) and (2);
  (4) one chat request while a batch of 64 lines runs on the same worker.

Goal: (2) within 2x of one alone. Before the shared decode loop, a worker
answered one request at a time, so N requests took about N times one.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from batch_inference import BASE, free_port, prompts, wait_until

REPO = Path(__file__).resolve().parent.parent


def healthy(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/healthz").status_code == 200
    except httpx.TransportError:
        return False


def chat(client: httpx.Client, text: str, max_tokens: int) -> tuple[str, int, float]:
    """(answer, completion tokens, seconds)."""
    started = time.perf_counter()
    response = client.post("/v1/chat/completions", json={
        "model": BASE, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens, "temperature": 0,
    })
    response.raise_for_status()
    body = response.json()
    return body["choices"][0]["message"]["content"], body["usage"]["completion_tokens"], time.perf_counter() - started


def streamed_chat(client: httpx.Client, text: str, max_tokens: int) -> tuple[str, float, float]:
    """(answer, seconds to the first text, seconds to the end)."""
    started = time.perf_counter()
    first, parts = None, []
    body = {"model": BASE, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices", []):
                content = choice["delta"].get("content")
                if content:
                    first = first or time.perf_counter() - started
                    parts.append(content)
    return "".join(parts), first or 0.0, time.perf_counter() - started


def at_once(function, items: list) -> tuple[list, float]:
    """function(item) for every item in its own thread, started together; (results, seconds to the last)."""
    results: list = [None] * len(items)
    barrier = threading.Barrier(len(items) + 1)

    def run(index: int, item) -> None:
        barrier.wait()
        results[index] = function(item)

    threads = [threading.Thread(target=run, args=(index, item)) for index, item in enumerate(items)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return results, time.perf_counter() - started


def start_batch(client: httpx.Client, texts: list[str], max_tokens: int) -> str:
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": BASE, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens,
                       "temperature": 0}} for i, text in enumerate(texts)]
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    file_id = client.post("/v1/files", data={"purpose": "batch"}, files={"file": ("b.jsonl", content)}).json()["id"]
    return client.post("/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                                            "completion_window": "24h"}).json()["id"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chats", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="auto", help="TUNEHOUSE_INFERENCE_DTYPE of the service")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    texts = prompts(args.chats, seed=5)
    with tempfile.TemporaryDirectory(prefix="tunehouse-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEHOUSE_")}
        env.update(TUNEHOUSE_INFERENCE_DTYPE=args.dtype, TUNEHOUSE_RATE_LIMIT_PER_MINUTE="0")
        server = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "serve", "--port", str(port), "--data-dir", str(data_dir)],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        try:
            base_url = f"http://127.0.0.1:{port}"
            wait_until(lambda: (data_dir / "admin-key").exists() and healthy(base_url), 120, "the service")
            key = (data_dir / "admin-key").read_text().strip()
            with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=600) as client:
                chat(client, "Hello", 4)  # warm-up: the base loads and its budget is measured
                at_once(lambda text: chat(client, text, 4), texts)
                rounds = []
                for _ in range(args.rounds):
                    alone = [chat(client, text, args.max_tokens) for text in texts]
                    together, together_seconds = at_once(lambda text: chat(client, text, args.max_tokens), texts)
                    rounds.append((alone, together, together_seconds))
                streamed, streamed_seconds = at_once(lambda text: streamed_chat(client, text, args.max_tokens), texts)
                batch_id = start_batch(client, prompts(64), args.max_tokens)
                wait_until(lambda: client.get(f"/v1/batches/{batch_id}").json()["request_counts"]["completed"] > 0,
                           600, "the batch to answer its first lines", interval=0.05)
                during_batch = chat(client, texts[0], args.max_tokens)
                batch_state = client.get(f"/v1/batches/{batch_id}").json()
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=120)

    print(f"{args.chats} chat requests, max_tokens {args.max_tokens}, greedy, SmolLM2-135M-Instruct on CPU "
          f"(TUNEHOUSE_INFERENCE_DTYPE={args.dtype})")
    ratios = []
    for number, (alone, together, together_seconds) in enumerate(rounds, 1):
        one = statistics.median(seconds for _, _, seconds in alone)
        ratios.append(together_seconds / one)
        print(f"round {number}: (1) one at a time: median latency {one:5.2f} s (min {min(s for *_, s in alone):.2f}, "
              f"max {max(s for *_, s in alone):.2f}), {sum(t for _, t, _ in alone)} tokens; "
              f"(2) {args.chats} at once: last answer after {together_seconds:5.2f} s = {ratios[-1]:.2f}x one alone, "
              f"median latency {statistics.median(s for *_, s in together):.2f} s")
    print(f"(2)/(1) median over {len(rounds)} rounds: {statistics.median(ratios):.2f}x (goal <= 2)")
    alone, together, _ = rounds[-1]
    one = statistics.median(seconds for _, _, seconds in alone)
    print(f"(3) {args.chats} at once, streamed: last answer after {streamed_seconds:6.2f} s = "
          f"{streamed_seconds / one:.2f}x; median time to first text {statistics.median(f for _, f, _ in streamed):.2f} s")
    print(f"(4) one chat while a 64-line batch runs: {during_batch[2]:.2f} s = {during_batch[2] / one:.2f}x alone "
          f"(batch at {batch_state['request_counts']['completed']}/64 lines when it ended)")
    same = sum(a[0] == b[0] == c[0] for a, b, c in zip(alone, together, streamed, strict=True))
    stable = sum(len({r[0][i][0] for r in rounds} | {r[1][i][0] for r in rounds} | {streamed[i][0]}) == 1
                 for i in range(args.chats))
    print(f"answers identical alone / at once / streamed (last round): {same}/{args.chats}; the same in every round "
          f"and mode: {stable}/{args.chats}; during the batch as alone: {during_batch[0] == alone[0][0]}")


if __name__ == "__main__":
    main()
