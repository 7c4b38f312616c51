"""The fine-tuning recipe: LoRA / QLoRA on a causal LM, one flat module.

Read `train()` top to bottom: setup (model, adapter, optimizer, scheduler),
data, the training loop with its evaluations and checkpoints, and the final
save. The helpers below it follow the same order.

The math, so a run can be reproduced without this service:
- loss (supervised): cross-entropy on trained tokens only (assistant
  messages, completions, or every token of raw text); one optimizer step per batch
  of `batch_size` examples, split into `gradient_accumulation_steps`
  micro-batches; the step's loss is the sum of token losses over the whole
  batch divided by the batch's number of trained tokens (so accumulation
  does not change the result);
- data order: each epoch a permutation of the training examples drawn from a
  torch.Generator seeded from (seed, epoch);
- total_steps = n_epochs * ceil(n_train / batch_size); learning rate schedule
  transformers.get_scheduler(lr_scheduler, warmup = ceil(warmup_ratio * total_steps));
- precision: matmuls in `compute_dtype` (worker/compute.py measures which one
  the machine computes faster); on CPU in bf16 by autocast over fp32 weights,
  the LoRA weights and the AdamW state always fp32;
- attention: each example attends only within itself, packed or padded (on
  CPU by cutting rows at example boundaries, worker/training/attention.py);
- method "dpo": a batch is `batch_size` preference pairs, the loss DPO's
  sigmoid loss per pair averaged over the batch, the reference log-probabilities
  those of the starting weights, computed once before the first step
  (worker/training/preference.py); the two outputs of each pair are rows of
  one padded micro-batch (not packed).

The worker's job runner and the `tunehouse train` command both call `train()`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from worker.compute import ComputeChoice, choose_compute_dtype
from worker.training import preference
from worker.training.attention import ATTENTION_NAME, register_segment_attention, segment_attention_supported
from worker.training.memory import MemoryMeter
from worker.training.data import (
    IGNORE_INDEX,
    TokenizedExample,
    pack_batch,
    split_text,
    tokenize_dataset,
    truncate,
)
from domain.files.validation.formats import TEXT, detect_format

TRAINING_STATE_FILE = "training_state.pt"
TRAINER_STATE_FILE = "trainer_state.json"
TRAINING_STATE_VERSION = 1
# Attention where segment attention (worker/training/attention.py) does not
# apply: transformers builds the per-example mask of packed rows from position_ids.
ATTENTION = "sdpa"


# --------------------------------------------------------------------------
# Interface


def _ignore_message(message: str, data: dict | None = None) -> None:
    pass


def _ignore(*args: Any) -> None:
    pass


def _never_stop() -> bool:
    return False


@dataclass
class TrainingHooks:
    """How the caller follows and steers a run. All optional."""

    # Phase messages: "Loading base model", "Tokenized N examples (...)", "Epoch 2/3",
    # "Evaluating", "Checkpoint at step 40", "Resumed from step 40", "Training done".
    on_message: Callable[[str, dict | None], None] = _ignore_message
    # After every optimizer step: step, total_steps, epoch, train_loss, learning_rate,
    # tokens_per_second, trained_tokens, and valid_loss on evaluation steps.
    on_metrics: Callable[[dict], None] = _ignore
    # (step, checkpoint_dir, metrics) once a complete checkpoint exists locally; the
    # caller uploads it. After it returns, older local checkpoints are deleted.
    on_checkpoint: Callable[[int, Path, dict], None] = _ignore
    # Checked before every optimizer step (and between evaluation batches).
    should_stop: Callable[[], bool] = _never_stop
    # Checked before every optimizer step: yes means "save a checkpoint of the
    # steps done so far, then stop" (the worker is shutting down; another one
    # resumes from that checkpoint).
    should_pause: Callable[[], bool] = _never_stop


@dataclass
class TrainingConfig:
    base_model_dir: Path  # config.json, *.safetensors and tokenizer files
    hyperparameters: dict[str, Any]  # resolved plain values (domain/jobs/hyperparameters.py)
    seed: int
    device: str = "auto"  # "auto": cuda if available, else cpu
    method: str = "supervised"  # or "dpo": the examples are preference lines
    # A fine-tune of a fine-tune: the parent's PEFT adapter folder, trained on
    # from where it is (its LoRA settings are the parent's) instead of a fresh LoRA.
    init_adapter_dir: Path | None = None
    # Where the machine's dtype probe is kept (worker/compute.py); None: probe in this process.
    compute_probe_file: Path | None = None


@dataclass
class TrainingResult:
    adapter_dir: Path | None  # work_dir/"adapter"; None if stopped
    steps: int
    total_steps: int
    trained_tokens: int  # non-padding tokens processed in training, over all epochs
    train_loss: float | None  # the last step's
    valid_loss: float | None  # the final evaluation's; None without eval examples
    truncated_examples: int
    stopped: bool
    method: dict  # what was actually used (adapter, device, dtype, quantization, ...)
    paused: bool = False  # stopped by should_pause, with a checkpoint of every step done
    memory: dict | None = None  # the run's peak memory (worker/training/memory.py)


class _StopRequested(Exception):
    """should_stop() said yes: unwind to train() and return stopped=True."""


def token_lengths(tokenizer, examples: list[dict]) -> list[int]:
    """Untruncated token counts, for the caller's hyperparameter resolution."""
    return [len(example.input_ids) for example in tokenize_dataset(tokenizer, examples)]


# --------------------------------------------------------------------------
# The recipe


def train(
    config: TrainingConfig,
    train_examples: list[dict],
    eval_examples: list[dict],
    work_dir: Path,
    hooks: TrainingHooks | None = None,
    resume_from: Path | None = None,
    tokenizer=None,
) -> TrainingResult:
    """`tokenizer`: the base model's, when the caller has loaded it already."""
    hooks = hooks or TrainingHooks()
    hp = config.hyperparameters
    work_dir = Path(work_dir)
    checkpoints_dir = work_dir / "checkpoints"
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    _remove_unfinished_checkpoints(checkpoints_dir)
    if not train_examples:
        raise ValueError("there are no training examples")

    # ---- Setup: model, adapter -------------------------------------------
    device = resolve_device(config.device)
    memory = MemoryMeter(device)
    hooks.on_message("Loading base model", {"base_model_dir": str(config.base_model_dir), "device": device})
    tokenizer = load_tokenizer(config.base_model_dir) if tokenizer is None else check_chat_template(tokenizer, config.base_model_dir)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    compute = choose_compute_dtype(device, hp.get("compute_dtype") or "auto", config.compute_probe_file)
    set_seed(config.seed)  # before the adapter exists: LoRA's initial weights are random
    model, method = load_model(config.base_model_dir, hp["adapter"], device, compute)
    if hp["adapter"] != "full":  # full fine-tuning trains every weight: no adapter
        model = add_lora_adapter(model, hp, config.init_adapter_dir)
    method["target_modules"] = lora_target_module_names(model)
    head_weight = prepare_for_autocast(model) if method["autocast"] else None

    # ---- Data --------------------------------------------------------------
    max_seq_length = int(hp["max_seq_length"])
    dpo = config.method == "dpo"
    tokenize = preference.tokenize_pairs if dpo else tokenize_and_truncate
    train_data, train_truncated = tokenize(tokenizer, train_examples, max_seq_length)
    eval_data, eval_truncated = tokenize(tokenizer, eval_examples, max_seq_length)
    truncated_examples = train_truncated + eval_truncated
    hooks.on_message(
        f"Tokenized {len(train_data) + len(eval_data)} examples "
        f"({truncated_examples} truncated to {max_seq_length} tokens)",
        {
            "train_examples": len(train_data),
            "eval_examples": len(eval_data),
            "truncated_examples": truncated_examples,
            "max_seq_length": max_seq_length,
            "train_tokens": sum(len(example) for example in train_data),
            "train_examples_without_trained_tokens": sum(1 for e in train_data if e.trained_tokens == 0),
        },
    )
    method["training_method"] = config.method

    # ---- Optimizer, scheduler ---------------------------------------------
    n_epochs = int(hp["n_epochs"])
    batch_size = int(hp["batch_size"])
    accumulation_steps = int(hp.get("gradient_accumulation_steps") or 1)
    micro_batch_size = math.ceil(batch_size / accumulation_steps)
    batching = Batching(
        micro_batch_size=micro_batch_size,
        max_seq_length=max_seq_length,
        pad_token_id=pad_token_id,
        # DPO reads each output's log-probability from its own row.
        packing=bool(hp.get("packing", False)) and not dpo,
        device=device,
        segment_attention=method["attention"] == ATTENTION_NAME,
        autocast=method["autocast"],
        head_weight=head_weight,
    )
    steps_per_epoch = math.ceil(len(train_data) / batch_size)
    total_steps = n_epochs * steps_per_epoch
    optimizer, method["optimizer"] = make_optimizer(model, hp, method)
    scheduler = make_scheduler(optimizer, hp, total_steps)
    run_shape = {"seed": config.seed, "train_examples": len(train_data), "batch_size": batch_size,
                 "n_epochs": n_epochs, "total_steps": total_steps}

    step, trained_tokens, last_metrics = 0, 0, {}

    def stopped_result(paused: bool = False) -> TrainingResult:
        return TrainingResult(
            adapter_dir=None, steps=step, total_steps=total_steps, trained_tokens=trained_tokens,
            train_loss=last_metrics.get("train_loss"), valid_loss=None,
            truncated_examples=truncated_examples, stopped=True, method=method, paused=paused,
        )

    def checkpoint(metrics: dict) -> None:
        checkpoint_dir = save_checkpoint(
            checkpoints_dir, model, optimizer, scheduler, step, steps_per_epoch,
            trained_tokens, metrics, run_shape, hp, device,
        )
        hooks.on_message(f"Checkpoint at step {step}", {"step": step})
        hooks.on_checkpoint(step, checkpoint_dir, metrics)
        remove_older_checkpoints(checkpoints_dir, keep=checkpoint_dir)

    def stop_if_asked() -> None:
        if hooks.should_stop():
            raise _StopRequested

    if dpo:
        beta = float(hp["beta"])
        # Before resume() loads trained weights: the reference is the starting model.
        hooks.on_message("Computing the reference model's log-probabilities",
                         {"pairs": len(train_data) + len(eval_data)})
        try:
            reference_log_probs(model, train_data + eval_data, batching, stop_if_asked)
        except _StopRequested:
            return stopped_result()

    # ---- Resume ------------------------------------------------------------
    if resume_from is not None:
        step, trained_tokens, last_metrics = resume(Path(resume_from), model, optimizer, scheduler, run_shape, device)
        hooks.on_message(f"Resumed from step {step}", {"step": step, "total_steps": total_steps})

    # ---- Training loop -----------------------------------------------------
    eval_interval = int(hp.get("eval_interval") or 0)
    checkpoint_interval = int(hp.get("checkpoint_interval") or 0)
    first_epoch, first_batch = divmod(step, steps_per_epoch)
    checkpointed_step = step
    try:
        for epoch in range(first_epoch, n_epochs):
            hooks.on_message(f"Epoch {epoch + 1}/{n_epochs}", {"epoch": epoch + 1, "n_epochs": n_epochs})
            order = epoch_order(config.seed, epoch, len(train_data))
            for batch_index in range(first_batch if epoch == first_epoch else 0, steps_per_epoch):
                stop_if_asked()
                if hooks.should_pause():
                    if step > checkpointed_step:
                        checkpoint(last_metrics)
                    return stopped_result(paused=True)
                batch = [train_data[i] for i in order[batch_index * batch_size : (batch_index + 1) * batch_size]]
                learning_rate = scheduler.get_last_lr()[0]
                memory.step_started()
                started = time.perf_counter()
                if dpo:
                    step_metrics, batch_tokens = dpo_train_step(
                        model, optimizer, scheduler, batch, batching, beta, hp.get("max_grad_norm"))
                else:
                    train_loss, batch_tokens = train_step(
                        model, optimizer, scheduler, batch, batching, hp.get("max_grad_norm"))
                    step_metrics = {"train_loss": train_loss}
                seconds = time.perf_counter() - started
                step += 1
                trained_tokens += batch_tokens
                metrics = {
                    "step": step,
                    "total_steps": total_steps,
                    "epoch": round(step / steps_per_epoch, 4),
                    **step_metrics,
                    "learning_rate": learning_rate,
                    "tokens_per_second": batch_tokens / seconds if seconds > 0 else 0.0,
                    "trained_tokens": trained_tokens,
                }
                if eval_data and (step == total_steps or (eval_interval and step % eval_interval == 0)):
                    hooks.on_message("Evaluating", {"step": step, "eval_examples": len(eval_data)})
                    if dpo:
                        metrics.update(evaluate_dpo(model, eval_data, batching, beta, stop_if_asked))
                    else:
                        metrics["valid_loss"] = evaluate(model, eval_data, batching, stop_if_asked)
                metrics.update(memory.step_metrics())  # after any evaluation: its peak counts too
                hooks.on_metrics(metrics)
                last_metrics = metrics

                end_of_epoch = batch_index == steps_per_epoch - 1
                if end_of_epoch or (checkpoint_interval and step % checkpoint_interval == 0):
                    checkpoint(metrics)
                    checkpointed_step = step
    except _StopRequested:
        return stopped_result()

    # ---- Save --------------------------------------------------------------
    adapter_dir = save_adapter(model, work_dir / "adapter")
    hooks.on_message("Training done", {"step": step, "adapter_dir": str(adapter_dir)})
    return TrainingResult(
        adapter_dir=adapter_dir,
        steps=step,
        total_steps=total_steps,
        trained_tokens=trained_tokens,
        train_loss=last_metrics.get("train_loss"),
        valid_loss=last_metrics.get("valid_loss") if eval_data else None,  # evaluated at the last step
        truncated_examples=truncated_examples,
        stopped=False,
        method=method,
        memory=memory.run_peak(),
    )


# --------------------------------------------------------------------------
# Setup


def resolve_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {requested!r}")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for, but torch sees no CUDA device")
    return requested


def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    try:
        import numpy

        numpy.random.seed(seed % 2**32)
    except ImportError:
        pass


def load_tokenizer(base_model_dir: Path):
    from transformers import AutoTokenizer

    return check_chat_template(AutoTokenizer.from_pretrained(base_model_dir, trust_remote_code=False), base_model_dir)


def check_chat_template(tokenizer, base_model_dir: Path):
    if not tokenizer.chat_template:
        raise ValueError(f"the tokenizer in {base_model_dir} has no chat template; a chat model is needed")
    return tokenizer


def load_model(base_model_dir: Path, adapter: str, device: str, compute: ComputeChoice) -> tuple[torch.nn.Module, dict]:
    """The base model, frozen, ready for an adapter; and the method record.

    `compute` (worker/compute.py) says which dtype the matmuls run in. CUDA:
    the weights in that dtype (bf16 where the GPU has it), or for qlora 4-bit
    NF4 with double quantization computing in it; gradient checkpointing,
    where memory is what limits the batch. CPU: fp32 weights; with bf16
    compute, the forward and backward passes run under bf16 autocast (matmuls
    in bf16; norms, softmax, losses, the residual stream, the LoRA weights
    and the optimizer state stay fp32). qlora on CPU computes in fp32.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig

    if adapter not in ("lora", "qlora", "full"):
        raise ValueError(f"adapter must be 'lora', 'qlora' or 'full', got {adapter!r}")
    on_cuda = device == "cuda"
    if adapter == "qlora" and not on_cuda and compute.dtype != "float32":
        compute = ComputeChoice(
            "cpu", "float32", "qlora on CPU computes in fp32 (bitsandbytes' 4-bit CPU path); "
            f"not {compute.dtype} ({compute.reason})", compute.fp32_gflops, compute.bf16_gflops,
        )
    compute_dtype = getattr(torch, compute.dtype)
    dtype = compute_dtype if on_cuda else torch.float32
    autocast = not on_cuda and compute_dtype == torch.bfloat16
    gradient_checkpointing = on_cuda
    # Segment attention on CPU, where the masked blocks of dense attention over
    # packed rows are most of a step's attention time; CUDA keeps sdpa's kernels.
    attention = ATTENTION
    if not on_cuda and segment_attention_supported(AutoConfig.from_pretrained(base_model_dir, trust_remote_code=False)):
        attention = register_segment_attention()
    safe_loading = dict(trust_remote_code=False, use_safetensors=True, attn_implementation=attention)
    quantization = None

    if adapter == "qlora":
        from peft import prepare_model_for_kbit_training

        quantization = {
            "load_in_4bit": True,
            "bnb_4bit_quant_type": "nf4",
            "bnb_4bit_use_double_quant": True,
            "bnb_4bit_compute_dtype": compute.dtype,
        }
        quantization_config = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
        device_map = {"": torch.cuda.current_device() if on_cuda else "cpu"}
        try:
            model = AutoModelForCausalLM.from_pretrained(
                base_model_dir, quantization_config=quantization_config, dtype=dtype, device_map=device_map, **safe_loading
            )
        except Exception as error:
            if on_cuda:
                raise
            raise RuntimeError(
                f"qlora (bitsandbytes 4-bit) does not work on this CPU: {error}; use adapter 'lora' on CPU"
            ) from error
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=dtype, **safe_loading).to(device)
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    # With a cache, transformers does not detect packed sequences from position_ids
    # (examples in a packed row would attend to each other); training needs none.
    model.config.use_cache = False
    method = {
        "adapter": adapter,
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),  # the base model's weights as loaded
        "compute_dtype": compute.dtype,
        "compute": compute.as_dict(),  # why, and the probe's GFLOP/s on CPU
        "autocast": autocast,
        "attention": attention,
        "quantization": quantization,
        "gradient_checkpointing": gradient_checkpointing,
    }
    return model, method


def prepare_for_autocast(model) -> torch.Tensor | None:
    """bf16 autocast on CPU, sound and without recomputing what does not
    change: LoRA updates added in fp32, the frozen weights stored in bf16
    once, LoRA inputs not cast up and back. Returns the output layer's weight
    in bf16, for summed_token_loss."""
    lora_sums_in_fp32(model)
    frozen_linear_weights_to(model, torch.bfloat16)
    lora_inputs_uncast(model)
    return frozen_head_weight(model, torch.bfloat16)


def _output_to_fp32(module, inputs, output):
    return output.float()


def lora_sums_in_fp32(model) -> None:
    """Each LoRA layer's frozen base output in fp32, so that the LoRA update
    is added to it in fp32. Under plain autocast both are bf16 and so is their
    sum: an update below bf16's resolution (8 bits: 1/256 of the output),
    which is what LoRA's first steps make, is rounded away in the forward
    pass, and on SmolLM2 the training loss drifted up to 0.15 above fp32's
    within 12 steps; with the sum in fp32 it stays within 0.01 (bench/README.md).
    The matmuls stay bf16; what follows them (rotary embedding, attention,
    the residual stream) is fp32 anyway, except the MLP's gate * up product."""
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.get_base_layer().register_forward_hook(_output_to_fp32)


def frozen_linear_weights_to(model, dtype: torch.dtype) -> None:
    """Stores the frozen weights of linear layers in `dtype` (bf16 under bf16
    autocast). Autocast casts every fp32 weight to bf16 again on every
    forward pass: the same numbers, recomputed each step (a sixth of a CPU
    step for SmolLM2-135M). Embeddings, norms, the output layer (tied to the
    embeddings) and every trainable weight keep their dtype."""
    head = model.get_output_embeddings()
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module is not head and not module.weight.requires_grad:
            module.weight.data = module.weight.data.to(dtype)


def frozen_head_weight(model, dtype: torch.dtype) -> torch.Tensor | None:
    """The output layer's weight in `dtype`, once, when it is frozen and
    plain: under autocast the head would convert it on every forward pass
    (49152 x 576 for SmolLM2, as long as the head's own matmul on a CPU). A
    copy, since the weight is tied to the input embeddings, which stay fp32."""
    parts = _plain_head_parts(model)
    if parts is None:
        return None
    head = parts[1]
    if type(head) is not torch.nn.Linear or head.bias is not None or head.weight.requires_grad:
        return None
    return head.weight.detach().to(dtype)


def lora_inputs_uncast(model) -> None:
    """Under autocast, PEFT's LoRA layers cast a bf16 input (the attention
    output, the MLP's product) up to their fp32 weights' dtype, and autocast
    casts it straight back to bf16 for the matmul: the same numbers, two
    copies per layer and their backward. Turned off (PEFT's documented switch)."""
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.cast_input_dtype_enabled = False


def add_lora_adapter(model, hp: dict, init_adapter_dir: Path | None = None):
    """A fresh LoRA adapter as `hp` says, or, given `init_adapter_dir`, that
    adapter (a parent fine-tune's) loaded trainable, to train on from its weights."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if init_adapter_dir is not None:
        return PeftModel.from_pretrained(model, str(init_adapter_dir), is_trainable=True)

    target_modules = hp.get("target_modules", "all-linear")
    lora_config = LoraConfig(
        r=int(hp["lora_r"]),
        lora_alpha=hp["lora_alpha"],
        lora_dropout=float(hp["lora_dropout"]),
        target_modules="all-linear" if target_modules == "all-linear" else list(target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora_config)


def lora_target_module_names(model) -> list[str]:
    """The layer names LoRA was actually put on (e.g. q_proj, down_proj)."""
    from peft.tuners.lora import LoraLayer

    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, LoraLayer)})


def make_optimizer(model, hp: dict, method: dict) -> tuple[torch.optim.Optimizer, str]:
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    learning_rate = float(hp["learning_rate"])
    weight_decay = float(hp.get("weight_decay") or 0.0)
    if method["adapter"] in ("qlora", "full") and method["device"] == "cuda":
        # Paged: optimizer state moves to CPU memory under GPU memory pressure.
        # Full fine-tuning on CUDA: bf16 weights and gradients, 8-bit AdamW
        # moments (2 bytes a weight instead of 8).
        from bitsandbytes.optim import PagedAdamW8bit

        return PagedAdamW8bit(parameters, lr=learning_rate, weight_decay=weight_decay), "paged_adamw_8bit"
    return torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=weight_decay), "adamw_torch"


def make_scheduler(optimizer, hp: dict, total_steps: int):
    from transformers import get_scheduler

    warmup_steps = math.ceil(float(hp.get("warmup_ratio") or 0.0) * total_steps)
    return get_scheduler(
        hp.get("lr_scheduler") or "linear", optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps
    )


# --------------------------------------------------------------------------
# Data


def tokenize_and_truncate(tokenizer, examples: list[dict], max_seq_length: int) -> tuple[list[TokenizedExample], int]:
    """Rows of at most max_seq_length tokens: a long raw text becomes several
    rows (split_text), any other long example is truncated (and counted)."""
    tokenized, truncated_count = [], 0
    for raw, example in zip(examples, tokenize_dataset(tokenizer, examples)):
        if len(example) > max_seq_length and detect_format(raw) == TEXT:
            tokenized.extend(split_text(example, max_seq_length))
            continue
        example, was_truncated = truncate(example, max_seq_length)
        tokenized.append(example)
        truncated_count += was_truncated
    return tokenized, truncated_count


def epoch_order(seed: int, epoch: int, n_examples: int) -> list[int]:
    """The permutation of the training examples for one epoch; a function of
    (seed, epoch) alone, so a resumed run continues at the exact position."""
    digest = hashlib.sha256(f"tunehouse-data-order:{seed}:{epoch}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)
    return torch.randperm(n_examples, generator=generator).tolist()


def micro_batches(batch: list[TokenizedExample], micro_batch_size: int) -> list[list[TokenizedExample]]:
    return [batch[start : start + micro_batch_size] for start in range(0, len(batch), micro_batch_size)]


# --------------------------------------------------------------------------
# Training step and evaluation


# Causal LMs whose logits are exactly lm_head(last hidden state): no logit
# soft-capping or scaling after the head. For these the head runs on the
# trained positions only (below); any other architecture gets full logits.
_PLAIN_HEAD_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "smollm3", "gemma", "olmo", "olmo2"})


def _plain_head_parts(model):
    """(decoder, lm_head) when the head can be applied to chosen positions, else None."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(inner.config, "model_type", None) not in _PLAIN_HEAD_MODEL_TYPES:
        return None
    decoder, head = inner.get_decoder(), inner.get_output_embeddings()
    return (decoder, head) if decoder is not None and head is not None else None


@dataclass(frozen=True)
class Batching:
    """How examples become model inputs, and the forward pass's context."""

    micro_batch_size: int
    max_seq_length: int
    pad_token_id: int
    packing: bool
    device: str
    segment_attention: bool = False  # the model attends within segments (worker/training/attention.py)
    autocast: bool = False  # bf16 autocast on CPU
    head_weight: torch.Tensor | None = None  # the frozen output layer's weight in the autocast dtype

    def inputs(self, micro_batch: list[TokenizedExample]) -> dict:
        return pack_batch(micro_batch, self.row_length(micro_batch), self.pad_token_id, self.packing)

    def row_length(self, micro_batch: list[TokenizedExample]) -> int:
        """The longest row pack_batch may make. Segment attention costs the same
        however examples share rows: one row holds the whole micro-batch, with
        no padding at all. Dense attention over a packed row grows with the
        square of its length: rows stay near PACKED_ROW_TOKENS."""
        if not self.packing:
            return self.max_seq_length
        if self.segment_attention:
            return max(self.max_seq_length, sum(len(example) for example in micro_batch))
        return max(self.max_seq_length, PACKED_ROW_TOKENS)

    def forward_context(self):
        if self.autocast:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()


def trained_logits(model, inputs: dict, batching: Batching) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits, targets, rows) at the trained positions of a packed/padded
    batch: logits [n, vocab] in fp32, the tokens they predict [n], and the row
    each position is in [n].

    Only trained tokens (assistant messages, completions, preference
    outputs) need logits, often a small share of a row: the vocabulary
    projection (the largest single matmul of a small model, and its logits
    the largest tensor) runs on those positions alone."""
    device = batching.device
    keys = ("input_ids", "position_ids") if batching.segment_attention else ("input_ids", "position_ids", "attention_mask")
    model_inputs: dict[str, Any] = {key: inputs[key].to(device) for key in keys if key in inputs}
    if batching.segment_attention:
        model_inputs["segments"] = inputs["segments"]
    # Position t predicts token t+1.
    targets = inputs["labels"][:, 1:].to(device)
    trained = targets != IGNORE_INDEX
    rows = trained.nonzero()[:, 0]
    parts = _plain_head_parts(model)
    with batching.forward_context():
        if parts is None:
            logits = model(**model_inputs, use_cache=False).logits[:, :-1, :]
            return logits[trained].float(), targets[trained], rows
        decoder, head = parts
        hidden = decoder(**model_inputs, use_cache=False).last_hidden_state[:, :-1, :]
        if batching.head_weight is not None:
            logits = F.linear(hidden[trained], batching.head_weight)
        else:
            logits = head(hidden[trained])
    return logits.float(), targets[trained], rows


def summed_token_loss(model, inputs: dict, batching: Batching) -> torch.Tensor:
    """Sum of cross-entropy over the trained tokens of a packed/padded batch."""
    logits, targets, _rows = trained_logits(model, inputs, batching)
    return F.cross_entropy(logits, targets, reduction="sum")


def sequence_log_probs(model, inputs: dict, batching: Batching) -> torch.Tensor:
    """Per row of an unpacked batch: the summed log-probability of its trained tokens."""
    logits, targets, rows = trained_logits(model, inputs, batching)
    token_log_probs = -F.cross_entropy(logits, targets, reduction="none")
    sums = torch.zeros(inputs["input_ids"].shape[0], device=token_log_probs.device, dtype=token_log_probs.dtype)
    return sums.index_add(0, rows, token_log_probs)


# With dense attention (sdpa), packed rows may be longer than max_seq_length
# (which bounds each example): fewer, fuller rows mean less padding. Not much
# longer, though: attention in a packed row is then computed densely under a
# block-diagonal mask, so its cost grows with the square of the row length.
PACKED_ROW_TOKENS = 1024


def train_step(model, optimizer, scheduler, batch, batching: Batching, max_grad_norm) -> tuple[float, int]:
    """One optimizer step over `batch`; returns (loss per trained token, non-padding tokens)."""
    model.train()
    # Each micro-batch's summed loss is divided by the WHOLE batch's trained
    # tokens, so accumulated gradients equal those of one big batch.
    batch_trained_tokens = max(sum(example.trained_tokens for example in batch), 1)
    loss_sum, num_tokens = 0.0, 0
    for micro_batch in micro_batches(batch, batching.micro_batch_size):
        inputs = batching.inputs(micro_batch)
        token_loss = summed_token_loss(model, inputs, batching)
        (token_loss / batch_trained_tokens).backward()
        loss_sum += token_loss.item()
        num_tokens += inputs["num_tokens"]
    if max_grad_norm:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], float(max_grad_norm))
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum / batch_trained_tokens, num_tokens


@torch.no_grad()
def evaluate(model, eval_data, batching: Batching, stop_if_asked) -> float:
    """Mean loss per trained token over all evaluation examples."""
    model.eval()
    loss_sum, trained = 0.0, 0
    for micro_batch in micro_batches(eval_data, batching.micro_batch_size):
        stop_if_asked()
        inputs = batching.inputs(micro_batch)
        loss_sum += summed_token_loss(model, inputs, batching).item()
        trained += inputs["num_trained_tokens"]
    model.train()
    return loss_sum / max(trained, 1)


@torch.no_grad()
def reference_log_probs(model, pairs: list[preference.PreferencePair], batching: Batching, stop_if_asked) -> None:
    """Fills each pair's reference log-probabilities from the model as it is
    now (the starting weights), in the same forward context as training."""
    model.eval()
    for micro_batch in micro_batches(pairs, batching.micro_batch_size):
        stop_if_asked()
        log_probs = sequence_log_probs(model, batching.inputs(preference.as_examples(micro_batch)), batching).tolist()
        for index, pair in enumerate(micro_batch):
            pair.reference_chosen, pair.reference_rejected = log_probs[2 * index], log_probs[2 * index + 1]
    model.train()


def _pair_losses(model, micro_batch: list[preference.PreferencePair], batching: Batching, beta: float):
    inputs = batching.inputs(preference.as_examples(micro_batch))
    reference = torch.tensor(
        [value for pair in micro_batch for value in (pair.reference_chosen, pair.reference_rejected)],
        device=batching.device,
    )
    return preference.dpo_loss(sequence_log_probs(model, inputs, batching), reference, beta), inputs["num_tokens"]


def dpo_train_step(model, optimizer, scheduler, batch, batching: Batching, beta: float,
                   max_grad_norm) -> tuple[dict, int]:
    """One optimizer step over `batch` (pairs); returns (train_* metrics, non-padding tokens)."""
    model.train()
    totals, num_tokens = preference.PreferenceTotals(), 0
    for micro_batch in micro_batches(batch, batching.micro_batch_size):
        result, tokens = _pair_losses(model, micro_batch, batching, beta)
        # The batch's mean over pairs, however it is split into micro-batches.
        (result.loss / len(batch)).backward()
        totals.add(result)
        num_tokens += tokens
    if max_grad_norm:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], float(max_grad_norm))
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return totals.metrics("train_"), num_tokens


@torch.no_grad()
def evaluate_dpo(model, eval_pairs, batching: Batching, beta: float, stop_if_asked) -> dict:
    """valid_loss, rewards, reward margin and preference accuracy over the eval pairs."""
    model.eval()
    totals = preference.PreferenceTotals()
    for micro_batch in micro_batches(eval_pairs, batching.micro_batch_size):
        stop_if_asked()
        totals.add(_pair_losses(model, micro_batch, batching, beta)[0])
    model.train()
    return totals.metrics("valid_")


# --------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(
    checkpoints_dir: Path, model, optimizer, scheduler, step: int, steps_per_epoch: int,
    trained_tokens: int, metrics: dict, run_shape: dict, hp: dict, device: str,
) -> Path:
    """work_dir/checkpoints/step-000040/: the adapter, training_state.pt (for
    resuming: only tensors, numbers, strings, lists and dicts, so it loads with
    weights_only=True) and trainer_state.json (for people). Written to a
    temporary directory and renamed, so a checkpoint dir is always complete."""
    final_dir = checkpoints_dir / f"step-{step:06d}"
    temp_dir = Path(tempfile.mkdtemp(prefix=f".step-{step:06d}-", dir=checkpoints_dir))
    epoch, batch_in_epoch = divmod(step, steps_per_epoch)
    python_rng = random.getstate()
    training_state = {
        "version": TRAINING_STATE_VERSION,
        "step": step,
        "epoch": epoch,  # the epoch to continue in (0-based)
        "batch_in_epoch": batch_in_epoch,  # batches of that epoch already done
        "trained_tokens": trained_tokens,
        "metrics": dict(metrics),
        "run": dict(run_shape),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if device == "cuda" else [],
            "python": [python_rng[0], list(python_rng[1]), python_rng[2]],
        },
    }
    write_peft_files(model, temp_dir)
    torch.save(training_state, temp_dir / TRAINING_STATE_FILE)
    trainer_state = {
        "step": step,
        "total_steps": run_shape["total_steps"],
        "epoch": round(step / steps_per_epoch, 4),
        "trained_tokens": trained_tokens,
        "metrics": metrics,
        "seed": run_shape["seed"],
        "hyperparameters": hp,
    }
    (temp_dir / TRAINER_STATE_FILE).write_text(json.dumps(trainer_state, indent=2, default=str) + "\n")
    if final_dir.exists():  # left by an earlier run in the same work_dir
        shutil.rmtree(final_dir)
    os.rename(temp_dir, final_dir)
    return final_dir


def resume(checkpoint_dir: Path, model, optimizer, scheduler, run_shape: dict, device: str) -> tuple[int, int, dict]:
    """Restores adapter weights, optimizer, scheduler and RNG states from a
    checkpoint dir; returns (step, trained_tokens, last metrics)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = torch.load(checkpoint_dir / TRAINING_STATE_FILE, map_location="cpu", weights_only=True)
    if state.get("version") != TRAINING_STATE_VERSION:
        raise ValueError(f"{checkpoint_dir}: unknown training state version {state.get('version')!r}")
    if state["run"] != run_shape:
        raise ValueError(
            f"cannot resume from {checkpoint_dir}: it belongs to a different run "
            f"(checkpoint {state['run']}, this run {run_shape})"
        )
    if is_full_model(model):
        load_full_weights(model, checkpoint_dir, device)
    else:
        adapter_weights = load_file(checkpoint_dir / "adapter_model.safetensors", device=str(device))
        loaded = set_peft_model_state_dict(model, adapter_weights)
        if loaded.unexpected_keys:
            raise ValueError(f"{checkpoint_dir}: adapter weights do not fit this model: {loaded.unexpected_keys[:5]}")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    if device == "cuda" and state["rng"]["cuda"]:
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    version, internal_state, gauss_next = state["rng"]["python"]
    random.setstate((version, tuple(internal_state), gauss_next))
    return state["step"], state["trained_tokens"], dict(state["metrics"])


def remove_older_checkpoints(checkpoints_dir: Path, keep: Path) -> None:
    """The caller has uploaded `keep`; local disk holds only the newest checkpoint."""
    for path in checkpoints_dir.glob("step-*"):
        if path.is_dir() and path != keep:
            shutil.rmtree(path, ignore_errors=True)


def _remove_unfinished_checkpoints(checkpoints_dir: Path) -> None:
    # Temporary dirs of a process that died while writing a checkpoint.
    for path in checkpoints_dir.glob(".step-*"):
        shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------
# Save


def write_peft_files(model, directory: Path) -> None:
    """PEFT's adapter_config.json and adapter_model.safetensors (and its
    README.md) into `directory`. PEFT renders a model card from its Jinja
    template on every save unless a README is already there (0.15 s of
    template compilation per checkpoint); it only updates a stub in place.
    The job's own README replaces it in the download (worker/training/artifacts.py).
    A full fine-tune (no adapter) writes the whole model instead: config.json,
    generation_config.json and its safetensors weights."""
    if is_full_model(model):
        write_full_weights(model, directory)
        return
    (directory / "README.md").write_text("---\nlibrary_name: peft\n---\n")
    model.save_pretrained(directory, safe_serialization=True, save_embedding_layers=False)


def is_full_model(model) -> bool:
    """A model trained whole (adapter 'full'), not a PEFT model."""
    return not hasattr(model, "peft_config")


def write_full_weights(model, directory: Path) -> None:
    """The whole model, as transformers loads it anywhere: its own attention
    implementation and the KV cache on in the saved config."""
    config = model.config
    saved = (config.use_cache, getattr(config, "_attn_implementation", None))
    config.use_cache = True
    try:
        if saved[1] == ATTENTION_NAME:
            config._attn_implementation = ATTENTION
        model.save_pretrained(directory, safe_serialization=True)
    finally:
        config.use_cache = saved[0]
        if saved[1] == ATTENTION_NAME:
            config._attn_implementation = saved[1]


def load_full_weights(model, checkpoint_dir: Path, device: str) -> None:
    """A full fine-tune's checkpoint weights into `model`. Tied weights (the
    output layer sharing the embeddings) are saved once; any other weight
    missing, or one the model does not have, is an error."""
    from safetensors.torch import load_file

    weights = {}
    for path in sorted(checkpoint_dir.glob("*.safetensors")):
        weights.update(load_file(path, device=str(device)))
    if not weights:
        raise ValueError(f"{checkpoint_dir}: no model weights (*.safetensors)")
    first_names, aliases = {}, set()
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if id(parameter) in first_names:
            aliases.add(name)
        else:
            first_names[id(parameter)] = name
    loaded = model.load_state_dict(weights, strict=False)
    missing = [name for name in loaded.missing_keys if name not in aliases]
    if loaded.unexpected_keys or missing:
        raise ValueError(
            f"{checkpoint_dir}: the weights do not fit this model "
            f"(unexpected {loaded.unexpected_keys[:5]}, missing {missing[:5]})"
        )


def save_adapter(model, adapter_dir: Path) -> Path:
    """adapter_config.json + adapter_model.safetensors, written atomically."""
    adapter_dir.parent.mkdir(parents=True, exist_ok=True)
    temp_dir = Path(tempfile.mkdtemp(prefix=".adapter-", dir=adapter_dir.parent))
    write_peft_files(model, temp_dir)
    if adapter_dir.exists():
        shutil.rmtree(adapter_dir)
    os.rename(temp_dir, adapter_dir)
    return adapter_dir
