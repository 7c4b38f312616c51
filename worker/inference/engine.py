"""Base models and fine-tunes' adapters, kept loaded in a worker process.

Loading a base model takes seconds to minutes and gigabytes of memory; a
LoRA adapter takes megabytes and well under a second. So a worker keeps a few
base models loaded (least recently used evicted first) and attaches the
adapters of fine-tunes to them with PEFT's multi-adapter support: one model in
memory serves the base and every fine-tune of it, even within one batch
(see generation.py).

Adapters come from the artifact store, where training jobs put them under
jobs/{job_id}/adapter/, and are cached on local disk in the work dir.

Not thread-safe: a worker process serves one task at a time (`shared_engine`).
"""

from __future__ import annotations

import gc
import hashlib
import logging
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from domain.settings import Settings, get_settings
from domain.storage import Storage, storage_from_url
from worker.models.catalog import BaseModelError, check_adapter_folder, load_causal_lm, load_tokenizer, resolve_base_model
from worker.models.folders import atomic_directory, exclusive_lock
from worker.inference.generation import end_of_turn_ids

log = logging.getLogger(__name__)

_JOB_ID = re.compile(r"[A-Za-z0-9._-]+")
_NOT_IDENTIFIER = re.compile(r"[^A-Za-z0-9_]")


class AdapterNotFound(Exception):
    """The artifact store holds no adapter for the job (unknown job, or one that never finished training)."""


@dataclass
class LoadedBase:
    base_id: str
    model: Any  # plain transformers model, or a PeftModel once an adapter is attached
    tokenizer: Any
    eos_ids: set[int]
    device: str
    adapters: OrderedDict[str, str] = field(default_factory=OrderedDict)  # job id -> adapter name, LRU first


def adapter_name(job_id: str) -> str:
    """A PEFT adapter name (a Python identifier) for a job's adapter."""
    safe = _NOT_IDENTIFIER.sub("_", job_id)
    if safe == job_id:
        return f"a_{safe}"
    # Replacing characters could make two job ids one name; the hash keeps them apart.
    return f"a_{safe}_{hashlib.sha256(job_id.encode()).hexdigest()[:8]}"


class InferenceEngine:
    """Keeps base models loaded once per worker process and attaches fine-tunes'
    LoRA adapters to them (PEFT multi-adapter)."""

    def __init__(
        self,
        settings: Settings,
        storage: Storage,
        *,
        device: str | None = None,
        max_bases: int = 1,
        max_adapters_per_base: int = 16,
    ) -> None:
        if max_bases < 1 or max_adapters_per_base < 1:
            raise ValueError("max_bases and max_adapters_per_base must be at least 1")
        self.settings = settings
        self.storage = storage
        self.device = device or _default_device(settings.worker_device)
        self.max_bases = max_bases
        self.max_adapters_per_base = max_adapters_per_base
        self.adapters_dir = settings.work_dir / "inference" / "adapters"
        self._bases: OrderedDict[str, LoadedBase] = OrderedDict()  # least recently used first

    # ------------------------------------------------------------ base models

    def base(self, base_id: str) -> LoadedBase:
        """The base model `base_id` of the catalogue, loaded on this engine's device."""
        if base_id in self._bases:
            self._bases.move_to_end(base_id)
            return self._bases[base_id]
        source = self.settings.base_models.get(base_id)
        if source is None:
            raise BaseModelError(f"base model {base_id!r} is not offered by this deployment")
        # Make room first: two base models may not fit in memory at once.
        while len(self._bases) >= self.max_bases:
            self._evict_base()
        base_model = resolve_base_model(base_id, source, self.settings.work_dir)
        tokenizer = load_tokenizer(base_model)
        model = load_causal_lm(base_model, dtype=torch.bfloat16 if self.device.startswith("cuda") else torch.float32)
        model.to(self.device).eval()
        log.info("loaded base model %s on %s", base_id, self.device)
        loaded = LoadedBase(
            base_id=base_id,
            model=model,
            tokenizer=tokenizer,
            eos_ids=end_of_turn_ids(tokenizer, model),
            device=self.device,
        )
        self._bases[base_id] = loaded
        return loaded

    def _evict_base(self) -> None:
        base_id, _ = self._bases.popitem(last=False)
        log.info("unloading base model %s", base_id)
        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    # --------------------------------------------------------------- adapters

    def adapter(self, loaded: LoadedBase, job_id: str) -> str:
        """The name of job `job_id`'s adapter on loaded.model, loading it if needed."""
        if job_id in loaded.adapters:
            loaded.adapters.move_to_end(job_id)
            return loaded.adapters[job_id]
        folder = self._local_adapter_folder(job_id)
        name = adapter_name(job_id)
        if loaded.adapters:
            loaded.model.load_adapter(folder, adapter_name=name, torch_device=loaded.device)
        else:
            from peft import PeftModel

            loaded.model = PeftModel.from_pretrained(
                loaded.model, folder, adapter_name=name, torch_device=loaded.device
            )
        loaded.model.eval()
        loaded.adapters[job_id] = name
        log.info("loaded adapter of %s on %s as %s", job_id, loaded.base_id, name)
        # Evicted after loading the new one: PEFT keeps at least one adapter on a PeftModel.
        while len(loaded.adapters) > self.max_adapters_per_base:
            evicted_job_id, evicted_name = loaded.adapters.popitem(last=False)
            loaded.model.delete_adapter(evicted_name)
            log.info("unloaded adapter of %s from %s", evicted_job_id, loaded.base_id)
        return name

    def _local_adapter_folder(self, job_id: str) -> Path:
        """The job's adapter on local disk, downloaded from the artifact store once."""
        if not _JOB_ID.fullmatch(job_id) or job_id in (".", ".."):
            raise ValueError(f"{job_id!r} is not a valid job id")
        folder = self.adapters_dir / job_id
        prefix = f"jobs/{job_id}/adapter"
        self.adapters_dir.mkdir(parents=True, exist_ok=True)
        # Two worker processes on one machine must not replace a folder the other is reading.
        with exclusive_lock(folder.with_name(f"{job_id}.lock")):
            if not _is_complete_adapter(folder):
                keys = self.storage.list_keys(prefix)
                if not keys:
                    raise AdapterNotFound(f"fine-tuning job {job_id!r} has no adapter in storage (under {prefix}/)")
                with atomic_directory(folder) as staging:
                    for key in keys:
                        target = staging / key[len(prefix) + 1 :]
                        target.parent.mkdir(parents=True, exist_ok=True)
                        with target.open("wb") as file:
                            for chunk in self.storage.iter_bytes(key):
                                file.write(chunk)
        check_adapter_folder(folder)
        return folder


def _is_complete_adapter(folder: Path) -> bool:
    # atomic_directory only ever leaves complete folders; these files make one usable.
    return (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file()


def _default_device(worker_device: str) -> str:
    if worker_device and worker_device != "auto":
        return worker_device
    return "cuda" if torch.cuda.is_available() else "cpu"


# An inference worker's process lives on between tasks (the CLI turns off
# max-tasks-per-child for workers without the `train` queue), so the engine
# and the base models it loaded stay in memory: the first request for a base
# pays for loading it, later ones only attach their fine-tune's adapter.
_engine = None


def shared_engine() -> InferenceEngine:
    """The engine every inference task of this process shares."""
    global _engine
    if _engine is None:
        settings = get_settings()
        storage = storage_from_url(settings.storage_url, endpoint_url=settings.s3_endpoint_url)
        _engine = InferenceEngine(settings, storage)
    return _engine


def context_length(model) -> int:
    """The longest prompt plus answer the model takes, in tokens."""
    return int(getattr(model.config, "max_position_embeddings", 0) or 2048)
