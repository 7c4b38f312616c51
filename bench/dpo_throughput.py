"""DPO throughput: the service's DPO trainer against TRL's DPOTrainer on the
same preference pairs, with the same LoRA settings.

    .venv/bin/python bench/dpo_throughput.py [--quick | --timed-steps N] [--profile] [--only '(a2)' ...]

Built on bench/train_throughput.py (imported, not copied): the same model
(SmolLM2-135M-Instruct from the bundled GGUF, converted once into
bench/out/train-throughput/), the same synthetic chats (lognormal lengths),
OMP_WAIT_POLICY=PASSIVE, WARMUP_STEPS untimed steps then the timed ones
(30; --quick: 6), and the matmul peaks for MFU.

Pairs: each chat of `make_examples` becomes a preference line (OpenAI's
format) whose prompt is its system + user messages, whose preferred output
is its own assistant answer and whose non-preferred output is the next
chat's answer (so both outputs have the lognormal lengths). LoRA r=16,
alpha=32, dropout 0, all linear layers; batch size 4 pairs, learning rate
5e-5 (the service's DPO base rate), beta 0.1; max_seq_length as the service
resolves it for these pairs (worker/training/preference.py dataset_stats,
then domain/jobs/hyperparameters.resolve with method "dpo"), and TRL's
max_length set to the same. Both trainers see the same pairs in the same
batches: the service's epoch order, given to TRL in that order with
train_sampling_strategy="sequential"; TRL's warm-up steps and scheduler are
set to the service's resolved ones, so the loss curves can be compared.

(a)  the service's trainer, `worker.training.recipe.train` with
     method="dpo", compute_dtype float32; (a2) bfloat16 (what "auto" picks on
     a CPU whose probe finds bf16 faster). The reference log-probabilities
     are computed once before the first step (not timed; reported apart).
(b)  TRL DPOTrainer + a PEFT LoraConfig on the conversational dataset
     (prompt / chosen / rejected message lists), TRL's defaults otherwise:
     bf16 autocast over the fp32 weights, gradient checkpointing, and the
     reference = the policy with the adapter disabled, run again at every
     step (a second, no-grad forward pass); (b2) without gradient
     checkpointing; (b3) also precompute_ref_log_probs=True (the reference
     pass done once over the data set before training, as the service does;
     not timed, reported apart); (b4) = (b3) in fp32 (bf16=False).

Throughput = non-padding tokens of the timed steps' training forward pass /
wall time from the end of the last warm-up step to the end of the last
step. Counted the same way for both: every pair is two rows, prompt +
preferred and prompt + non-preferred, so a pair's prompt counts twice, in
each trainer (the service: on_metrics' trained_tokens; TRL: the attention
mask of the batch its training_step receives, chosen rows + rejected rows).
TRL's per-step reference pass in (b) and (b2) reads the same tokens again
without gradients: that is work TRL does, not counted as tokens.
Positions/token = rows x padded length per non-padding token (both pad
each batch's 8 rows to its longest). MFU = 4 x N x tokens/s / the matmul
peak of the row's dtype, as in train_throughput.py (so the reference pass of
(b)/(b2) is not credited).

Rows run in the order (a), (b4), (a2), (b3), (b2), (b): the rows compared
with each other back to back, so a change in the machine's load hits both.

--profile: also one step (after two) of the service and of TRL's
precomputed-reference rows, in each dtype, under torch.profiler: their top
operators by self CPU time.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# Sets HF_HUB_OFFLINE, OMP_WAIT_POLICY=PASSIVE, ... before torch is imported, and puts the repo on sys.path.
from train_throughput import (  # noqa: E402
    BATCH_SIZE, CACHE_DIR, DTYPES, LORA, MFU_FACTOR, SEED, TIMED_STEPS, WARMUP_STEPS, Setup, Throughput,
    count_parameters, make_examples, measure_matmul_peak, percentile,
)

import torch  # noqa: E402

LEARNING_RATE = 5e-5  # the service's DPO base rate (learning_rate_multiplier 1)
BETA = 0.1
PROFILE_STEPS = 3  # --profile: two steps, then the profiled one


# --------------------------------------------------------------------------
# Pairs and hyperparameters


def make_pairs(count: int) -> list[dict]:
    """OpenAI preference lines from make_examples' chats: the chat's own answer
    preferred, the next chat's answer not."""
    chats = make_examples(count)
    answers = [chat["messages"][-1] for chat in chats]
    return [
        {
            "input": {"messages": chat["messages"][:-1]},
            "preferred_output": [answers[i]],
            "non_preferred_output": [answers[(i + 1) % count]],
        }
        for i, chat in enumerate(chats)
    ]


def prepare(timed_steps: int) -> Setup:
    from domain.jobs.hyperparameters import MAX_INTERVAL, plain_values, resolve
    from worker.models.catalog import BUNDLED_SMOLLM2_ID, resolve_base_model
    from worker.training.data import SplitData
    from worker.training.preference import dataset_stats, tokenize_pair
    from worker.training.recipe import load_tokenizer

    base = resolve_base_model(BUNDLED_SMOLLM2_ID, "bundled:smollm2", CACHE_DIR)
    pairs = make_pairs(BATCH_SIZE * (WARMUP_STEPS + timed_steps))
    tokenizer = load_tokenizer(base.local_dir)
    # The statistics a DPO job resolves from: each output's whole row (prompt + output).
    stats, _summary = dataset_stats(tokenizer, SplitData(train=pairs, eval=[], eval_source="test split"))
    requested = {
        "n_epochs": 1, "batch_size": BATCH_SIZE, "learning_rate": LEARNING_RATE, "beta": BETA, "adapter": "lora",
        **LORA, "checkpoint_interval": MAX_INTERVAL, "eval_interval": MAX_INTERVAL,
    }
    resolved = resolve(requested, stats, model_max_length=base.max_length, device="cpu", method="dpo")
    rows = [len(example) for pair in map(lambda line: tokenize_pair(tokenizer, line), pairs)
            for example in (pair.chosen, pair.rejected)]
    return Setup(model_dir=base.local_dir, n_params=count_parameters(base.local_dir), examples=pairs, lengths=rows,
                 requested=requested, hyperparameters=plain_values(resolved), warmup_steps=WARMUP_STEPS,
                 timed_steps=timed_steps)


def service_order(setup: Setup) -> list[int]:
    from worker.training.recipe import epoch_order

    return epoch_order(SEED, 0, len(setup.examples))


# --------------------------------------------------------------------------
# Results


@dataclass
class DpoRun:
    """A measured run: its throughput and what the trainer reported per step."""

    result: Throughput
    losses: list[float]
    step_tokens: list[int]  # non-padding tokens of every step, warm-up included
    reference_seconds: float | None  # the one-off reference pass, where the trainer makes one
    weights: str = ""


def timed_throughput(name: str, dtype: str, setup: Setup, ends: dict[int, float], tokens: dict[int, int],
                     positions: dict[int, int], notes: str) -> Throughput:
    timed = range(setup.warmup_steps + 1, setup.total_steps + 1)
    return Throughput(name, sum(tokens[step] for step in timed), ends[setup.total_steps] - ends[setup.warmup_steps],
                      dtype=dtype, positions=sum(positions[step] for step in timed), notes=notes)


def padded_positions(setup: Setup) -> dict[int, int]:
    """Rows x longest row of each step's batch of the service (2 rows a pair, no packing for DPO)."""
    from worker.training.preference import as_examples, tokenize_pairs
    from worker.training.recipe import load_tokenizer

    pairs, _ = tokenize_pairs(load_tokenizer(setup.model_dir), setup.examples, setup.max_seq_length)
    order = service_order(setup)
    positions = {}
    for step in range(1, setup.total_steps + 1):
        rows = as_examples([pairs[i] for i in order[(step - 1) * BATCH_SIZE : step * BATCH_SIZE]])
        positions[step] = len(rows) * max(map(len, rows))
    return positions


class StepProfiler:
    """torch.profiler over exactly one step: started when step `after` ends, stopped when the next one does."""

    def __init__(self, after: int):
        self.after = after
        self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])

    def step_ended(self, step: int) -> None:
        if step == self.after:
            self.profiler.start()
        elif step == self.after + 1:
            self.profiler.stop()

    def print(self, title: str, rows: int = 18) -> None:
        print(f"\nprofile of one step (step {self.after + 1}) of {title}:")
        print(self.profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


# --------------------------------------------------------------------------
# (a) the service


def run_service(setup: Setup, work_dir: Path, dtype: str, profiler: StepProfiler | None = None) -> DpoRun:
    from worker.training.recipe import TrainingConfig, TrainingHooks, train

    ends: dict[int, float] = {}
    metrics: dict[int, dict] = {}
    said: dict[str, float] = {}

    def on_metrics(row: dict) -> None:
        ends[row["step"]] = time.perf_counter()
        metrics[row["step"]] = row
        if profiler:
            profiler.step_ended(row["step"])

    def on_message(message: str, data=None) -> None:
        said.setdefault(message.split(" ", 1)[0], time.perf_counter())  # "Computing ...", "Epoch ..."

    config = TrainingConfig(base_model_dir=setup.model_dir, hyperparameters={**setup.hyperparameters, "compute_dtype": dtype},
                            seed=SEED, device="cpu", method="dpo")
    hooks = TrainingHooks(on_message=on_message, on_metrics=on_metrics)
    result = train(config, setup.examples, [], work_dir, hooks)
    if result.method["compute_dtype"] != dtype or result.steps != len(metrics):
        raise RuntimeError(f"unexpected run: {result.method}, {result.steps} steps")
    cumulative = [metrics[step]["trained_tokens"] for step in sorted(metrics)]
    step_tokens = [b - a for a, b in zip([0, *cumulative], cumulative)]
    label = "(a)" if dtype == "float32" else "(a2)"
    name = f"{label} service DPO, {dtype}"
    if profiler:
        return DpoRun(Throughput(name, 0, 1.0), [], step_tokens, None)
    tokens = dict(zip(sorted(metrics), step_tokens))
    throughput = timed_throughput(name, dtype, setup, ends, tokens, padded_positions(setup),
                                  f"attention {result.method['attention']}")
    return DpoRun(throughput, [metrics[step]["train_loss"] for step in sorted(metrics)], step_tokens,
                  said["Epoch"] - said["Computing"], "float32 (bf16 copies of the frozen linears under autocast)"
                  if dtype == "bfloat16" else "float32")


# --------------------------------------------------------------------------
# (b) TRL


@dataclass(frozen=True)
class TrlRun:
    label: str
    bf16: bool = True  # TRL's default
    gradient_checkpointing: bool = True  # TRL's default
    precompute_ref_log_probs: bool = False  # TRL's default

    @property
    def name(self) -> str:
        parts = ["TRL DPOTrainer", "grad ckpt" if self.gradient_checkpointing else "no grad ckpt",
                 "ref precomputed" if self.precompute_ref_log_probs else "ref every step",
                 "bfloat16" if self.bf16 else "float32"]
        return f"{self.label} " + ", ".join(parts)

    @property
    def notes(self) -> str:
        changed = [text for text, differs in (("gradient checkpointing off", not self.gradient_checkpointing),
                                              ("precompute_ref_log_probs=True", self.precompute_ref_log_probs),
                                              ("bf16=False", not self.bf16)) if differs]
        return "TRL's defaults" + (" but " + ", ".join(changed) if changed else "")


TRL_RUNS = (
    TrlRun("(b)"),
    TrlRun("(b2)", gradient_checkpointing=False),
    TrlRun("(b3)", gradient_checkpointing=False, precompute_ref_log_probs=True),
    TrlRun("(b4)", gradient_checkpointing=False, precompute_ref_log_probs=True, bf16=False),
)


def conversational(line: dict) -> dict:
    """An OpenAI preference line as TRL's conversational preference example."""
    return {"prompt": line["input"]["messages"], "chosen": line["preferred_output"],
            "rejected": line["non_preferred_output"]}


def run_trl(setup: Setup, out_dir: Path, run: TrlRun, profiler: StepProfiler | None = None) -> DpoRun:
    from datasets import Dataset, disable_progress_bars
    from peft import LoraConfig
    from transformers import PrinterCallback, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    disable_progress_bars()
    os.environ.setdefault("TQDM_DISABLE", "1")  # the reference pass's own progress bar
    hp = setup.hyperparameters
    counted: dict[int, tuple[int, int]] = {}  # step -> (non-padding tokens, positions)
    ends: dict[int, float] = {}
    losses: list[float] = []
    reference_seconds: list[float] = []

    class CountingDPOTrainer(DPOTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            mask = inputs["attention_mask"]  # chosen rows then rejected rows, each prompt + output
            counted[self.state.global_step + 1] = (int(mask.sum()), mask.numel())
            return super().training_step(model, inputs, num_items_in_batch)

        def _precompute_ref_logps(self, dataset, name, batch_size):
            started = time.perf_counter()
            try:
                return super()._precompute_ref_logps(dataset, name, batch_size)
            finally:
                reference_seconds.append(time.perf_counter() - started)

    class Steps(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends[state.global_step] = time.perf_counter()
            if profiler:
                profiler.step_ended(state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    ordered = [conversational(setup.examples[i]) for i in service_order(setup)]
    steps = PROFILE_STEPS if profiler else setup.total_steps
    args = DPOConfig(
        output_dir=str(out_dir),
        per_device_train_batch_size=BATCH_SIZE,
        learning_rate=float(hp["learning_rate"]),
        lr_scheduler_type=hp["lr_scheduler"],
        warmup_steps=math.ceil(float(hp["warmup_ratio"]) * setup.total_steps),  # the service's warm-up
        weight_decay=float(hp["weight_decay"]),
        beta=float(hp["beta"]),
        max_steps=steps,
        max_length=setup.max_seq_length,
        bf16=run.bf16,
        use_cpu=True,  # transformers refuses bf16 without a GPU otherwise
        gradient_checkpointing=run.gradient_checkpointing,
        precompute_ref_log_probs=run.precompute_ref_log_probs,
        train_sampling_strategy="sequential",  # the dataset is already in the service's order
        logging_steps=1,
        seed=SEED,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    peft_config = LoraConfig(r=LORA["lora_r"], lora_alpha=LORA["lora_alpha"], lora_dropout=LORA["lora_dropout"],
                             target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = CountingDPOTrainer(model=str(setup.model_dir), args=args, train_dataset=Dataset.from_list(ordered),
                                 peft_config=peft_config, callbacks=[Steps()])
    trainer.remove_callback(PrinterCallback)
    weights = ", ".join(sorted({str(p.dtype).removeprefix("torch.") for p in trainer.model.parameters()}))
    trainer.train()

    step_tokens = [counted[step][0] for step in sorted(counted)]
    if profiler:
        return DpoRun(Throughput(run.name, 0, 1.0), losses, step_tokens, None, weights)
    attention = trainer.model.config._attn_implementation
    throughput = timed_throughput(
        run.name, "bfloat16" if run.bf16 else "float32", setup, ends,
        {step: value[0] for step, value in counted.items()}, {step: value[1] for step, value in counted.items()},
        f"{run.notes}; attention {attention}",
    )
    return DpoRun(throughput, losses, step_tokens, reference_seconds[0] if reference_seconds else None, weights)


# --------------------------------------------------------------------------
# Report


COMPARED = (("(a2)", "(b)"), ("(a2)", "(b2)"), ("(a2)", "(b3)"), ("(a)", "(b4)"))
SERVICE_DTYPES = {"(a)": "float32", "(a2)": "bfloat16"}
# Comparable rows back to back, so that a change in the machine's load hits both alike.
RUN_ORDER = ("(a)", "(b4)", "(a2)", "(b3)", "(b2)", "(b)")
REPORT_ORDER = ("(a)", "(a2)", "(b)", "(b2)", "(b3)", "(b4)")


def report(setup: Setup, peaks: dict[str, list[float]], probe, runs: dict[str, DpoRun]) -> None:
    from importlib.metadata import version

    peak = {dtype: max(values) for dtype, values in peaks.items()}
    hp = setup.hyperparameters
    print()
    print(f"machine: {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, load average {os.getloadavg()[0]:.2f} (1 min)")
    print("libraries: " + ", ".join(f"{name} {version(name)}" for name in ("torch", "transformers", "peft", "trl")))
    for dtype, values in peaks.items():
        print(f"matmul peak {dtype}: {peak[dtype] / 1e9:.1f} GFLOP/s (before {values[0] / 1e9:.1f}, after "
              f"{values[-1] / 1e9:.1f})" + ("  WARNING: >15% apart, the machine was busy" if min(values) < 0.85 * peak[dtype] else ""))
    print(f"compute dtype probe (what 'auto' picks): {probe.dtype}: {probe.reason}")
    rows = sorted(setup.lengths)
    print(f"data: {len(setup.examples)} pairs = {len(rows)} rows (prompt + output); tokens per row mean "
          f"{statistics.mean(rows):.1f}, p50 {percentile(rows, 0.5)}, p95 {percentile(rows, 0.95)}, max {rows[-1]} "
          f"(service tokenization); max_seq_length {setup.max_seq_length} (the service's auto rule for DPO)")
    print(f"training: {setup.warmup_steps} warm-up + {setup.timed_steps} timed steps of {BATCH_SIZE} pairs, "
          f"LoRA r={hp['lora_r']} alpha={hp['lora_alpha']} dropout={hp['lora_dropout']} {hp['target_modules']}, "
          f"lr {hp['learning_rate']} ({hp['lr_scheduler']}, warmup_ratio {hp['warmup_ratio']}), beta {hp['beta']}")
    print()
    header = (f"{'run':<62} {'tokens':>7} {'seconds':>8} {'tokens/s':>9} {'MFU':>6} {'pos/token':>9} "
              f"{'ref pass s':>10}")
    print(header)
    print("-" * len(header))
    for run in runs.values():
        result = run.result
        mfu = MFU_FACTOR * setup.n_params * result.tokens_per_second / peak[result.dtype]
        reference = f"{run.reference_seconds:.1f}" if run.reference_seconds is not None else "-"
        print(f"{result.name:<62} {result.tokens:>7} {result.seconds:>8.1f} {result.tokens_per_second:>9.1f} "
              f"{mfu:>6.1%} {result.padding_overhead:>9.2f} {reference:>10}")
    print("tokens: non-padding tokens of the timed steps' training rows (prompt + chosen, prompt + rejected);")
    print("ref pass s: the one-off reference pass before step 1 (not in the timed steps); '-': none, "
          "(b)/(b2) run the reference every step, inside the timed steps")
    for run in runs.values():
        print(f"  {run.result.name.split(' ', 1)[0]}: {run.result.notes}; weights {run.weights}")
    print()
    for service, trl in COMPARED:
        if service in runs and trl in runs:
            ratio = runs[service].result.tokens_per_second / runs[trl].result.tokens_per_second
            print(f"ratio {service} / {trl}: {ratio:.2f}   [{runs[trl].result.notes}]")
    mine = [label for label in runs if label.startswith("(a")]
    theirs = [label for label in runs if label.startswith("(b")]
    if mine and theirs:
        service_tokens = runs[mine[0]].step_tokens
        trl_tokens = runs[theirs[0]].step_tokens
        same = "identical per step" if service_tokens == trl_tokens else "per-step counts differ"
        print(f"non-padding tokens, same batches, all {len(service_tokens)} steps: service {sum(service_tokens)}, "
              f"TRL {sum(trl_tokens)} ({same})")
    print()
    print("training loss per step (same pairs, same batches; step 1 is the starting model: log 2 = 0.6931):")
    for label, run in runs.items():
        print(f"  {label:<5} " + " ".join(f"{loss:.4f}" for loss in run.losses[:8])
              + (f" ... {run.losses[-1]:.4f}" if len(run.losses) > 8 else ""))
    for bf16, fp32, who in (("(a2)", "(a)", "service"), ("(b3)", "(b4)", "TRL")):
        if bf16 in runs and fp32 in runs:
            differences = [b - a for a, b in zip(runs[fp32].losses, runs[bf16].losses)]
            print(f"  {who}, bf16 - fp32 per step: mean |difference| {statistics.mean(map(abs, differences)):.4f}, "
                  f"largest {max(differences, key=abs):+.4f}")
    if "(a)" in runs and "(b4)" in runs:
        differences = [b - a for a, b in zip(runs["(a)"].losses, runs["(b4)"].losses)]
        print(f"  fp32, TRL - service per step: mean |difference| {statistics.mean(map(abs, differences)):.4f}, "
              f"largest {max(differences, key=abs):+.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{TIMED_STEPS['quick']} timed steps instead of {TIMED_STEPS['full']}")
    parser.add_argument("--timed-steps", type=int, help="timed steps (default: as --quick says)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one step of the service and of TRL ((b3), (b4)) in each dtype")
    parser.add_argument("--only", nargs="*", help="run only these rows, e.g. --only '(a2)' '(b3)'")
    args = parser.parse_args()

    from transformers.utils import logging as transformers_logging

    from worker.compute import choose_compute_dtype

    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    print(f"load average at the start: {' '.join(f'{value:.2f}' for value in os.getloadavg())}", flush=True)
    setup = prepare(args.timed_steps or TIMED_STEPS["quick" if args.quick else "full"])
    peaks = {dtype: [measure_matmul_peak(dtype)] for dtype in DTYPES}
    probe = choose_compute_dtype("cpu")
    wanted = set(args.only or [])
    runs: dict[str, DpoRun] = {}
    with tempfile.TemporaryDirectory(prefix="tunehouse-bench-dpo-") as tmp_name:
        tmp = Path(tmp_name)
        for label in RUN_ORDER:
            if wanted and label not in wanted:
                continue
            started = os.getloadavg()[0]
            if label in SERVICE_DTYPES:
                print(f"{label} service DPO, {SERVICE_DTYPES[label]} ...", flush=True)
                run = run_service(setup, tmp / f"service-{SERVICE_DTYPES[label]}", SERVICE_DTYPES[label])
            else:
                trl_run = next(trl_run for trl_run in TRL_RUNS if trl_run.label == label)
                print(f"{trl_run.name} ...", flush=True)
                run = run_trl(setup, tmp / f"trl-{label.strip('()')}", trl_run)
            run.result.notes += f"; load average {started:.1f} -> {os.getloadavg()[0]:.1f}"
            runs[label] = run
            print(f"    {run.result.tokens_per_second:.1f} tokens/s", flush=True)
        runs = {label: runs[label] for label in REPORT_ORDER if label in runs}
        for dtype in DTYPES:
            peaks[dtype].append(measure_matmul_peak(dtype))
        report(setup, peaks, probe, runs)
        if args.profile:
            profile_setup = Setup(**{**vars(setup), "examples": setup.examples[: BATCH_SIZE * PROFILE_STEPS],
                                     "warmup_steps": PROFILE_STEPS, "timed_steps": 0})
            for dtype, trl_run in (("bfloat16", TRL_RUNS[2]), ("float32", TRL_RUNS[3])):
                profiler = StepProfiler(after=PROFILE_STEPS - 1)
                run_service(profile_setup, tmp / f"profile-service-{dtype}", dtype, profiler)
                profiler.print(f"the service's DPO, {dtype}")
                profiler = StepProfiler(after=PROFILE_STEPS - 1)
                run_trl(profile_setup, tmp / f"profile-trl-{dtype}", trl_run, profiler)
                profiler.print(trl_run.name)
    print(f"load average at the end: {' '.join(f'{value:.2f}' for value in os.getloadavg())}")


if __name__ == "__main__":
    main()
