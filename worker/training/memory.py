"""Peak memory of a training run, measured per step (the estimate before the
run is domain/jobs/memory.py).

- CUDA: `torch.cuda.max_memory_allocated` (tensors) and `max_memory_reserved`
  (what the caching allocator holds) since the step began (the peak stats
  are reset at each step's start), and the device's total memory.
- CPU: the process's peak resident set (`getrusage(RUSAGE_SELF).ru_maxrss`,
  KiB on Linux, bytes on macOS) since it started: a high-water mark that
  never goes down, so each step's value is the run's peak so far. The total is
  the cgroup's limit or the machine's RAM.
"""

from __future__ import annotations

import resource
import sys

import torch

METRIC_NAMES = ("peak_memory_bytes", "peak_reserved_bytes", "device_memory_bytes")


def process_peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


class MemoryMeter:
    """Per-step peaks of one training process, and the run's."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"
        if self.cuda:
            self.total = int(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)
        else:
            from worker.devices import cpu_memory

            self.total = cpu_memory()[0]
        self.peak: dict[str, int] = {}

    def step_started(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def step_metrics(self) -> dict[str, int | None]:
        """peak_memory_bytes (and on CUDA peak_reserved_bytes) since the step
        began, device_memory_bytes; the run's peak is kept as well."""
        if self.cuda:
            values = {
                "peak_memory_bytes": int(torch.cuda.max_memory_allocated()),
                "peak_reserved_bytes": int(torch.cuda.max_memory_reserved()),
            }
        else:
            values = {"peak_memory_bytes": process_peak_rss_bytes()}
        for name, value in values.items():
            self.peak[name] = max(self.peak.get(name, 0), value)
        return {**values, "device_memory_bytes": self.total}

    def run_peak(self) -> dict[str, int | str | None]:
        """For the recipe's result: the largest of the steps measured."""
        return {
            **self.peak,
            "device_memory_bytes": self.total,
            "measured_as": "torch.cuda.max_memory_allocated" if self.cuda else "peak RSS of the training process",
        }


def estimate_run_memory(base_model_dir, hyperparameters: dict, device: str, *, method: str = "supervised",
                        row_tokens: int | None = None):
    """(shape, estimate) for a run about to start: the base model's numbers
    read from its folder, the resolved hyperparameters' plain values."""
    from domain.jobs.memory import TrainingSetup, estimate_training_memory, model_shape_from_folder

    shape = model_shape_from_folder(base_model_dir)
    setup = TrainingSetup.from_hyperparameters(hyperparameters, device, method=method, row_tokens=row_tokens)
    return shape, estimate_training_memory(shape, setup)
