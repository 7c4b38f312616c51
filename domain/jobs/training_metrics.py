"""Per-step training metrics, from the job's metrics events."""

import csv
import io

from domain.jobs.models import FineTuningEvent

# Peak memory of each step (worker/training/memory.py): CUDA's max_memory_allocated
# and max_memory_reserved since the step began; on CPU the process's peak RSS so far
# (no reserved figure); and the device's total memory.
MEMORY_COLUMNS = ("peak_memory_bytes", "peak_reserved_bytes", "device_memory_bytes")
METRIC_COLUMNS = (
    "step", "epoch", "train_loss", "valid_loss", "learning_rate", "tokens_per_second", "trained_tokens",
    *MEMORY_COLUMNS,
)

# DPO's diagnostics (worker/training/preference.py), per step and at each evaluation.
PREFERENCE_COLUMNS = tuple(
    f"{split}_{name}" for split in ("train", "valid")
    for name in ("chosen_reward", "rejected_reward", "reward_margin", "preference_accuracy")
)


def metrics_by_step(events: list[FineTuningEvent]) -> list[dict]:
    """One row per step, in step order. A resumed attempt redoes the steps after
    its checkpoint; the later record of a step wins."""
    rows: dict[int, dict] = {}
    for event in events:
        if event.data and "step" in event.data:
            rows[event.data["step"]] = event.data
    return [rows[step] for step in sorted(rows)]


def metrics_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    columns = METRIC_COLUMNS
    if any("train_reward_margin" in row for row in rows):  # a DPO job
        columns += PREFERENCE_COLUMNS
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def peak_memory(rows: list[dict]) -> dict[str, int]:
    """The largest value of each memory column over the rows (those measured)."""
    peaks: dict[str, int] = {}
    for row in rows:
        for name in MEMORY_COLUMNS:
            value = row.get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                peaks[name] = max(peaks.get(name, 0), value)
    return peaks
