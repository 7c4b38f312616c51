"""Base models and fine-tunes' adapters, kept loaded in a worker process.

Loading a base model takes seconds to minutes and gigabytes of memory; a
LoRA adapter takes megabytes and well under a second. So a worker keeps a few
base models loaded (least recently used evicted first) and attaches the
adapters of fine-tunes to them with PEFT's multi-adapter support: one model in
memory serves the base and every fine-tune of it, even within one batch
(see generation.py).

Adapters come from the artifact store, where training jobs put them under
jobs/{job_id}/adapter/ (a checkpoint's under jobs/{job_id}/checkpoints/step-N/:
every checkpoint is a model too), and are cached on local disk in the work dir.
Each is known by an adapter id: the job id for a job's final adapter,
`{job_id}.ckpt-step-{N}` for a checkpoint's (domain/jobs/lineage.py).

Weights are loaded in the dtype the device computes fastest in
(worker/compute.py: bf16 where a probe shows the CPU faster at it, or on a GPU
that supports it), or the one TUNEHOUSE_INFERENCE_DTYPE names.

Many tasks of a worker process use one engine at once (Celery's threads pool):
they `acquire` a model, which loads base and adapter on the decode loop's
thread (loop.py: the only thread that runs or changes models) and pins them,
so that neither is evicted while their rows run; then they submit rows to
`loop`. The methods `base` and `adapter` are for that thread, or for a caller
that uses the engine alone.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import re
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from domain.settings import Settings, get_settings
from domain.storage import Storage, storage_from_url
from worker.models.catalog import BaseModelError, check_adapter_folder, load_causal_lm, load_tokenizer, resolve_base_model
from worker.models.folders import atomic_directory, exclusive_lock
from worker.inference.attention import use_decode_attention
from worker.inference.budget import Budget, budget_for
from worker.inference.generation import end_of_turn_ids
from worker.inference.lora import adapter_weights_in_float32, unsupported
from worker.inference.loop import DecodeLoop

log = logging.getLogger(__name__)

_JOB_ID = re.compile(r"[A-Za-z0-9._-]+")
# The storage prefixes an adapter may be read from: a job's adapter or one of its checkpoints.
_ADAPTER_KEY = re.compile(r"jobs/[A-Za-z0-9_-]+/(adapter|checkpoints/step-[0-9]{6,9})")
# A checkpoint's folder also holds the optimizer's state, which inference does not need.
_INFERENCE_FILES = ("adapter_config.json", "adapter_model.safetensors")
_NOT_IDENTIFIER = re.compile(r"[^A-Za-z0-9_]")


class AdapterNotFound(Exception):
    """The artifact store holds no adapter for the job (unknown job, or one that never finished training)."""


class AdapterNotSupported(Exception):
    """The job's adapter is of a kind the engine cannot serve (lora.unsupported)."""


@dataclass
class LoadedBase:
    base_id: str
    model: Any  # plain transformers model, or a PeftModel once an adapter is attached
    tokenizer: Any
    eos_ids: set[int]
    device: str
    dtype: Any = torch.float32
    adapters: OrderedDict[str, str] = field(default_factory=OrderedDict)  # job id -> adapter name, LRU first
    # Tasks that use the base (key None) or an adapter now: never evicted while pinned.
    pins: Counter = field(default_factory=Counter)
    budget: Budget | None = None  # measured on first use (budget.py)
    tokenizer_lock: Any = field(default_factory=threading.RLock)  # one tokenizer, many task threads


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
        self._compute = None  # worker.compute.ComputeChoice, on the first load
        self._lock = threading.RLock()  # the engine's tables: bases, adapters, pins
        self._unpinned = threading.Condition(self._lock)
        self._download_locks: dict[str, threading.Lock] = {}
        self._loop: DecodeLoop | None = None

    # ------------------------------------------------------------ the decode loop

    @property
    def loop(self) -> DecodeLoop:
        """The one decode loop of this engine (its thread starts on first use)."""
        with self._lock:
            if self._loop is None:
                self._loop = DecodeLoop(self.budget, name="decode-loop")
            return self._loop

    @contextmanager
    def acquire(
        self, base_id: str, job_id: str | None, adapter_key: str | None = None
    ) -> Iterator[tuple[LoadedBase, str | None]]:
        """(loaded base, adapter name or None), pinned until the block ends.
        `job_id` is an adapter id (a job's, or a checkpoint's with its
        `adapter_key`). The adapter's files are fetched in the calling thread;
        loading runs on the loop's thread. Waits while the base must wait for
        another one, still in use, to be unloaded."""
        if job_id is not None and not self._attached(base_id, job_id):
            self._local_adapter_folder(job_id, adapter_key)  # on disk, not on the loop's thread
        while True:
            acquired = self.loop.call(lambda: self._attach(base_id, job_id, adapter_key))
            if acquired is not None:
                break
            with self._unpinned:
                self._unpinned.wait(timeout=1.0)
        loaded, name = acquired
        try:
            yield loaded, name
        finally:
            with self._unpinned:
                loaded.pins[name] -= 1
                if loaded.pins[name] <= 0:
                    del loaded.pins[name]
                self._unpinned.notify_all()

    def _attached(self, base_id: str, job_id: str) -> bool:
        with self._lock:
            loaded = self._bases.get(base_id)
            return loaded is not None and job_id in loaded.adapters

    def _attach(self, base_id: str, job_id: str | None, adapter_key: str | None = None) -> tuple[LoadedBase, str | None] | None:
        with self._lock:
            if base_id not in self._bases and len(self._bases) >= self.max_bases and all(
                loaded.pins for loaded in self._bases.values()
            ):
                return None  # no base can make room now
            loaded = self.base(base_id)
            name = self.adapter(loaded, job_id, adapter_key) if job_id is not None else None
            loaded.pins[name] += 1
            return loaded, name

    def budget(self, loaded: LoadedBase) -> Budget:
        """How many rows decode together on this base, and how many prompt
        tokens a prefill step runs (budget.py); measured once."""
        if loaded.budget is None:
            loaded.budget = budget_for(
                loaded.model,
                loaded.device,
                model_id=loaded.base_id,
                dtype=str(loaded.dtype).removeprefix("torch."),
                cache_file=self.settings.work_dir / "inference" / "budgets.json",
                max_rows=self.settings.inference_batch_size,
            )
        return loaded.budget

    @property
    def compute(self):
        """The dtype choice for this engine's device (worker/compute.py)."""
        if self._compute is None:
            from worker.compute import choose_compute_dtype

            self._compute = choose_compute_dtype(self.device, self.settings.inference_dtype,
                                                 self.settings.compute_probe_file)
            log.info("inference computes in %s on %s: %s", self._compute.dtype, self.device, self._compute.reason)
        return self._compute

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
        dtype = getattr(torch, self.compute.dtype)
        model = load_causal_lm(base_model, dtype=dtype)
        model.to(self.device).eval()
        decode_attention = use_decode_attention(model, self.device)
        log.info("loaded base model %s on %s in %s%s", base_id, self.device, self.compute.dtype,
                 ", decode attention" if decode_attention else "")
        loaded = LoadedBase(
            base_id=base_id,
            model=model,
            tokenizer=tokenizer,
            eos_ids=end_of_turn_ids(tokenizer, model),
            device=self.device,
            dtype=dtype,
        )
        self._bases[base_id] = loaded
        return loaded

    def _evict_base(self) -> None:
        unpinned = [base_id for base_id, loaded in self._bases.items() if not loaded.pins]
        if not unpinned:
            raise RuntimeError("every loaded base model is in use")
        base_id = unpinned[0]  # the least recently used
        del self._bases[base_id]
        log.info("unloading base model %s", base_id)
        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    # --------------------------------------------------------------- adapters

    def adapter(self, loaded: LoadedBase, job_id: str, adapter_key: str | None = None) -> str:
        """The name of adapter `job_id`'s adapter on loaded.model (a job's, or
        a checkpoint's stored under `adapter_key`), loading it if needed."""
        if job_id in loaded.adapters:
            loaded.adapters.move_to_end(job_id)
            self._evict_adapters(loaded, job_id)  # any left over the limit while they were in use
            return loaded.adapters[job_id]
        folder = self._local_adapter_folder(job_id, adapter_key)
        name = adapter_name(job_id)
        if loaded.adapters:
            loaded.model.load_adapter(folder, adapter_name=name, torch_device=loaded.device)
        else:
            from peft import PeftModel

            loaded.model = PeftModel.from_pretrained(
                loaded.model, folder, adapter_name=name, torch_device=loaded.device
            )
        reason = unsupported(loaded.model, name)
        if reason is not None:
            if len(loaded.model.peft_config) > 1:
                loaded.model.delete_adapter(name)
            else:  # PEFT keeps at least one adapter: back to the plain model
                loaded.model = loaded.model.unload()
            raise AdapterNotSupported(f"The fine-tune's adapter cannot be served: {reason}.")
        adapter_weights_in_float32(loaded.model)
        loaded.model.eval()
        loaded.adapters[job_id] = name
        log.info("loaded adapter of %s on %s as %s", job_id, loaded.base_id, name)
        # Evicted after loading the new one: PEFT keeps at least one adapter on a PeftModel.
        self._evict_adapters(loaded, job_id)
        return name

    def _evict_adapters(self, loaded: LoadedBase, keep: str) -> None:
        """Least recently used first, down to the limit; an adapter in use is
        not evicted (there may be more than the limit while they are)."""
        for evicted_job_id, evicted_name in list(loaded.adapters.items()):
            if len(loaded.adapters) <= self.max_adapters_per_base:
                return
            if evicted_name in loaded.pins or evicted_job_id == keep:
                continue
            del loaded.adapters[evicted_job_id]
            loaded.model.delete_adapter(evicted_name)
            log.info("unloaded adapter of %s from %s", evicted_job_id, loaded.base_id)

    def _local_adapter_folder(self, job_id: str, adapter_key: str | None = None) -> Path:
        """The adapter on local disk, downloaded from the artifact store once:
        a job's (`job_id` a job id), or a checkpoint's stored under `adapter_key`."""
        if not _JOB_ID.fullmatch(job_id) or job_id in (".", ".."):
            raise ValueError(f"{job_id!r} is not a valid job id")
        prefix = adapter_key or f"jobs/{job_id}/adapter"
        if not _ADAPTER_KEY.fullmatch(prefix):
            raise ValueError(f"{prefix!r} is not where an adapter is stored")
        folder = self.adapters_dir / job_id
        self.adapters_dir.mkdir(parents=True, exist_ok=True)
        with self._lock:
            download_lock = self._download_locks.setdefault(job_id, threading.Lock())
        # Two worker processes on one machine must not replace a folder the other is reading
        # (the file lock); nor two threads of one process (the file lock is the process's).
        with download_lock, exclusive_lock(folder.with_name(f"{job_id}.lock")):
            if not _is_complete_adapter(folder):
                keys = [key for key in self.storage.list_keys(prefix) if key.rsplit("/", 1)[-1] in _INFERENCE_FILES]
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
_engine_lock = threading.Lock()


def shared_engine() -> InferenceEngine:
    """The engine every inference task of this process shares."""
    global _engine
    with _engine_lock:
        if _engine is None:
            settings = get_settings()
            storage = storage_from_url(settings.storage_url, endpoint_url=settings.s3_endpoint_url)
            _engine = InferenceEngine(settings, storage)
        return _engine


def context_length(model) -> int:
    """The longest prompt plus answer the model takes, in tokens."""
    return int(getattr(model.config, "max_position_embeddings", 0) or 2048)
