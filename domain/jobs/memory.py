"""Peak training memory, estimated before a run; and whether it fits the
devices the training workers reported (domain/workers).

Torch-free and HTTP-free: the API estimates from the model's config numbers
(hidden size, layers, heads, vocabulary, intermediate size, parameter count),
which a worker records when it prepares a base model (`model_shape_from_folder`
reads config.json and the safetensors headers with `json` alone).

What the estimate counts, and what it is compared with:
- CUDA: bytes that torch allocates (`torch.cuda.max_memory_allocated`), i.e.
  without the CUDA context (~0.5 GiB, added for the fit check) and without
  the caching allocator's slack (`max_memory_reserved` is a little higher).
- CPU: the training process's peak resident set (`ru_maxrss`): the Python
  process with the ML stack imported (a measured constant) plus the tensors.

The parts (bytes):
- weights: by dtype and quantization. CUDA: the compute dtype (bf16), QLoRA's
  linear layers in 4-bit NF4 with double quantization (~4.13 bits each) and
  the rest in fp32 (PEFT's k-bit preparation casts them up). CPU: fp32; with
  bf16 autocast the frozen linear layers are stored again in bf16 after loading
  (the peak is then the larger of loading and training).
- trainable weights, their gradients and the optimizer state: LoRA A and B
  on each targeted layer in fp32 with AdamW's two fp32 moments (16 bytes per
  parameter); full fine-tuning: every weight. CPU: fp32 weights, fp32 gradients,
  AdamW (16 bytes a parameter, plus bf16 copies under autocast). CUDA: bf16
  weights and gradients with an 8-bit optimizer (2 bytes of state).
- activations, per token of the largest micro-batch: what autograd keeps for
  the backward pass of each decoder layer (ACTIVATION_ELEMENTS_PER_TOKEN_LAYER
  elements of the hidden, key/value and intermediate sizes); with gradient
  checkpointing (the CUDA default) only each layer's input plus one layer
  recomputed at a time. Attention is counted linear in the length (sdpa's
  flash/memory-efficient kernels and the per-example attention on CPU never
  hold a length x length matrix for the backward pass).
- logits: the vocabulary projection runs on trained positions only; about
  LOGIT_BYTES_PER_TRAINED_TOKEN x vocabulary bytes per trained token
  (logits, their fp32 copy, log-softmax and its gradient).
- the peak: process + weights + trainable weights + optimizer state + the larger
  of (activations + logits) and gradients, which never peak together.
- DPO: the policy runs on the chosen and the rejected answer of each pair (two
  rows a pair, with gradients) and the reference (the same weights with the
  adapter off) on both again without gradients: twice the rows of SFT, the
  reference's no-grad pass never larger than the policy's.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

GIB = 1 << 30
MIB = 1 << 20

# Calibrated on SmolLM2-135M on CPU (bench/memory_estimate.py, bench/README.md).
# Elements kept for the backward pass per token and decoder layer: in units of
# the hidden size, the key/value width and the intermediate (MLP) size.
ACTIVATION_HIDDEN_FACTOR = 13
ACTIVATION_KV_FACTOR = 4
ACTIVATION_INTERMEDIATE_FACTOR = 5
LOGIT_BYTES_PER_TRAINED_TOKEN = 12  # x vocabulary size
# A training process on CPU before any weight is loaded: Python, torch,
# transformers, peft, the worker's modules and the tokenizer (peak RSS measured
# at ~500 MiB; a worker's forked training process measured 546 MiB in all with
# the tiny test model).
CPU_PROCESS_BYTES = 512 * MIB
# What a CUDA process holds outside torch's allocator (context, kernels, cuBLAS workspace).
CUDA_CONTEXT_BYTES = 600 * MIB
# QLoRA: NF4 with double quantization, bits per quantized weight.
NF4_DOUBLE_QUANT_BITS = 4.127

LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTERS = ("lora", "qlora", "full")


class ModelShapeError(ValueError):
    """A config that does not describe a decoder-only transformer we can size."""


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a decoder-only transformer that memory depends on."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    parameters: int  # every weight, embeddings included (tied ones once)
    tied_embeddings: bool
    model_type: str | None = None

    @property
    def kv_width(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def q_width(self) -> int:
        return self.num_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of one decoder layer."""
        h, q, kv, i = self.hidden_size, self.q_width, self.kv_width, self.intermediate_size
        return {
            "q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
        }

    @property
    def linear_parameters(self) -> int:
        """Weights of the decoder layers' linear layers (what QLoRA quantizes)."""
        return self.num_layers * sum(a * b for a, b in self.linear_shapes().values())

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelShape:
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})


def _config_int(config: Mapping[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def model_shape_from_config(config: Mapping[str, Any], parameters: int | None = None) -> ModelShape:
    """From a Hugging Face config.json (a multimodal one's text_config too).
    `parameters`: the exact count if known (safetensors headers), else counted
    from the config for a LLaMA-style layer."""
    if isinstance(config.get("text_config"), Mapping) and not config.get("hidden_size"):
        config = config["text_config"]
    hidden = _config_int(config, "hidden_size", "n_embd", "d_model")
    layers = _config_int(config, "num_hidden_layers", "n_layer", "num_layers")
    heads = _config_int(config, "num_attention_heads", "n_head")
    vocab = _config_int(config, "vocab_size")
    if hidden is None or layers is None or heads is None or vocab is None:
        raise ModelShapeError("the config lacks hidden_size, num_hidden_layers, num_attention_heads or vocab_size")
    kv_heads = _config_int(config, "num_key_value_heads") or heads
    head_dim = _config_int(config, "head_dim") or hidden // heads
    intermediate = _config_int(config, "intermediate_size", "n_inner") or 4 * hidden
    tied = bool(config.get("tie_word_embeddings", True))
    shape = ModelShape(
        hidden_size=hidden, num_layers=layers, num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
        intermediate_size=intermediate, vocab_size=vocab, parameters=0, tied_embeddings=tied,
        model_type=config.get("model_type") if isinstance(config.get("model_type"), str) else None,
    )
    if parameters is None:
        embeddings = vocab * hidden * (1 if tied else 2)
        norms = layers * 2 * hidden + hidden
        parameters = embeddings + shape.linear_parameters + norms
    return ModelShape(**{**asdict(shape), "parameters": int(parameters)})


def safetensors_parameter_count(files: Iterable[Path]) -> int:
    """Elements of every tensor in these safetensors files, from their JSON
    headers alone (8 bytes of header length, then the header)."""
    total = 0
    for path in files:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > 100 * MIB:
                raise ModelShapeError(f"{path}: implausible safetensors header length {length}")
            header = json.loads(handle.read(length))
        for name, entry in header.items():
            if name != "__metadata__":
                total += math.prod(entry["shape"])
    return total


def model_shape_from_folder(folder: Path) -> ModelShape:
    """config.json and the safetensors weights of a model folder."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    weights = sorted(folder.rglob("*.safetensors"))
    return model_shape_from_config(config, safetensors_parameter_count(weights) if weights else None)


# ---------------------------------------------------------------- the estimate


@dataclass(frozen=True)
class TrainingSetup:
    """What a run does, as far as memory goes (resolved hyperparameter values)."""

    adapter: str  # lora | qlora | full
    device: str  # cpu | cuda
    micro_batch_size: int  # examples (DPO: pairs) per forward/backward pass
    row_tokens: int  # tokens of the longest example (at most max_seq_length)
    compute_dtype: str = "bfloat16"  # float32 | bfloat16
    lora_r: int = 16
    target_modules: str | list[str] = "all-linear"
    gradient_checkpointing: bool | None = None  # None: the recipe's choice (on with CUDA)
    method: str = "supervised"  # supervised | dpo
    trained_fraction: float = 1.0  # share of tokens with a loss (the vocabulary projection runs on those)

    @classmethod
    def from_hyperparameters(cls, values: Mapping[str, Any], device: str, *, method: str = "supervised",
                             row_tokens: int | None = None, trained_fraction: float = 1.0) -> TrainingSetup:
        """From resolved plain values (domain/jobs/hyperparameters.py)."""
        batch = int(values["batch_size"])
        accumulation = int(values.get("gradient_accumulation_steps") or 1)
        max_seq_length = int(values["max_seq_length"])
        kind = "cuda" if str(device).startswith("cuda") else "cpu"
        compute = values.get("compute_dtype")
        if compute not in ("float32", "bfloat16"):
            compute = "bfloat16" if kind == "cuda" else "float32"
        return cls(
            adapter=str(values.get("adapter") or ("qlora" if kind == "cuda" else "lora")),
            device=kind,
            micro_batch_size=math.ceil(batch / accumulation),
            row_tokens=min(max_seq_length, row_tokens) if row_tokens else max_seq_length,
            compute_dtype=compute,
            lora_r=int(values.get("lora_r") or 16),
            target_modules=values.get("target_modules") or "all-linear",
            method=method,
            trained_fraction=trained_fraction,
        )


def lora_parameters(shape: ModelShape, r: int, target_modules: str | list[str]) -> int:
    """LoRA A (r x in) and B (out x r) on each targeted linear layer of each decoder layer."""
    shapes = shape.linear_shapes()
    names = LINEAR_MODULES if target_modules == "all-linear" else [m for m in target_modules if m in shapes]
    return shape.num_layers * sum(r * (shapes[name][0] + shapes[name][1]) for name in names)


def activation_elements_per_token_layer(shape: ModelShape, lora_r: int = 0) -> int:
    return (
        ACTIVATION_HIDDEN_FACTOR * shape.hidden_size
        + ACTIVATION_KV_FACTOR * shape.kv_width
        + ACTIVATION_INTERMEDIATE_FACTOR * shape.intermediate_size
        + len(LINEAR_MODULES) * lora_r
    )


def estimate_training_memory(shape: ModelShape, setup: TrainingSetup) -> dict[str, Any]:
    """{"peak_bytes", "parts": {name: bytes}, "assumptions": [...]}: the peak
    of one training process (see the module's docstring for what is counted)."""
    if setup.adapter not in ADAPTERS:
        raise ValueError(f"adapter must be one of {ADAPTERS}, got {setup.adapter!r}")
    cuda = setup.device == "cuda"
    bf16 = setup.compute_dtype == "bfloat16"
    checkpointing = cuda if setup.gradient_checkpointing is None else setup.gradient_checkpointing
    P, P_linear = shape.parameters, shape.linear_parameters
    P_other = P - P_linear
    head = shape.vocab_size * shape.hidden_size
    assumptions = []

    # Weights (and for full fine-tuning: gradients, optimizer state).
    trainable, gradients, optimizer, load_peak = 0, 0, 0, 0
    if setup.adapter == "full":
        if cuda:
            weight_bytes = 2 if bf16 else 4
            weights = P * weight_bytes
            gradients = P * weight_bytes
            optimizer = 2 * P  # 8-bit AdamW: two 1-byte moments
            assumptions.append("full: weights and gradients in the compute dtype, 8-bit AdamW (2 bytes a weight)")
        else:
            weights = 4 * P
            gradients = 4 * P
            optimizer = 8 * P
            if bf16:
                weights += 2 * P_linear  # autocast's bf16 copies of the linear weights, per forward pass
            assumptions.append("full: fp32 weights, gradients and AdamW moments (16 bytes a weight)")
    else:
        lora = lora_parameters(shape, setup.lora_r, setup.target_modules)
        trainable, gradients, optimizer = 4 * lora, 4 * lora, 8 * lora
        if setup.adapter == "qlora":
            weights = int(P_linear * NF4_DOUBLE_QUANT_BITS / 8) + 4 * P_other
            assumptions.append("qlora: decoder linear layers in 4-bit NF4 (double quantization), the rest fp32")
        elif cuda:
            weights = P * (2 if bf16 else 4)
        elif bf16:
            # Loaded in fp32, then the frozen linear layers stored in bf16 and the
            # output layer copied once in bf16 (worker/training/recipe.py).
            weights = 2 * P_linear + 4 * P_other + 2 * head
            load_peak = 4 * P
        else:
            weights = 4 * P
        assumptions.append(f"LoRA r={setup.lora_r} on {setup.target_modules}: {lora} trainable weights, fp32 + AdamW")

    # Activations and logits of the largest micro-batch.
    rows = setup.micro_batch_size * (2 if setup.method == "dpo" else 1)
    tokens = rows * setup.row_tokens
    if setup.method == "dpo":
        assumptions.append("dpo: the chosen and the rejected output of each pair are two rows of one micro-batch; the reference log-probabilities are computed once before training, without gradients")
    act_bytes = 2 if cuda and bf16 else 4
    per_layer = activation_elements_per_token_layer(shape, 0 if setup.adapter == "full" else setup.lora_r)
    if checkpointing:
        activations = tokens * (shape.num_layers * shape.hidden_size + per_layer) * act_bytes
        assumptions.append("gradient checkpointing: each layer's input kept, one layer recomputed at a time")
    else:
        activations = tokens * shape.num_layers * per_layer * act_bytes
    trained_tokens = max(1, int(tokens * min(max(setup.trained_fraction, 0.0), 1.0)))
    logits = trained_tokens * shape.vocab_size * LOGIT_BYTES_PER_TRAINED_TOKEN
    assumptions.append(
        f"{rows} row{'s' if rows != 1 else ''} of {setup.row_tokens} tokens per forward pass, "
        f"{trained_tokens} of them trained"
    )

    runtime = 0 if cuda else CPU_PROCESS_BYTES
    # Gradients and activations do not peak together: gradients are freed after
    # each optimizer step (zero_grad(set_to_none=True)) and grow during the
    # backward pass as the activations it consumes are freed.
    training = runtime + weights + trainable + optimizer + max(activations + logits, gradients)
    peak = max(training, runtime + load_peak)
    return {
        "peak_bytes": int(peak),
        "parts": {
            "runtime": int(runtime),
            "weights": int(weights),
            "trainable_weights": int(trainable),
            "gradients": int(gradients),
            "optimizer": int(optimizer),
            "activations": int(activations),
            "logits": int(logits),
        },
        "gradient_checkpointing": checkpointing,
        "device": setup.device,
        "adapter": setup.adapter,
        "measured_as": "torch.cuda.max_memory_allocated" if cuda else "peak RSS of the training process",
        "assumptions": assumptions,
    }


# ---------------------------------------------------------------- the fit check


def device_need_bytes(estimate: Mapping[str, Any]) -> int:
    """What the device must hold: the estimate, plus the CUDA context on a GPU."""
    return int(estimate["peak_bytes"]) + (CUDA_CONTEXT_BYTES if estimate.get("device") == "cuda" else 0)


def fit_check(estimate: Mapping[str, Any] | None, devices: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Whether the estimate fits the largest device of the kind it was made
    for, among those the training workers reported. `devices`: dicts with
    worker, device (cpu | cuda), name, total_memory_bytes.
    Returns {"fits": True | False | "unknown", "device": the one judged or None, "reason"}."""
    if estimate is None:
        return {"fits": "unknown", "device": None, "reason": "no estimate: the model's shape is not known yet"}
    kind = estimate.get("device")
    same_kind = [d for d in devices if d.get("device") == kind and d.get("total_memory_bytes")]
    if not same_kind:
        others = sorted({str(d.get("device")) for d in devices})
        reason = (
            f"no training worker has reported a {kind} device"
            + (f" (reported: {', '.join(others)})" if others else "; workers report theirs when they start")
        )
        return {"fits": "unknown", "device": None, "reason": reason}
    best = max(same_kind, key=lambda d: int(d["total_memory_bytes"]))
    need, total = device_need_bytes(estimate), int(best["total_memory_bytes"])
    fits = need <= total
    reason = (
        f"needs about {format_bytes(need)} of the {format_bytes(total)} of {best.get('name') or kind} "
        f"on worker {best.get('worker')}"
        + ("" if fits else ": lower batch_size or max_seq_length, use gradient_accumulation_steps, or a smaller adapter (lora, qlora)")
    )
    return {"fits": fits, "device": dict(best), "reason": reason}


def format_bytes(value: int | float) -> str:
    if value >= GIB:
        return f"{value / GIB:.1f} GiB"
    return f"{value / MIB:.0f} MiB"
