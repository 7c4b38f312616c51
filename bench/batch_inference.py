"""Batch inference throughput on SmolLM2-135M-Instruct (CPU).

    .venv/bin/python bench/batch_inference.py [--prompts 64] [--max-tokens 64] [--dtype auto]
    .venv/bin/python bench/batch_inference.py --engine     # the engine alone, in this process

Starts `tunehouse serve` (embedded mode: SQLite, filesystem broker, local
storage, one training and one inference worker; TUNEHOUSE_INFERENCE_DTYPE
from --dtype) on a free port and measures completion tokens per second of:

  (a) POST /v1/batches with N prompts on the base model, timed from creation
      to `completed` (the inference worker is warmed up first: the base model
      is loaded and its batch budget measured once per worker process);
  (b) the reference: a naive loop in this process calling transformers'
      `generate` one prompt at a time, same prompts, max_tokens, greedy, fp32;
  (c) the same N prompts spread round-robin over 4 fine-tunes (LoRA
      adapters of that base), through the batch endpoint;
  (d) the same N prompts all on 1 of those fine-tunes;
  (e) the same N prompts on each of the 4 fine-tunes in turn, one batch each
      ((d) is the first): the reference for (c) with the same adapters. The
      random adapters end different shares of their answers early, and a
      decode step with fewer rows left costs about as much, so (c) against
      (d) alone also measures which adapter (d) happened to be.

and the greedy agreement of (a) with (b): answers identical, and the share of
(b)'s characters before the first difference (bf16 against fp32, when the
service computes in bf16).

Goals: (a)/(b) >= 5, (a) >= 400 tokens/s on this machine, (c) within 1.15x of
(d) and of (e) per token. The fine-tunes are registered as succeeded jobs of the bench
user with random LoRA weights (r=16, all linear layers) written where a
training job puts its adapter: to the service they are ordinary fine-tunes.

--engine runs the inference engine's decode loop in this process instead (no
service), in fp32 and bf16: the same prompts on the base with 16 rows per step
(the former fixed batch size) and with the measured budget, then on 4 adapters
mixed and on 1 adapter; and those two again with every answer run to
max_tokens (end of turn ignored), so that both do the same work and the
difference is the cost of mixing alone.
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


def run_batch(client: httpx.Client, models: list[str], texts: list[str], max_tokens: int) -> tuple[int, float, list[str]]:
    """(completion tokens, seconds from creation to completed, answers in input order)."""
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
    output = [json.loads(line) for line in client.get(f"/v1/files/{final['output_file_id']}/content").text.splitlines()]
    tokens = sum(record["response"]["body"]["usage"]["completion_tokens"] for record in output)
    by_id = {record["custom_id"]: record["response"]["body"]["choices"][0]["message"]["content"] for record in output}
    return tokens, elapsed, [by_id[f"r{i}"] for i in range(len(texts))]


def healthy(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/healthz").status_code == 200
    except httpx.TransportError:
        return False


def agreement(answers: list[str], references: list[str]) -> tuple[int, float]:
    """(answers identical to their reference, share of the references' characters before the first difference)."""
    same = sum(a == b for a, b in zip(answers, references, strict=True))
    agreeing = 0
    for answer, reference in zip(answers, references, strict=True):
        common = 0
        for x, y in zip(answer, reference):
            if x != y:
                break
            common += 1
        agreeing += common
    return same, agreeing / max(1, sum(len(reference) for reference in references))


def naive_generate_loop(data_dir: Path, texts: list[str], max_tokens: int) -> tuple[int, float, list[str]]:
    import torch
    from transformers import AutoTokenizer

    from domain.settings import Settings
    from worker.models.catalog import load_causal_lm, resolve_base_model

    settings = Settings(data_dir=data_dir)
    base = resolve_base_model(BASE, settings.base_models[BASE], settings.work_dir)
    tokenizer = AutoTokenizer.from_pretrained(base.local_dir)
    model = load_causal_lm(base).eval()
    tokens, started, answers = 0, time.perf_counter(), []
    with torch.inference_mode():
        for text in texts:
            ids = tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
            out = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
            tokens += out.shape[1] - ids["input_ids"].shape[1]
            answers.append(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True,
                                            clean_up_tokenization_spaces=False))
    return tokens, time.perf_counter() - started, answers


def engine_bench(texts: list[str], max_tokens: int) -> None:
    """The decode loop in this process: base / 4 adapters mixed / 1 adapter,
    16 rows per step vs the measured budget, fp32 and bf16."""
    import tempfile as _tempfile

    import torch

    from domain.settings import Settings
    from domain.storage import storage_from_url
    from worker.inference.batching import Handle
    from worker.inference.budget import Budget
    from worker.inference.engine import InferenceEngine
    from worker.inference.generation import GenerationRequest, render_prompt
    from worker.inference.loop import BACKGROUND, DecodeLoop
    from worker.models.catalog import load_causal_lm, resolve_base_model

    print(f"engine alone: {len(texts)} prompts, max_tokens {max_tokens}, greedy, torch threads {torch.get_num_threads()}")
    with _tempfile.TemporaryDirectory(prefix="tunehouse-bench-") as tmp:
        settings = Settings(data_dir=Path(tmp))
        base = resolve_base_model(BASE, settings.base_models[BASE], settings.work_dir)
        adapters = []
        for index in range(ADAPTERS):
            from peft import LoraConfig, get_peft_model

            torch.manual_seed(index)
            model = get_peft_model(load_causal_lm(base), LoraConfig(
                r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM"))
            job_id = f"ftjob-bench{index}"
            model.save_pretrained(settings.data_dir / "artifacts" / "jobs" / job_id / "adapter")
            adapters.append(job_id)
        for dtype in ("float32", "bfloat16"):
            engine = InferenceEngine(Settings(data_dir=Path(tmp), inference_dtype=dtype),
                                     storage_from_url(str(Path(tmp) / "artifacts")))
            models = {job: engine.acquire(BASE, job) for job in [None, *adapters]}
            handles = {job: held.__enter__() for job, held in models.items()}
            loaded = handles[None][0]
            measured = engine.budget(loaded)
            print(f"{dtype}: measured budget {measured.max_rows} rows ({measured.single_thread_rows} or fewer on one "
                  f"thread), {measured.prefill_tokens} prefill tokens; decode probe (rows: tokens/s) "
                  f"{measured.figures.get('decode_tokens_per_second')}, on one thread "
                  f"{measured.figures.get('decode_tokens_per_second_one_thread')}")
            prompt_ids = [render_prompt(loaded.tokenizer, [{"role": "user", "content": text}]) for text in texts]
            # Answers run to max_tokens whatever they say: the same work for every case.
            full_length = Handle(loaded.model, loaded.tokenizer, set(), loaded.device, loaded.tokenizer_lock)
            mixed, single = f"{ADAPTERS} adapters mixed", "1 adapter"
            cases = [
                (16, "base", [None], loaded),  # the former fixed batch size
                (measured.max_rows, "base", [None], loaded),
                (measured.max_rows, mixed, adapters, loaded),
                (measured.max_rows, single, adapters[:1], loaded),
                (measured.max_rows, mixed + ", eos ignored", adapters, full_length),
                (measured.max_rows, single + ", eos ignored", adapters[:1], full_length),
            ]
            loops = {}
            for rows, name, jobs, handle in cases:
                budget = Budget(rows, measured.prefill_tokens, single_thread_rows=measured.single_thread_rows)
                loop = loops.setdefault(rows, DecodeLoop(lambda _, budget=budget: budget))
                order = sorted(range(len(texts)), key=lambda i: (handles[jobs[i % len(jobs)]][1] or "", len(prompt_ids[i])))
                started = time.perf_counter()
                submissions = [loop.submit(handle, [GenerationRequest(
                    prompt_ids[i], adapter=handles[jobs[i % len(jobs)]][1], max_new_tokens=max_tokens,
                    temperature=0)], priority=BACKGROUND) for i in order]
                for submission in submissions:
                    submission.wait()
                seconds = time.perf_counter() - started
                tokens = sum(len(submission.results()[0].token_ids) for submission in submissions)
                print(f"  {dtype:9s} {rows:4d} rows  {name:34s} {tokens:6d} tokens in {seconds:6.1f} s = "
                      f"{tokens / seconds:7.1f} tokens/s", flush=True)
            for held in models.values():
                held.__exit__(None, None, None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="auto", help="TUNEHOUSE_INFERENCE_DTYPE of the service")
    parser.add_argument("--engine", action="store_true", help="the engine alone, in this process (no service)")
    args = parser.parse_args()
    texts = prompts(args.prompts)
    if args.engine:
        engine_bench(texts, args.max_tokens)
        return
    with tempfile.TemporaryDirectory(prefix="tunehouse-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEHOUSE_")}
        env["TUNEHOUSE_INFERENCE_DTYPE"] = args.dtype
        server = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "serve", "--port", str(port), "--data-dir", str(data_dir)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        try:
            base_url = f"http://127.0.0.1:{port}"
            wait_until(lambda: (data_dir / "admin-key").exists() and healthy(base_url), 120, "the service")
            key = (data_dir / "admin-key").read_text().strip()
            with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=600) as client:
                fine_tunes = register_fine_tunes(data_dir, "admin", ADAPTERS)
                # Warm-up: the worker loads the base, measures its budget and attaches every adapter once.
                run_batch(client, [BASE, *fine_tunes], texts[: 1 + ADAPTERS], 2)
                results = {
                    "a": run_batch(client, [BASE], texts, args.max_tokens),
                    "c": run_batch(client, fine_tunes, texts, args.max_tokens),
                    "d": run_batch(client, fine_tunes[:1], texts, args.max_tokens),
                }
                each = [results["d"], *(run_batch(client, [name], texts, args.max_tokens) for name in fine_tunes[1:])]
                results["e"] = (sum(r[0] for r in each), sum(r[1] for r in each), [a for r in each for a in r[2]])
            # What the worker chose: its dtype and batch budget (worker/inference/budget.py keeps them here).
            budgets = json.loads((data_dir / "work" / "inference" / "budgets.json").read_text())
            results["b"] = naive_generate_loop(data_dir, texts, args.max_tokens)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=120)

    def rate(key: str) -> float:
        tokens, seconds, _ = results[key]
        return tokens / seconds

    labels = {
        "a": "batch endpoint, base model",
        "b": "naive generate() loop, fp32 (reference)",
        "c": f"batch endpoint, {ADAPTERS} adapters mixed",
        "d": "batch endpoint, 1 adapter",
        "e": f"batch endpoint, each of the {ADAPTERS} alone",
    }
    print(f"{args.prompts} prompts, max_tokens {args.max_tokens}, greedy, SmolLM2-135M-Instruct on CPU, "
          f"TUNEHOUSE_INFERENCE_DTYPE={args.dtype}")
    for key, budget in budgets.items():
        print(f"worker's budget [{key}]: {budget['max_rows']} rows ({budget.get('single_thread_rows', 0)} or fewer on "
              f"one thread), {budget['prefill_tokens']} prefill tokens; decode probe (rows: tokens/s) "
              f"{budget['figures'].get('decode_tokens_per_second')}, on one thread "
              f"{budget['figures'].get('decode_tokens_per_second_one_thread')}")
    for key in "abcde":
        tokens, seconds, _ = results[key]
        print(f"({key}) {labels[key]:40s} {tokens:6d} tokens in {seconds:7.1f} s = {rate(key):7.1f} tokens/s")
    print("    (e) per adapter: " + ", ".join(f"{tokens} tokens in {seconds:.1f} s" for tokens, seconds, _ in each))
    print(f"(a)/(b) = {rate('a') / rate('b'):.2f}x   (goal >= 5; (a) goal >= 400 tokens/s)")
    print(f"(d)/(c) = {rate('d') / rate('c'):.2f}x   (goal <= 1.15: mixing {ADAPTERS} adapters costs at most 15% per token)")
    print(f"(e)/(c) = {rate('e') / rate('c'):.2f}x   (the same, against the same {ADAPTERS} adapters one at a time)")
    same, share = agreement(results["a"][2], results["b"][2])
    print(f"greedy agreement of (a) with (b): {same}/{len(texts)} answers identical; "
          f"{share:.1%} of the reference's characters before the first difference")


if __name__ == "__main__":
    main()
