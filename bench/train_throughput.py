"""Training throughput: the service's trainer against TRL references, and the
cost of running it as a job through the service.

    .venv/bin/python bench/train_throughput.py [--quick] [--profile]

All runs train SmolLM2-135M-Instruct (the bundled GGUF, converted once into
bench/out/train-throughput/) with LoRA r=16, alpha=32, dropout 0 (the
service's default and the Unsloth + TRL recipe's) on all linear layers, batch
size 4, learning rate 2e-4, on the same synthetic chat examples (lognormal
lengths, ~90 tokens on average), for WARMUP_STEPS untimed steps and then 30
timed steps (--quick: 6). OMP_WAIT_POLICY=PASSIVE is set here, as the worker
and the tests set it: with OpenMP's default busy-waiting a 2-thread torch
process next to other busy processes ran 30-60x slower.

(a) the service's trainer, `worker.training.recipe.train`, called directly with
    packing on (the service default), once with compute_dtype float32 (a) and
    once with bfloat16 (a2), what "auto" picks on a CPU whose probe finds bf16
    faster (the report prints the probe). Throughput = non-padding tokens of
    the timed steps / wall time from the end of the last warm-up step to the
    end of the last step (read from the on_metrics hook).
(b) the reference, written the way the tutorials do it: TRL SFTTrainer + a PEFT
    LoraConfig on a conversational ({"messages": [...]}) dataset, loss on the
    whole sequence (TRL's default; assistant-only loss needs a chat template
    with generation markers, which SmolLM2's has not), max_length = the
    service's max_seq_length. Rows: (b) TRL's defaults (bf16 autocast,
    gradient checkpointing on, each batch padded to its longest example);
    (b2) without gradient checkpointing (the service has none on CPU); (b3)
    with SFTConfig(packing=True) too (best-fit decreasing into max_length
    rows, which TRL then trains padding-free: each batch's rows flattened
    into one, the per-example mask derived from position_ids); (b4) the same
    in fp32. Throughput = non-padding tokens / wall time of the timed steps (a
    TrainerCallback takes the times).
(c) the same training as a fine-tuning job: the API in this process (uvicorn),
    one `tunehouse worker` subprocess, the file uploaded and the job created
    over HTTP with the same hyperparameters and seed (compute_dtype left to
    the worker's probe). Compared on the trainer's own per-step tokens/s, from
    the job's metrics (GET /v1/fine_tuning/jobs/{id}/metrics), against the same
    figure of the direct run in the dtype the job used.

MFU = 4 x N x tokens/s / peak, with N the base model's parameters (embeddings
counted once: they are tied) and the peak of the dtype the run computed in,
measured here with torch.matmul on 2048x2048 matrices in that dtype (best of
several runs, all cores, before and after the runs). 4 = 2 FLOPs per
parameter per token in the forward pass + 2 for the backward pass's activation
gradients; LoRA training computes no gradients of the frozen weights.

--profile: also one step of (a) in each dtype under torch.profiler, its top
operators by self CPU time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no model hubs: everything is local
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as workers and tests: no busy-waiting OpenMP threads
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", category=FutureWarning)  # transformers 5 renames (gradient -> activation checkpointing)
warnings.filterwarnings("ignore", message=".*pin_memory.*")  # Trainer's default pin_memory on a machine without GPU
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import torch  # noqa: E402

SEED = 7
BATCH_SIZE = 4
LEARNING_RATE = 2e-4
LORA = {"lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear"}
WARMUP_STEPS = 3
TIMED_STEPS = {"full": 30, "quick": 6}
CACHE_DIR = REPO / "bench" / "out" / "train-throughput"  # the converted base model, kept between runs
JOB_MODEL_ID = "bench-smollm2"
JOB_TIMEOUT_S = 1800
MFU_FACTOR = 4


# --------------------------------------------------------------------------
# Data: synthetic chats with long-tailed lengths


WORDS = (
    "the of and to in is it that for on with as was be by this are or from at an have not "
    "model data training answer question weights tokens learning rate batch loss layer attention value "
    "result example system user assistant service network memory compute gradient step epoch adapter "
    "small large fast slow good better simple clear first second next last each every many few more "
    "people time year way day thing world life hand part place case point group number fact work "
    "make take give find think know see come want use tell ask seem feel try leave call keep"
).split()
TOPICS = ["cooking", "travel", "physics", "history", "gardening", "music", "finance", "chess"]


def make_examples(count: int, seed: int = SEED) -> list[dict]:
    """Chat examples whose word counts are lognormal: most are short, a few are
    several times the mean (~90 tokens rendered with SmolLM2's template)."""
    rng = random.Random(seed)
    examples = []
    for i in range(count):
        question_words = max(3, min(60, round(rng.lognormvariate(math.log(12), 0.5))))
        answer_words = max(3, min(700, round(rng.lognormvariate(math.log(34), 0.85))))
        question = f"About {TOPICS[i % len(TOPICS)]}: " + " ".join(rng.choices(WORDS, k=question_words)) + "?"
        answer = " ".join(rng.choices(WORDS, k=answer_words)).capitalize() + "."
        examples.append(
            {
                "messages": [
                    {"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
    return examples


def percentile(sorted_values: list[int], fraction: float) -> int:
    return sorted_values[max(0, math.ceil(fraction * len(sorted_values)) - 1)]


# --------------------------------------------------------------------------
# Setup


@dataclass
class Setup:
    model_dir: Path
    n_params: int
    examples: list[dict]
    lengths: list[int]  # rendered token counts (SmolLM2's chat template), untruncated
    requested: dict  # the hyperparameters, as a job request names them (flat)
    hyperparameters: dict  # resolved, as the trainer receives them
    warmup_steps: int
    timed_steps: int

    @property
    def total_steps(self) -> int:
        return self.warmup_steps + self.timed_steps

    @property
    def max_seq_length(self) -> int:
        return int(self.hyperparameters["max_seq_length"])


def prepare(quick: bool) -> Setup:
    from domain.jobs.hyperparameters import MAX_INTERVAL, DatasetStats, plain_values, resolve
    from worker.models.catalog import BUNDLED_SMOLLM2_ID, resolve_base_model
    from worker.training.recipe import load_tokenizer, token_lengths

    started = time.perf_counter()
    base = resolve_base_model(BUNDLED_SMOLLM2_ID, "bundled:smollm2", CACHE_DIR)
    print(f"base model: {base.local_dir} ({time.perf_counter() - started:.0f} s to resolve/convert)", flush=True)
    timed_steps = TIMED_STEPS["quick" if quick else "full"]
    examples = make_examples(BATCH_SIZE * (WARMUP_STEPS + timed_steps))
    lengths = token_lengths(load_tokenizer(base.local_dir), examples)
    ordered = sorted(lengths)

    # The hyperparameters every run uses. One epoch over exactly (warm-up + timed)
    # batches; no evaluation and no checkpoint before the end of the run.
    requested = {
        "n_epochs": 1,
        "batch_size": BATCH_SIZE,
        "learning_rate": LEARNING_RATE,
        "adapter": "lora",
        **LORA,
        "packing": True,
        "checkpoint_interval": MAX_INTERVAL,
        "eval_interval": MAX_INTERVAL,
    }
    stats = DatasetStats(
        train_examples=len(examples),
        eval_examples=0,
        token_length_p99=percentile(ordered, 0.99),
        token_length_max=ordered[-1],
        train_tokens=sum(lengths),
    )
    # max_seq_length as the service picks it (auto: p99 rounded up to 64), then
    # pinned, so the direct run, the job and TRL's max_length all use the same.
    hyperparameters = plain_values(resolve(requested, stats, model_max_length=base.max_length, device="cpu"))
    requested["max_seq_length"] = hyperparameters["max_seq_length"]
    return Setup(
        model_dir=base.local_dir,
        n_params=count_parameters(base.local_dir),
        examples=examples,
        lengths=lengths,
        requested=requested,
        hyperparameters=hyperparameters,
        warmup_steps=WARMUP_STEPS,
        timed_steps=timed_steps,
    )


def count_parameters(model_dir: Path) -> int:
    """All weights in the checkpoint (tied embeddings are stored once)."""
    from safetensors import safe_open

    total = 0
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as weights:
            for name in weights.keys():
                total += math.prod(weights.get_slice(name).get_shape())
    return total


DTYPES = ("float32", "bfloat16")


def measure_matmul_peak(dtype: str = "float32", size: int = 2048, runs: int = 20) -> float:
    """Best torch.matmul throughput in `dtype` on size x size matrices, in FLOP/s."""
    a = torch.randn(size, size).to(getattr(torch, dtype))
    b = torch.randn(size, size).to(getattr(torch, dtype))
    out = torch.empty(size, size, dtype=getattr(torch, dtype))
    for _ in range(3):
        torch.matmul(a, b, out=out)
    best = math.inf
    for _ in range(runs):
        started = time.perf_counter()
        torch.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


# --------------------------------------------------------------------------
# Measurements


@dataclass
class Throughput:
    name: str
    tokens: int  # non-padding tokens of the timed steps
    seconds: float  # wall time of the timed steps
    dtype: str = "float32"  # what the matmuls computed in: MFU is against this dtype's peak
    positions: int = 0  # token positions computed (rows x padded length), when known
    step_tokens_per_second: list[float] = field(default_factory=list)
    notes: str = ""
    losses: list[float] = field(default_factory=list)  # training loss of every step

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds

    @property
    def padding_overhead(self) -> float | None:
        """Positions computed per non-padding token (1.0 = no padding at all)."""
        return self.positions / self.tokens if self.positions else None


def measure_service_trainer(setup: Setup, work_dir: Path, dtype: str) -> tuple[Throughput, Throughput, list[float]]:
    """(a) `train()` called directly, computing in `dtype`. Returns the
    wall-clock figure, the trainer's own per-step figure (what a job reports)
    over the timed steps, and every step's training loss."""
    from worker.training.recipe import TrainingConfig, TrainingHooks, train

    rows: list[dict] = []

    def on_metrics(metrics: dict) -> None:
        rows.append({**metrics, "at": time.perf_counter()})

    hyperparameters = {**setup.hyperparameters, "compute_dtype": dtype}
    config = TrainingConfig(base_model_dir=setup.model_dir, hyperparameters=hyperparameters, seed=SEED, device="cpu")
    result = train(config, setup.examples, [], work_dir, TrainingHooks(on_metrics=on_metrics))
    assert result.steps == setup.total_steps, (result.steps, setup.total_steps)
    assert result.method["compute_dtype"] == dtype, result.method

    timed = [row for row in rows if row["step"] > setup.warmup_steps]
    last_warmup = rows[setup.warmup_steps - 1]
    tokens = timed[-1]["trained_tokens"] - last_warmup["trained_tokens"]
    positions = service_positions(setup)[setup.warmup_steps :]
    label = "(a)" if dtype == "float32" else "(a2)"
    wall = Throughput(
        f"{label} service trainer, packing, {dtype}", tokens, timed[-1]["at"] - last_warmup["at"], dtype=dtype,
        positions=sum(positions), notes=f"attention {result.method['attention']}",
    )
    per_step = per_step_throughput(f"{label} direct, {dtype}: trainer's per-step tokens/s", rows, setup.warmup_steps)
    per_step.dtype = dtype
    return wall, per_step, [row["train_loss"] for row in rows]


def per_step_throughput(name: str, rows: list[dict], warmup_steps: int) -> Throughput:
    """Sum of the timed steps' tokens over the sum of their own seconds, from the
    trainer's metrics rows (step, trained_tokens, tokens_per_second)."""
    rows = sorted(rows, key=lambda row: row["step"])
    tokens, seconds, rates = 0, 0.0, []
    for previous, row in zip([{"trained_tokens": 0}, *rows], rows):
        if row["step"] <= warmup_steps:
            continue
        step_tokens = row["trained_tokens"] - previous["trained_tokens"]
        tokens += step_tokens
        seconds += step_tokens / row["tokens_per_second"]
        rates.append(row["tokens_per_second"])
    return Throughput(name, tokens, seconds, step_tokens_per_second=rates)


def service_positions(setup: Setup) -> list[int]:
    """Rows x length of each step's packed batch, rebuilt the way train() builds them on CPU."""
    from worker.training.recipe import Batching, epoch_order, load_tokenizer, tokenize_and_truncate

    tokenizer = load_tokenizer(setup.model_dir)
    data, _ = tokenize_and_truncate(tokenizer, setup.examples, setup.max_seq_length)
    order = epoch_order(SEED, 0, len(data))
    batching = Batching(BATCH_SIZE, setup.max_seq_length, pad_token_id=0, packing=True, device="cpu",
                        segment_attention=True)  # pad id: shapes only
    positions = []
    for step in range(setup.total_steps):
        batch = [data[i] for i in order[step * BATCH_SIZE : (step + 1) * BATCH_SIZE]]
        positions.append(batching.inputs(batch)["input_ids"].numel())
    return positions


@dataclass(frozen=True)
class TrlRun:
    label: str
    bf16: bool
    gradient_checkpointing: bool
    packing: bool

    @property
    def name(self) -> str:
        batches = "packing, padding-free" if self.packing else "padding"
        checkpointing = "" if self.gradient_checkpointing else ", no grad ckpt"
        return f"{self.label} TRL SFTTrainer, {batches}{checkpointing}, {'bfloat16' if self.bf16 else 'float32'}"


TRL_RUNS = (
    TrlRun("(b)", bf16=True, gradient_checkpointing=True, packing=False),  # TRL's defaults
    TrlRun("(b2)", bf16=True, gradient_checkpointing=False, packing=False),
    TrlRun("(b3)", bf16=True, gradient_checkpointing=False, packing=True),
    TrlRun("(b4)", bf16=False, gradient_checkpointing=False, packing=True),
)


def measure_trl_reference(setup: Setup, out_dir: Path, run: TrlRun) -> Throughput:
    """(b) TRL SFTTrainer + PEFT LoRA as `run` says; TRL's defaults otherwise."""
    from datasets import Dataset, disable_progress_bars
    from peft import LoraConfig
    from transformers import PrinterCallback, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    disable_progress_bars()
    step_tokens: dict[int, tuple[int, int]] = {}  # step -> (non-padding tokens, positions)
    step_ended: dict[int, float] = {}

    class CountingSFTTrainer(SFTTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            if "attention_mask" in inputs:
                mask = inputs["attention_mask"]
                step_tokens[self.state.global_step + 1] = (int(mask.sum()), mask.numel())
            else:  # padding-free: the batch flattened into one row of real tokens
                ids = inputs["input_ids"]
                step_tokens[self.state.global_step + 1] = (ids.numel(), ids.numel())
            return super().training_step(model, inputs, num_items_in_batch)

    losses: list[float] = []

    class StepTimes(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            step_ended[state.global_step] = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    dataset = Dataset.from_list([{"messages": example["messages"]} for example in setup.examples])
    args = SFTConfig(
        output_dir=str(out_dir),
        per_device_train_batch_size=BATCH_SIZE,
        learning_rate=LEARNING_RATE,
        max_steps=setup.total_steps,
        max_length=setup.max_seq_length,  # the service's max_seq_length: same truncation (and packed row length)
        bf16=run.bf16,  # TRL's default is True: autocast over fp32 weights, as the service's bf16
        use_cpu=True,  # transformers refuses bf16 on a machine without GPU unless told it trains on the CPU
        gradient_checkpointing=run.gradient_checkpointing,  # TRL's default is True
        packing=run.packing,  # best-fit decreasing, then padding-free batches
        logging_steps=1,  # every step's loss, to compare bf16 with fp32
        seed=SEED,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    peft_config = LoraConfig(
        r=LORA["lora_r"],
        lora_alpha=LORA["lora_alpha"],
        lora_dropout=LORA["lora_dropout"],
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    trainer = CountingSFTTrainer(
        model=str(setup.model_dir),
        args=args,
        train_dataset=dataset,
        peft_config=peft_config,
        callbacks=[StepTimes()],
    )
    trainer.remove_callback(PrinterCallback)
    dtypes = sorted({str(p.dtype) for p in trainer.model.parameters()})
    trainer.train()

    timed = range(setup.warmup_steps + 1, setup.total_steps + 1)
    tokens = sum(step_tokens[step][0] for step in timed)
    positions = sum(step_tokens[step][1] for step in timed)
    seconds = step_ended[setup.total_steps] - step_ended[setup.warmup_steps]
    changes = [change for change, differs in (
        ("gradient checkpointing off", not run.gradient_checkpointing),
        ("packing=True", run.packing),
        ("bf16=False", not run.bf16),
    ) if differs]
    notes = "TRL's defaults" + (" but " + ", ".join(changes) if changes else "")
    attention = trainer.model.config._attn_implementation
    return Throughput(run.name, tokens, seconds, dtype="bfloat16" if run.bf16 else "float32", positions=positions,
                      notes=f"{notes}; weights {', '.join(dtypes)}; attention {attention}", losses=losses)


def measure_service_job(setup: Setup, tmp: Path) -> tuple[Throughput, Throughput]:
    """(c) The same run as a job: API in this process, one `tunehouse worker`."""
    import uvicorn

    from api.app import create_app
    from domain.auth.service import create_key, get_or_create_user
    from domain.db import migrate
    from domain.settings import Settings

    settings = Settings(data_dir=tmp / "service", base_models={JOB_MODEL_ID: f"path:{setup.model_dir}"})
    migrate(settings.database_url)
    app = create_app(settings)
    with app.state.tunehouse.sessionmaker() as session:
        key = create_key(session, get_or_create_user(session, "bench"))
        session.commit()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    server_thread = threading.Thread(target=server.run, daemon=True)
    server_thread.start()
    wait_until(lambda: server.started, 30, "uvicorn to start")

    worker_log = tmp / "worker.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEHOUSE_")} | settings.as_env()
    with worker_log.open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "worker"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=120) as client:
            lines = "".join(json.dumps({**example, "split": "TRAIN"}) + "\n" for example in setup.examples)
            upload = client.post(
                "/v1/files", data={"purpose": "fine-tune"}, files={"file": ("bench.jsonl", lines.encode())}
            )
            upload.raise_for_status()
            top = {"n_epochs", "batch_size"}
            hyperparameters = {k: v for k, v in setup.requested.items() if k in top}
            hyperparameters["extra"] = {k: v for k, v in setup.requested.items() if k not in top}
            created = client.post(
                "/v1/fine_tuning/jobs",
                json={"model": JOB_MODEL_ID, "training_file": upload.json()["id"], "seed": SEED,
                      "hyperparameters": hyperparameters},
            )
            created.raise_for_status()
            job_id = created.json()["id"]

            def finished():
                if worker.poll() is not None:
                    raise RuntimeError(f"the worker exited ({worker.returncode}); see {worker_log}")
                job = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
                return job if job["status"] in ("succeeded", "failed", "cancelled") else None

            # Polled rarely: this process shares the 2 cores with the worker.
            job = wait_until(finished, JOB_TIMEOUT_S, f"job {job_id}", interval=3.0)
            if job["status"] != "succeeded":
                raise RuntimeError(f"job {job_id} {job['status']}: {job.get('error')}")
            rows = client.get(f"/v1/fine_tuning/jobs/{job_id}/metrics").json()["data"]
            used = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()["hyperparameters"]
            events = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        server.should_exit = True
        server_thread.join(timeout=30)

    differing = {k: (v, used.get(k)) for k, v in setup.hyperparameters.items()
                 if used.get(k) != v and k != "compute_dtype"}
    if differing:
        raise RuntimeError(f"the job resolved other hyperparameters than the direct run: {differing}")
    if len(rows) != setup.total_steps:
        raise RuntimeError(f"the job reported {len(rows)} steps, expected {setup.total_steps}")
    # Wall clock between the metrics events of the last warm-up step and the last
    # step: adds what happens between steps (event writes, heartbeats, stop checks),
    # but event times are whole seconds.
    at = {event["data"]["step"]: event["created_at"] for event in events if event["type"] == "metrics"}
    tokens = rows[-1]["trained_tokens"] - rows[setup.warmup_steps - 1]["trained_tokens"]
    dtype = used.get("compute_dtype", "float32")
    wall = Throughput(
        f"(c) job, {dtype}: wall clock (event times, 1 s resolution)",
        tokens, max(at[setup.total_steps] - at[setup.warmup_steps], 1), dtype=dtype,
    )
    per_step = per_step_throughput(f"(c) job, {dtype}: trainer's per-step tokens/s", rows, setup.warmup_steps)
    per_step.dtype = dtype
    return per_step, wall


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------
# Report


def profile_service_step(setup: Setup, dtype: str, rows: int = 18) -> None:
    """One step of (a) in `dtype` (after two warm-up steps) under torch.profiler."""
    from worker.compute import choose_compute_dtype
    from worker.training import recipe

    hp = {**setup.hyperparameters, "compute_dtype": dtype}
    tokenizer = recipe.load_tokenizer(setup.model_dir)
    data, _ = recipe.tokenize_and_truncate(tokenizer, setup.examples, setup.max_seq_length)
    recipe.set_seed(SEED)
    model, method = recipe.load_model(setup.model_dir, "lora", "cpu", choose_compute_dtype("cpu", dtype))
    model = recipe.add_lora_adapter(model, hp)
    head_weight = recipe.prepare_for_autocast(model) if method["autocast"] else None
    optimizer, _ = recipe.make_optimizer(model, hp, method)
    scheduler = recipe.make_scheduler(optimizer, hp, setup.total_steps)
    batching = recipe.Batching(BATCH_SIZE, setup.max_seq_length, tokenizer.pad_token_id, True, "cpu",
                               method["attention"] == recipe.ATTENTION_NAME, method["autocast"], head_weight)
    order = recipe.epoch_order(SEED, 0, len(data))
    for step in range(3):
        batch = [data[i] for i in order[step * BATCH_SIZE : (step + 1) * BATCH_SIZE]]
        if step < 2:
            recipe.train_step(model, optimizer, scheduler, batch, batching, None)
            continue
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
            recipe.train_step(model, optimizer, scheduler, batch, batching, None)
    print(f"\nprofile of one step of (a), {dtype} ({sum(len(e) for e in batch)} tokens):")
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def print_report(
    setup: Setup, peaks: dict[str, list[float]], probe, runs: list[Throughput], directs: dict[str, Throughput],
    job: Throughput | None, job_wall: Throughput | None, losses: dict[str, list[float]],
) -> None:
    peak = {dtype: max(values) for dtype, values in peaks.items()}

    def mfu(result: Throughput) -> float:
        return MFU_FACTOR * setup.n_params * result.tokens_per_second / peak[result.dtype]

    ordered = sorted(setup.lengths)
    print()
    from importlib.metadata import version

    print(f"machine: {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    print("libraries: " + ", ".join(f"{name} {version(name)}" for name in ("torch", "transformers", "peft", "trl")))
    for dtype, values in peaks.items():
        print(
            f"matmul peak ({dtype} 2048x2048, best of 20): {peak[dtype] / 1e9:.1f} GFLOP/s "
            f"(before the runs {values[0] / 1e9:.1f}, after {values[1] / 1e9:.1f})"
        )
        if min(values) < 0.85 * peak[dtype]:
            print(f"WARNING: the {dtype} peaks differ by more than 15%: the machine was busy; figures are unreliable")
    print(f"compute dtype probe (worker/compute.py, what 'auto' picks): {probe.dtype}: {probe.reason}")
    print(f"model: SmolLM2-135M-Instruct (bundled), N = {setup.n_params:,} parameters")
    print(
        f"data: {len(setup.examples)} synthetic chats; tokens per example mean {statistics.mean(ordered):.1f}, "
        f"p50 {percentile(ordered, 0.5)}, p95 {percentile(ordered, 0.95)}, max {ordered[-1]} "
        f"(SmolLM2 chat template); max_seq_length {setup.max_seq_length} (the service's auto rule)"
    )
    print(
        f"training: {setup.warmup_steps} warm-up + {setup.timed_steps} timed steps, batch size {BATCH_SIZE}, "
        f"LoRA r={LORA['lora_r']} alpha={LORA['lora_alpha']} dropout={LORA['lora_dropout']} all-linear, "
        f"lr {LEARNING_RATE}"
    )
    print(
        f"MFU = {MFU_FACTOR} x N x tokens/s / matmul peak of the run's dtype ({MFU_FACTOR}: 2 FLOPs/param/token "
        "forward + 2 for the activation gradients; LoRA computes no weight gradients of the frozen base)"
    )
    print()
    header = f"{'run':<62} {'tokens':>7} {'seconds':>8} {'tokens/s':>9} {'MFU':>6} {'positions/token':>16}"
    print(header)
    print("-" * len(header))
    for result in [*runs, *directs.values(), *([job, job_wall] if job else [])]:
        padding = f"{result.padding_overhead:.2f}" if result.padding_overhead else "-"
        print(
            f"{result.name:<62} {result.tokens:>7} {result.seconds:>8.1f} {result.tokens_per_second:>9.1f} "
            f"{mfu(result):>6.1%} {padding:>16}"
        )
    print("tokens: non-padding tokens of the timed steps; positions/token: token positions computed")
    print("(rows x padded length) per non-padding token, 1.00 = no padding")
    print()
    services = [run for run in runs if run.name.startswith("(a")]
    references = [run for run in runs if run.name.startswith("(b")]
    for service in services:
        label = service.name.split(" ", 1)[0]
        for reference in references:
            other = reference.name.split(" ", 1)[0]
            print(
                f"ratio {label} / {other}: {service.tokens_per_second / reference.tokens_per_second:.2f}  "
                f"[{other}: {reference.notes}]"
            )
    best_service = max(services, key=lambda run: run.tokens_per_second)
    best_reference = max(references, key=lambda run: run.tokens_per_second)
    print(
        f"best service row / best TRL row: {best_service.tokens_per_second / best_reference.tokens_per_second:.2f} "
        f"({best_service.name.split(' ', 1)[0]} / {best_reference.name.split(' ', 1)[0]})"
    )
    for dtype in DTYPES:
        same = [run for run in references if run.dtype == dtype]
        mine = [run for run in services if run.dtype == dtype]
        if same and mine:
            best = max(same, key=lambda run: run.tokens_per_second)
            print(f"  {dtype}: service / best TRL row in {dtype}: {mine[0].tokens_per_second / best.tokens_per_second:.2f}")
    if set(losses) == set(DTYPES):
        differences = [b - a for a, b in zip(losses["float32"], losses["bfloat16"])]
        print(
            f"training loss, bf16 - fp32, same seed and batches, per step: mean {statistics.mean(differences):+.4f}, "
            f"largest {max(differences, key=abs):+.4f} (fp32 loss {losses['float32'][0]:.4f} -> {losses['float32'][-1]:.4f}, "
            f"bf16 {losses['bfloat16'][0]:.4f} -> {losses['bfloat16'][-1]:.4f})"
        )
        print("  fp32: " + " ".join(f"{loss:.3f}" for loss in losses["float32"]))
        print("  bf16: " + " ".join(f"{loss:.3f}" for loss in losses["bfloat16"]))
    packed = {run.dtype: run.losses for run in references if "packing" in run.name and run.losses}
    if set(packed) == set(DTYPES):
        differences = [b - a for a, b in zip(packed["float32"], packed["bfloat16"])]
        print(
            f"the same for TRL (packing rows, bf16=True vs False, same seed and batches): mean "
            f"{statistics.mean(differences):+.4f}, largest {max(differences, key=abs):+.4f} over {len(differences)} steps"
        )
    if job is None or job_wall is None:
        return
    direct = directs[job.dtype]
    service = next(run for run in services if run.dtype == job.dtype)
    overhead = 1 - job.tokens_per_second / direct.tokens_per_second
    print(f"service overhead ({job.dtype}), 1 - job / direct, on the trainer's per-step tokens/s: {overhead:+.1%}")
    median_overhead = 1 - statistics.median(job.step_tokens_per_second) / statistics.median(direct.step_tokens_per_second)
    print(f"  on the median step instead (robust to a step slowed by something else on the machine): {median_overhead:+.1%}")
    print(f"  with the time between steps (job wall clock vs direct): {1 - job_wall.tokens_per_second / service.tokens_per_second:+.1%}")
    print("  per-step tokens/s of the timed steps (same batches in both):")
    print("    direct: " + " ".join(f"{rate:.0f}" for rate in direct.step_tokens_per_second))
    print("    job:    " + " ".join(f"{rate:.0f}" for rate in job.step_tokens_per_second))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"{TIMED_STEPS['quick']} timed steps instead of {TIMED_STEPS['full']}"
    )
    parser.add_argument("--profile", action="store_true", help="also profile one step of (a) in each dtype")
    parser.add_argument("--no-job", action="store_true", help="leave out (c), the run as a job through the API")
    args = parser.parse_args()

    from transformers.utils import logging as transformers_logging

    from worker.compute import choose_compute_dtype

    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()

    setup = prepare(args.quick)
    peaks = {dtype: [measure_matmul_peak(dtype)] for dtype in DTYPES}
    print("matmul peaks: " + ", ".join(f"{d} {v[0] / 1e9:.1f} GFLOP/s" for d, v in peaks.items()), flush=True)
    probe = choose_compute_dtype("cpu")
    runs, directs, losses = [], {}, {}
    with tempfile.TemporaryDirectory(prefix="tunehouse-bench-train-") as tmp_name:
        tmp = Path(tmp_name)
        for dtype in DTYPES:
            print(f"(a) service trainer, {dtype} ...", flush=True)
            service, directs[dtype], losses[dtype] = measure_service_trainer(setup, tmp / f"direct-{dtype}", dtype)
            runs.append(service)
            print(f"    {service.tokens_per_second:.1f} tokens/s", flush=True)
        for trl_run in TRL_RUNS:
            print(f"{trl_run.name} ...", flush=True)
            runs.append(measure_trl_reference(setup, tmp / f"trl-{len(runs)}", trl_run))
            print(f"    {runs[-1].tokens_per_second:.1f} tokens/s", flush=True)
        job = job_wall = None
        if not args.no_job:
            print("(c) job through the API ...", flush=True)
            job, job_wall = measure_service_job(setup, tmp)
            print(f"    {job.tokens_per_second:.1f} tokens/s", flush=True)
    for dtype in DTYPES:
        peaks[dtype].append(measure_matmul_peak(dtype))
    print_report(setup, peaks, probe, runs, directs, job, job_wall, losses)
    if args.profile:
        for dtype in DTYPES:
            profile_service_step(setup, dtype)


if __name__ == "__main__":
    main()
