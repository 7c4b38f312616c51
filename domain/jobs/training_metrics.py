"""Per-step training metrics, from the job's metrics events."""

import csv
import io

from domain.jobs.models import FineTuningEvent

METRIC_COLUMNS = ("step", "epoch", "train_loss", "valid_loss", "learning_rate", "tokens_per_second", "trained_tokens")


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
    writer = csv.DictWriter(out, fieldnames=METRIC_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
