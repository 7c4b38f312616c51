"""Peak training memory: the service's estimate (domain/jobs/memory.py, what
the preview and the job recipe show) against the measured peak, on
SmolLM2-135M-Instruct (the bundled model) on this machine's CPU.

    .venv/bin/python bench/memory_estimate.py [--only NAME ...] [--steps N]

Each configuration trains in a fresh Python process (peak RSS is a process's
high-water mark) through `worker.training.recipe.train`, the worker's code,
for a few optimizer steps on synthetic examples long enough to be cut at
max_seq_length, so every micro-batch is as large as the estimate assumes.
Measured: the largest `peak_memory_bytes` of the steps' metrics (on CPU the
process's ru_maxrss). Estimated: what the worker records in the job recipe
for the same resolved hyperparameters, the longest example's token count and
the model folder (trained share of tokens assumed 1, as the worker does).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CACHE_DIR = REPO / "bench" / "out" / "train-throughput"  # the converted model, shared with train_throughput.py
SEED = 7
WORDS = ("the of and to in is it that for on with as was be by this are or from at an have not model data "
         "training answer question weights tokens learning rate batch loss layer attention value result").split()

# name: (method, adapter, compute_dtype, batch_size, max_seq_length)
CONFIGS = {
    "lora-fp32-b4-s256": ("supervised", "lora", "float32", 4, 256),
    "lora-bf16-b4-s256": ("supervised", "lora", "bfloat16", 4, 256),
    "lora-fp32-b8-s512": ("supervised", "lora", "float32", 8, 512),
    "full-fp32-b4-s256": ("supervised", "full", "float32", 4, 256),
    "dpo-lora-fp32-b2-s256": ("dpo", "lora", "float32", 2, 256),
}


def long_text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choices(WORDS, k=words)).capitalize() + "."


def examples(method: str, count: int) -> list[dict]:
    rng = random.Random(SEED)
    out = []
    for i in range(count):
        prompt = [{"role": "user", "content": f"Question {i}: " + long_text(rng, 12)}]
        if method == "dpo":
            out.append({
                "input": {"messages": prompt},
                "preferred_output": [{"role": "assistant", "content": long_text(rng, 400)}],
                "non_preferred_output": [{"role": "assistant", "content": long_text(rng, 400)}],
            })
        else:
            out.append({"messages": [*prompt, {"role": "assistant", "content": long_text(rng, 400)}]})
    return out


def model_dir() -> Path:
    from worker.models.catalog import BUNDLED_SMOLLM2_ID, resolve_base_model

    return resolve_base_model(BUNDLED_SMOLLM2_ID, "bundled:smollm2", CACHE_DIR).local_dir


def run_one(name: str, steps: int) -> dict:
    """In this (fresh) process: train `steps` steps, return measured and estimated peaks."""
    from domain.jobs.hyperparameters import MAX_INTERVAL
    from worker.training.memory import estimate_run_memory
    from worker.training.recipe import TrainingConfig, TrainingHooks, train

    method, adapter, dtype, batch, seq = CONFIGS[name]
    folder = model_dir()
    hp = {
        "n_epochs": 1, "batch_size": batch, "learning_rate": 1e-5 if adapter == "full" else 2e-4,
        "adapter": adapter, "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear",
        "max_seq_length": seq, "warmup_ratio": 0.0, "lr_scheduler": "linear", "weight_decay": 0.0,
        "gradient_accumulation_steps": 1, "packing": True, "compute_dtype": dtype,
        "checkpoint_interval": MAX_INTERVAL, "eval_interval": MAX_INTERVAL, "max_grad_norm": 1.0,
    }
    if method == "dpo":
        hp["beta"] = 0.1
    rows: list[dict] = []
    config = TrainingConfig(base_model_dir=folder, hyperparameters=hp, seed=SEED, device="cpu",
                            **({"method": method} if method != "supervised" else {}))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        train(config, examples(method, batch * steps), [], Path(work), TrainingHooks(on_metrics=rows.append))
    _shape, estimate = estimate_run_memory(folder, hp, "cpu", method=method, row_tokens=seq)
    measured = max(row["peak_memory_bytes"] for row in rows)
    return {"name": name, "measured": measured, "estimate": estimate["peak_bytes"], "parts": estimate["parts"],
            "seconds": round(time.perf_counter() - started, 1), "steps": len(rows)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="*", help=f"configurations to run (default all): {', '.join(CONFIGS)}")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--run", help=argparse.SUPPRESS)  # in the child process
    args = parser.parse_args()
    if args.run:
        print("RESULT " + json.dumps(run_one(args.run, args.steps)), flush=True)
        return
    model_dir()  # convert once, before the measured processes
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    print("| configuration | estimated | measured | estimate / measured |\n|---|---|---|---|")
    for name in args.only or CONFIGS:
        done = subprocess.run([sys.executable, __file__, "--run", name, "--steps", str(args.steps)],
                              capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            print(f"| {name} | failed: {done.stderr.strip().splitlines()[-1:]} | | |", flush=True)
            continue
        result = json.loads(lines[-1].removeprefix("RESULT "))
        mib = 1 << 20
        print(f"| {name} | {result['estimate'] / mib:.0f} MiB | {result['measured'] / mib:.0f} MiB | "
              f"{result['estimate'] / result['measured']:.2f} |", flush=True)
        print("    parts (MiB): " + ", ".join(f"{k} {v / mib:.0f}" for k, v in result["parts"].items())
              + f"; {result['steps']} steps in {result['seconds']} s", flush=True)


if __name__ == "__main__":
    main()
