"""Batch inference throughput on SmolLM2-135M-Instruct (CPU).

    .venv/bin/python bench/batch_inference.py [--prompts 64] [--max-tokens 64]

Starts `tunehouse serve` (embedded mode: SQLite, filesystem broker, local
storage, one training and one inference worker) on a free port and measures
completion tokens per second of:

  (a) POST /v1/batches with N prompts on the base model, timed from creation
      to `completed` (the inference worker is warmed up first: the base model
      is loaded once per worker process, not per batch);
  (b) the reference: a naive loop in this process calling transformers'
      `generate` one prompt at a time, same prompts, max_tokens, greedy;
  (c) the same N prompts spread round-robin over 4 fine-tunes (LoRA
      adapters of that base), through the batch endpoint;
  (d) the same N prompts all on 1 of those fine-tunes.

Goals: (a)/(b) >= 5, (d)/(c) <= 1.3 (mixing adapters costs at most 30%).
The fine-tunes are registered as succeeded jobs of the bench user with random
LoRA weights (r=16, all linear layers) written where a training job puts its
adapter: to the service they are ordinary fine-tunes.
"""

import argparse
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
ADAPTERS = 4
TOPICS = ["cooking", "travel", "physics", "history", "gardening", "music", "finance", "chess"]


def prompts(count: int, seed: int = 3) -> list[str]:
    rng = random.Random(seed)
    # Varied lengths, as real batches have: padding is part of the cost.
    return [
        f"Explain {rng.choice(TOPICS)} to a beginner"
        + " in detail" * rng.randint(0, 6)
        + f", with {rng.randint(2, 9)} examples."
        for _ in range(count)
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    raise RuntimeError(f"timed out waiting for {what}")


def register_fine_tunes(data_dir: Path, owner_name: str, count: int) -> list[str]:
    """Random LoRA adapters saved as succeeded jobs' adapters; returns model names."""
    import torch
    from peft import LoraConfig, get_peft_model

    from domain.auth.models import User
    from domain.db import make_engine, make_sessionmaker
    from domain.ids import new_id
    from domain.jobs.models import FineTuningJob
    from domain.settings import Settings
    from worker.models.catalog import load_causal_lm, resolve_base_model

    settings = Settings(data_dir=data_dir)
    base = resolve_base_model(BASE, settings.base_models[BASE], settings.work_dir)
    engine = make_engine(settings.database_url)
    names = []
    with make_sessionmaker(engine)() as session:
        owner = session.query(User).filter_by(name=owner_name).one()
        for index in range(count):
            torch.manual_seed(index)
            model = get_peft_model(
                load_causal_lm(base),
                LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM"),
            )
            job_id = new_id("ftjob-")
            model.save_pretrained(settings.data_dir / "artifacts" / "jobs" / job_id / "adapter")
            name = f"ft:{BASE}:{owner_name}:bench{index}:{job_id[-8:]}"
            now = int(time.time())
            session.add(FineTuningJob(
                id=job_id, owner_id=owner.id, model=BASE, training_file_id="file-bench", status="succeeded",
                requested_hyperparameters={}, seed=index, seed_origin="user", fine_tuned_model=name,
                model_deleted=False, result_files=[], created_at=now, finished_at=now, attempt=1,
                adapter_key=f"jobs/{job_id}/adapter.zip",
            ))
            names.append(name)
        session.commit()
    engine.dispose()
    return names


def run_batch(client: httpx.Client, models: list[str], texts: list[str], max_tokens: int) -> tuple[int, float]:
    """(completion tokens, seconds from creation to completed)."""
    lines = [
        {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": models[i % len(models)], "messages": [{"role": "user", "content": text}],
                  "max_tokens": max_tokens, "temperature": 0}}
        for i, text in enumerate(texts)
    ]
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    file_id = client.post("/v1/files", data={"purpose": "batch"}, files={"file": ("b.jsonl", content)}).json()["id"]
    started = time.perf_counter()
    batch = client.post("/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                                             "completion_window": "24h"}).json()

    def ended():
        current = client.get(f"/v1/batches/{batch['id']}").json()
        return current if current["status"] in ("completed", "failed", "cancelled", "expired") else None

    final = wait_until(ended, 3600, "the batch", interval=0.05)
    elapsed = time.perf_counter() - started
    if final["status"] != "completed" or final["request_counts"]["failed"]:
        raise RuntimeError(f"batch ended badly: {final}")
    output = client.get(f"/v1/files/{final['output_file_id']}/content").text.splitlines()
    tokens = sum(json.loads(line)["response"]["body"]["usage"]["completion_tokens"] for line in output)
    return tokens, elapsed


def naive_generate_loop(data_dir: Path, texts: list[str], max_tokens: int) -> tuple[int, float]:
    import torch
    from transformers import AutoTokenizer

    from domain.settings import Settings
    from worker.models.catalog import load_causal_lm, resolve_base_model

    settings = Settings(data_dir=data_dir)
    base = resolve_base_model(BASE, settings.base_models[BASE], settings.work_dir)
    tokenizer = AutoTokenizer.from_pretrained(base.local_dir)
    model = load_causal_lm(base).eval()
    tokens, started = 0, time.perf_counter()
    with torch.inference_mode():
        for text in texts:
            ids = tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
            out = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
            tokens += out.shape[1] - ids["input_ids"].shape[1]
    return tokens, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    texts = prompts(args.prompts)
    with tempfile.TemporaryDirectory(prefix="tunehouse-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEHOUSE_")}
        server = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "serve", "--port", str(port), "--data-dir", str(data_dir)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        try:
            base_url = f"http://127.0.0.1:{port}"
            wait_until(lambda: (data_dir / "admin-key").exists() and httpx.get(f"{base_url}/healthz").status_code == 200,
                       120, "the service")
            key = (data_dir / "admin-key").read_text().strip()
            with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=600) as client:
                fine_tunes = register_fine_tunes(data_dir, "admin", ADAPTERS)
                # Warm-up: the worker loads the base and attaches every adapter once.
                run_batch(client, [BASE, *fine_tunes], texts[: 1 + ADAPTERS], 2)
                results = {
                    "a": run_batch(client, [BASE], texts, args.max_tokens),
                    "c": run_batch(client, fine_tunes, texts, args.max_tokens),
                    "d": run_batch(client, fine_tunes[:1], texts, args.max_tokens),
                }
            results["b"] = naive_generate_loop(data_dir, texts, args.max_tokens)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=120)

    def rate(key: str) -> float:
        tokens, seconds = results[key]
        return tokens / seconds

    labels = {
        "a": "batch endpoint, base model",
        "b": "naive generate() loop (reference)",
        "c": f"batch endpoint, {ADAPTERS} adapters mixed",
        "d": "batch endpoint, 1 adapter",
    }
    print(f"{args.prompts} prompts, max_tokens {args.max_tokens}, greedy, SmolLM2-135M-Instruct fp32 on CPU")
    for key in "abcd":
        tokens, seconds = results[key]
        print(f"({key}) {labels[key]:40s} {tokens:6d} tokens in {seconds:7.1f} s = {rate(key):7.1f} tokens/s")
    print(f"(a)/(b) = {rate('a') / rate('b'):.2f}x   (goal >= 5)")
    print(f"(d)/(c) = {rate('d') / rate('c'):.2f}x   (goal <= 1.3: mixing {ADAPTERS} adapters costs at most 30%)")


if __name__ == "__main__":
    main()
