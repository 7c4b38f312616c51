"""QLoRA training throughput on a GPU: the service's trainer against a TRL
reference, on a Llama-3-8B-shaped model built from a config (random weights:
throughput does not depend on them).

    python bench/train_throughput_gpu.py [--tokenizer DIR] [--timed-steps 20] [--tiny]

Both runs: 4-bit NF4 with double quantization and bf16 compute, LoRA r=16,
alpha=32, dropout 0.05 on all linear layers, batch size 4, lr 2e-4, paged 8-bit
AdamW, gradient checkpointing, the same synthetic chats as
bench/train_throughput.py (long-tailed lengths, ~90 tokens on average).

(a) `worker.training.recipe.train` with the service's QLoRA defaults and
    packing (padding-free batching).
(b) TRL SFTTrainer + PEFT, no packing (batches padded to their longest), the
    model loaded with the same BitsAndBytesConfig, bf16, optim paged_adamw_8bit,
    TRL's defaults otherwise (gradient checkpointing on).

MFU = 4 x N x tokens/s / measured bf16 matmul peak (8192^3, best of 10).
--tiny: a two-layer model on the CPU (fp32 LoRA), to check the script itself.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from tests.tiny_model import TINY_CONFIG  # noqa: E402
from bench.train_throughput import BATCH_SIZE, LEARNING_RATE, LORA, SEED, WARMUP_STEPS, make_examples, percentile  # noqa: E402

LLAMA3_8B_SHAPE = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
    max_position_embeddings=8192,
    rope_theta=500000.0,
    tie_word_embeddings=False,
)
TINY_SHAPE = {**TINY_CONFIG, "vocab_size": 49152}  # the test suite's tiny Llama, SmolLM2's vocabulary
MFU_FACTOR = 4


def build_model(out_dir: Path, tokenizer_dir: Path, shape: dict, device: str) -> int:
    """Random-weight Llama of `shape`, saved as safetensors with the tokenizer. Returns N params."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **shape
    )
    torch.manual_seed(SEED)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return n_params


def matmul_peak(device: str) -> float:
    size, dtype = (8192, torch.bfloat16) if device == "cuda" else (1024, torch.float32)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = math.inf
    for i in range(13):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        torch.matmul(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= 3:
            best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def hyperparameters(model_dir: Path, examples: list[dict], device: str, adapter: str) -> dict:
    from domain.jobs.hyperparameters import MAX_INTERVAL, DatasetStats, plain_values, resolve
    from worker.training.recipe import load_tokenizer, token_lengths

    lengths = sorted(token_lengths(load_tokenizer(model_dir), examples))
    requested = {
        "n_epochs": 1, "batch_size": BATCH_SIZE, "learning_rate": LEARNING_RATE, "adapter": adapter, **LORA,
        "packing": True, "checkpoint_interval": MAX_INTERVAL, "eval_interval": MAX_INTERVAL,
    }
    stats = DatasetStats(len(examples), 0, percentile(lengths, 0.99), lengths[-1], sum(lengths))
    resolved = plain_values(resolve(requested, stats, model_max_length=8192, device=device))
    print(
        f"data: {len(examples)} chats, tokens mean {statistics.mean(lengths):.1f}, p50 {percentile(lengths, 0.5)}, "
        f"p95 {percentile(lengths, 0.95)}, max {lengths[-1]}; max_seq_length {resolved['max_seq_length']}",
        flush=True,
    )
    return resolved


def run_service(model_dir: Path, examples: list[dict], hp: dict, device: str, work_dir: Path) -> tuple[float, dict]:
    from worker.training.recipe import TrainingConfig, TrainingHooks, train

    rows: list[dict] = []
    hooks = TrainingHooks(on_metrics=lambda m: rows.append({**m, "at": time.perf_counter()}))
    result = train(TrainingConfig(model_dir, dict(hp), SEED, device), examples, [], work_dir, hooks)
    warm = rows[WARMUP_STEPS - 1]
    tokens = rows[-1]["trained_tokens"] - warm["trained_tokens"]
    return tokens / (rows[-1]["at"] - warm["at"]), result.method


def run_trl(model_dir: Path, examples: list[dict], hp: dict, device: str, out_dir: Path, steps: int) -> float:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    step_tokens: dict[int, int] = {}
    step_ended: dict[int, float] = {}

    class CountingSFTTrainer(SFTTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            step_tokens[self.state.global_step + 1] = int(inputs["attention_mask"].sum())
            return super().training_step(model, inputs, num_items_in_batch)

    class StepTimes(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if device == "cuda":
                torch.cuda.synchronize()
            step_ended[state.global_step] = time.perf_counter()

    on_cuda = device == "cuda"
    model_kwargs = {"dtype": torch.bfloat16 if on_cuda else torch.float32}
    if on_cuda:
        model_kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16
        )
    args = SFTConfig(
        output_dir=str(out_dir),
        per_device_train_batch_size=BATCH_SIZE,
        learning_rate=LEARNING_RATE,
        max_steps=steps,
        max_length=hp["max_seq_length"],
        bf16=on_cuda,
        optim="paged_adamw_8bit" if on_cuda else "adamw_torch",
        seed=SEED,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        model_init_kwargs=model_kwargs,
    )
    peft_config = LoraConfig(
        r=LORA["lora_r"], lora_alpha=LORA["lora_alpha"], lora_dropout=LORA["lora_dropout"],
        target_modules="all-linear", task_type="CAUSAL_LM",
    )
    dataset = Dataset.from_list([{"messages": e["messages"]} for e in examples])
    trainer = CountingSFTTrainer(
        model=str(model_dir), args=args, train_dataset=dataset, peft_config=peft_config, callbacks=[StepTimes()]
    )
    trainer.train()
    tokens = sum(step_tokens[s] for s in range(WARMUP_STEPS + 1, steps + 1))
    return tokens / (step_ended[steps] - step_ended[WARMUP_STEPS])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", type=Path, required=True, help="a folder with SmolLM2's tokenizer files")
    parser.add_argument("--timed-steps", type=int, default=20)
    parser.add_argument("--tiny", action="store_true", help="two-layer model on the CPU, to check the script")
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args()
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()

    device = "cpu" if args.tiny else "cuda"
    adapter = "lora" if args.tiny else "qlora"
    steps = WARMUP_STEPS + args.timed_steps
    work = Path(tempfile.mkdtemp(prefix="tunehouse-gpu-bench-", dir=args.work_dir))
    try:
        started = time.perf_counter()
        n_params = build_model(work / "model", args.tokenizer, TINY_SHAPE if args.tiny else LLAMA3_8B_SHAPE, device)
        print(f"model: {'tiny' if args.tiny else 'Llama-3-8B shape'}, N = {n_params:,} ({time.perf_counter() - started:.0f} s to build)", flush=True)
        peak = matmul_peak(device)
        print(f"matmul peak: {peak / 1e12:.1f} TFLOP/s", flush=True)
        examples = make_examples(BATCH_SIZE * steps)
        hp = hyperparameters(work / "model", examples, device, adapter)
        service, method = run_service(work / "model", examples, hp, device, work / "service")
        print(f"(a) service trainer ({method['adapter']}, {method['optimizer']}, packing): {service:.0f} tokens/s", flush=True)
        if device == "cuda":
            torch.cuda.empty_cache()
        reference = run_trl(work / "model", examples, hp, device, work / "trl", steps)
        print(f"(b) TRL SFTTrainer (no packing): {reference:.0f} tokens/s", flush=True)
        if device == "cuda":
            print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
        print(f"{WARMUP_STEPS} warm-up + {args.timed_steps} timed steps, batch {BATCH_SIZE}")
        for name, rate in (("(a) service", service), ("(b) TRL reference", reference)):
            print(f"{name:<20} {rate:>9.0f} tokens/s   MFU {MFU_FACTOR * n_params * rate / peak:6.1%}")
        print(f"ratio (a)/(b): {service / reference:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
