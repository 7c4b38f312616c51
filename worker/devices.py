"""What a worker reports when it starts: the device it computes on (name and
total memory), and the config numbers of the base models it can size without
downloading anything. The API reads both for the preview's memory estimate
and fit check (domain/jobs/memory.py); it never loads a model itself.

The worker's parent process must not initialise CUDA (its pool processes are
forked from it: worker/celery_app.py), so on a machine with an NVIDIA GPU the
device is asked for in a short-lived child interpreter.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

from domain.jobs.memory import ModelShape, model_shape_from_config, model_shape_from_folder
from domain.settings import Settings

log = logging.getLogger("tunehouse.worker")

# cgroup v2, then v1: the memory a container may use.
CGROUP_LIMIT_FILES = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
# v1 reports "no limit" as a huge number (PAGE_COUNTER_MAX pages).
_NO_LIMIT = 1 << 60

_CUDA_PROBE = """
import json, torch
if not torch.cuda.is_available():
    print(json.dumps(None))
else:
    p = torch.cuda.get_device_properties(0)
    print(json.dumps({"name": p.name, "total_memory_bytes": int(p.total_memory),
                      "device_count": torch.cuda.device_count(),
                      "capability": f"{p.major}.{p.minor}", "cuda": torch.version.cuda}))
"""


def cpu_memory(limit_files=CGROUP_LIMIT_FILES, meminfo: Path = Path("/proc/meminfo")) -> tuple[int | None, str | None]:
    """(bytes, source): the cgroup's memory limit where one is set and below
    the machine's RAM, else the RAM (MemTotal)."""
    total = None
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024  # kB
                break
    except (OSError, ValueError, IndexError):
        pass
    for path in limit_files:
        try:
            raw = path.read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < _NO_LIMIT and (total is None or int(raw) < total):
            return int(raw), f"cgroup limit ({path})"
        break
    return total, ("MemTotal (/proc/meminfo)" if total is not None else None)


def cpu_model_name() -> str | None:
    """The CPU's model name, as /proc/cpuinfo gives it (x86 and ARM spell it differently)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or None


def cpu_device() -> dict:
    total, source = cpu_memory()
    return {
        "device": "cpu",
        "name": cpu_model_name(),
        "total_memory_bytes": total,
        "memory_source": source,
        "device_count": 1,
        "cpu_cores": os.cpu_count(),
    }


def cuda_device(timeout: float = 120) -> dict | None:
    """GPU 0's properties, asked in a child interpreter; None if it sees no CUDA device."""
    completed = subprocess.run(
        [sys.executable, "-c", _CUDA_PROBE], capture_output=True, text=True, timeout=timeout, check=True
    )
    found = json.loads(completed.stdout.strip().splitlines()[-1])
    if found is None:
        return None
    return {"device": "cuda", "memory_source": "torch.cuda.get_device_properties(0).total_memory", **found}


def describe_device(setting: str) -> dict:
    """The device a training run on this worker would use (TUNEHOUSE_WORKER_DEVICE)."""
    from worker.celery_app import has_nvidia_gpu

    if setting == "cpu" or (setting == "auto" and not has_nvidia_gpu()):
        return cpu_device()
    try:
        found = cuda_device()
    except (subprocess.SubprocessError, OSError, ValueError, IndexError) as error:
        log.warning("could not ask torch for the CUDA device: %s", error)
        found = None
    return found if found is not None else cpu_device()


# -------------------------------------------------------------- model shapes


# GGUF value types (the format's numbering) -> struct code; 8 is a string, 9 an array.
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def gguf_header(gguf_path: Path) -> tuple[dict, dict[str, int]]:
    """A GGUF file's metadata and its tensors' element counts, read from the
    header alone. Arrays are given as their length (the tokenizer's 49k tokens
    and merges are skipped, not decoded): the `gguf` package's GGUFReader
    decodes every element, which took 2 s at each training worker's start
    (7-18 s on a busy machine) for the few numbers `bundled_gguf_shape` needs."""
    import mmap
    import struct

    with open(gguf_path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        position = 0

        def read(code: str):
            nonlocal position
            value = struct.unpack_from("<" + code, data, position)
            position += struct.calcsize("<" + code)
            return value[0] if len(value) == 1 else value

        def string() -> str:
            nonlocal position
            length = read("Q")
            position += length
            return data[position - length : position].decode("utf-8", "replace")

        def value(kind: int):
            nonlocal position
            if kind in _GGUF_SCALARS:
                return read(_GGUF_SCALARS[kind])
            if kind == _GGUF_STRING:
                return string()
            if kind == _GGUF_ARRAY:
                item_kind, count = read("I"), read("Q")
                if item_kind in _GGUF_SCALARS:
                    position += count * struct.calcsize("<" + _GGUF_SCALARS[item_kind])
                else:
                    for _ in range(count):
                        value(item_kind)
                return count
            raise ValueError(f"{gguf_path}: unknown GGUF value type {kind}")

        if data[:4] != b"GGUF":
            raise ValueError(f"{gguf_path} is not a GGUF file")
        position = 4
        _version, tensor_count, field_count = read("I"), read("Q"), read("Q")
        fields = {}
        for _ in range(field_count):
            name = string()
            fields[name] = value(read("I"))
        tensors = {}
        for _ in range(tensor_count):
            name = string()
            dimensions = read("I")
            shape = read("Q" * dimensions) if dimensions else ()
            shape = shape if isinstance(shape, tuple) else (shape,)
            read("I")  # the tensor's type
            read("Q")  # its offset
            tensors[name] = math.prod(shape)
    return fields, tensors


def bundled_gguf_shape(gguf_path: Path) -> ModelShape:
    """SmolLM2's numbers from its GGUF header (no weights are read)."""
    fields, tensors = gguf_header(gguf_path)
    arch = fields.get("general.architecture")
    config = {
        "model_type": arch,
        "hidden_size": fields.get(f"{arch}.embedding_length"),
        "num_hidden_layers": fields.get(f"{arch}.block_count"),
        "num_attention_heads": fields.get(f"{arch}.attention.head_count"),
        "num_key_value_heads": fields.get(f"{arch}.attention.head_count_kv"),
        "intermediate_size": fields.get(f"{arch}.feed_forward_length"),
        "vocab_size": fields.get(f"{arch}.vocab_size") or fields["tokenizer.ggml.tokens"],
        # No separate output tensor in the file: the head is the embedding.
        "tie_word_embeddings": "output.weight" not in tensors,
    }
    return model_shape_from_config(config, sum(tensors.values()))


def local_model_shape(model_id: str, source: str, work_dir: Path) -> tuple[ModelShape, str | None] | None:
    """(shape, revision) of a catalogue entry when its files are on this
    machine already (nothing is downloaded or converted); else None."""
    source = source.strip()
    if source.startswith("bundled:"):
        from worker.models.gguf import BUNDLED_DIR_NAME, bundled_gguf_path

        converted = Path(work_dir) / "base-models" / BUNDLED_DIR_NAME
        if (converted / "config.json").is_file():
            return model_shape_from_folder(converted), None
        return bundled_gguf_shape(bundled_gguf_path()), None
    if source.startswith("path:") or source.startswith("/"):
        folder = Path(source.removeprefix("path:"))
        return (model_shape_from_folder(folder), None) if (folder / "config.json").is_file() else None
    if source.startswith("hf:"):
        import huggingface_hub

        from worker.models.catalog import HF_ALLOW_PATTERNS, parse_hf_source

        repo_id, revision = parse_hf_source(source)
        try:
            folder = Path(huggingface_hub.snapshot_download(
                repo_id, revision=revision, allow_patterns=HF_ALLOW_PATTERNS, local_files_only=True))
        except Exception:  # noqa: BLE001 - not in the cache: the first job records it
            return None
        return model_shape_from_folder(folder), folder.name
    return None


def record_base_model_shape(session, model_id: str, source: str, revision: str | None, shape: ModelShape) -> None:
    from domain.workers.repository import record_model_shape

    record_model_shape(session, model_id, source, revision, shape)
    session.commit()


def report_worker(settings: Settings, worker: str, queues: str) -> dict:
    """Upsert this worker's device row and the shapes of the base models it can
    size from local files. Returns the device dict."""
    from domain.db import make_engine, make_sessionmaker
    from domain.workers.repository import report_device

    device = describe_device(settings.worker_device)
    engine = make_engine(settings.database_url)
    try:
        with make_sessionmaker(engine)() as session:
            # The shapes first: once a training worker's device is there, so
            # are the numbers of the models it could size.
            # Training workers only: an inference worker's start is someone's first chat.
            models = settings.base_models.items() if "train" in queues.split(",") else ()
            for model_id, source in models:
                try:
                    found = local_model_shape(model_id, source, settings.work_dir)
                except Exception as error:  # noqa: BLE001 - a shape is a nicety; a job records it anyway
                    log.warning("could not read the shape of base model %s: %s", model_id, error)
                    continue
                if found is not None:
                    record_base_model_shape(session, model_id, source, found[1], found[0])
            report_device(session, worker, queues, device)
            session.commit()
    finally:
        engine.dispose()
    log.info("worker %s reported its device: %s", worker, {k: device.get(k) for k in ("device", "name", "total_memory_bytes")})
    return device


def forget_worker(settings: Settings, worker: str) -> None:
    from domain.db import make_engine, make_sessionmaker
    from domain.workers.repository import forget_worker as forget

    engine = make_engine(settings.database_url)
    try:
        with make_sessionmaker(engine)() as session:
            forget(session, worker)
            session.commit()
    finally:
        engine.dispose()
