"""The plan, the move and the comparison as `tunehouse move` prints them."""

import json
from typing import Any

from domain.moves.schemas import MoveObject, PlanObject


def _show(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 48 else text[:45] + "..."


def plan_text(plan: PlanObject) -> str:
    lines = [f"Provider '{plan.connection}': {len(plan.jobs)} fine-tuning job(s); new base model {plan.base_model}"]
    for job in plan.jobs:
        lines.append("")
        lines.append(f"{job.provider_job_id} ({job.status or 'unknown status'}) -> {job.provider_model or 'no fine-tuned model'}")
        if job.fine_tuning_job_id:
            lines.append(f"  moved before: {job.fine_tuning_job_id}")
        for file in job.files:
            size = f"{file.bytes} bytes" if file.bytes is not None else "size unknown"
            counted = f", {file.lines} lines" if file.lines is not None else ""
            here = f" as {file.file_id}" if file.file_id else ""
            lines.append(f"  {file.role} file {file.provider_file_id} '{file.filename}' ({size}{counted}): {file.state}{here}")
        for entry in job.mapping:
            lines.append(f"  {entry.field}: {_show(entry.provider_value)} -> {_show(entry.value)}  ({entry.reason})")
        if job.problem:
            lines.append(f"  cannot move yet: {job.problem}")
    return "\n".join(lines)


def move_text(move: MoveObject) -> str:
    return "\n".join(
        f"{job.provider_job_id} -> {job.fine_tuning_job_id} ({'created' if job.created else 'kept from an earlier move'}; "
        f"training file {job.training_file}" + (f", validation file {job.validation_file}" if job.validation_file else "") + ")"
        for job in move.jobs)


def results_text(results: dict[str, dict[str, float | None]]) -> str:
    return "\n".join(f"  {model}: " + ", ".join(f"{metric} {value:.4g}" for metric, value in scores.items()
                                               if value is not None)
                     for model, scores in results.items())
