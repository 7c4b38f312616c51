"""Figures a worker measures on its machine once and keeps on disk.

Two things are measured rather than assumed: which dtype the CPU computes
faster (worker/compute.py) and how many rows an inference step should hold
(worker/inference/budget.py). Both are kept in a JSON file under the work
directory, keyed by what they depend on, so that every worker process on the
machine reads the same answer (the same job trains in the same dtype whichever
process runs it) and a restarted worker does not measure again.

One process measures at a time, under a lock file beside the figures: two
measuring at once would slow each other down and keep figures of a busy
machine, and the second finds the first's figures when it gets the lock.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import platform
from collections.abc import Callable
from pathlib import Path

from worker.devices import cpu_model_name

log = logging.getLogger(__name__)


def device_name(device: str) -> str:
    """The GPU's or the CPU's model name: kept figures belong to it."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    return cpu_model_name() or platform.machine()


def kept_or_measured(kept_in: Path, key: str, measure: Callable[[], dict]) -> tuple[dict, bool]:
    """The entry kept under `key` in `kept_in`, else `measure()`'s, which is
    then kept there. Returns (entry, measured now). If the file cannot be
    written the figures are measured all the same, with a warning."""
    try:
        kept_in.parent.mkdir(parents=True, exist_ok=True)
        lock = open(kept_in.with_name(f".{kept_in.name}.lock"), "a")  # noqa: SIM115 (closed below)
    except OSError:
        log.warning("could not keep measured figures in %s", kept_in, exc_info=True)
        return measure(), True
    with lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when the file closes
        known = _read(kept_in)
        if key in known:
            return known[key], False
        entry = measure()
        known[key] = entry
        try:
            staging = kept_in.with_name(f".{kept_in.name}.{os.getpid()}.tmp")
            staging.write_text(json.dumps(known, indent=1))
            os.replace(staging, kept_in)
        except OSError:
            log.warning("could not keep measured figures in %s", kept_in, exc_info=True)
        return entry, True


def _read(kept_in: Path) -> dict:
    try:
        known = json.loads(kept_in.read_text())
    except (OSError, ValueError):  # none yet, or unreadable: measure again
        return {}
    return known if isinstance(known, dict) else {}
