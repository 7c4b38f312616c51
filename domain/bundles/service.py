"""A succeeded job as a reproducibility bundle (domain/bundles/format.py).

`plan_bundle` reads everything the bundle needs from the database while the
request's session is open and returns what to write; `stream_zip`
(domain/bundles/writer.py) then writes it from storage after the session has
closed. No HTTP here.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import yaml
from sqlalchemy.orm import Session

from domain.auth.models import User
from domain.bundles import format as fmt
from domain.bundles.writer import Member
from domain.errors import Conflict
from domain.evaluations.repository import EvaluationRepository
from domain.evaluations.schemas import EvaluationObject, predictions_csv_key
from domain.files.models import File
from domain.files.repository import FileRepository
from domain.jobs.lineage import final_adapter_key
from domain.jobs.model_card import model_card_files
from domain.jobs.models import FineTuningJob
from domain.jobs.repository import JobRepository
from domain.jobs.schemas import EventObject
from domain.jobs.training_metrics import metrics_by_step, metrics_csv
from domain.jobs.weights import is_full_fine_tune, merged_weights_key
from domain.settings import Settings
from domain.sharing.service import readable_job
from domain.storage import Storage

ALL_EVENTS = 10**9


@dataclass(frozen=True)
class BundlePlan:
    filename: str
    created_at: int
    members: list[Member]


def recipe_yaml(recipe: dict) -> str:
    return yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True)


def _json(value) -> bytes:
    return json.dumps(value, indent=2, ensure_ascii=False).encode()


def _stored(storage: Storage, name: str, key: str, *, deflate: bool = True) -> Member | None:
    if not storage.exists(key):
        return None
    return Member(name, key=key, size=storage.size(key), deflate=deflate)


def _weights(storage: Storage, job: FineTuningJob) -> list[Member]:
    if is_full_fine_tune(job):
        member = _stored(storage, fmt.FULL_MODEL, merged_weights_key(job.id), deflate=False)
        members = [member] if member else []
    else:
        prefix = final_adapter_key(job.id)
        members = [
            Member(fmt.ADAPTER_DIR + key[len(prefix) + 1 :], key=key, size=storage.size(key),
                   deflate=not key.endswith(".safetensors"))
            for key in storage.list_keys(prefix)
            if not key.endswith("/README.md")  # PEFT's generic card; the bundle has the real one
        ]
    if not members:
        raise Conflict(f"The weights of job '{job.id}' are missing from storage.", code="weights_missing")
    return members


def _evaluation(session: Session, storage: Storage, job: FineTuningJob, *, predictions: bool) -> list[Member]:
    if not job.evaluation_id:
        return []
    evaluation = EvaluationRepository(session, job.owner_id).get(job.evaluation_id)
    if evaluation is None:
        return []
    members = [Member(fmt.EVALUATION_METRICS, data=_json(EvaluationObject.of(evaluation).model_dump(mode="json")))]
    if predictions and evaluation.status == "succeeded" and evaluation.predictions_key:
        for name, key in ((fmt.PREDICTIONS_JSONL, evaluation.predictions_key),
                          (fmt.PREDICTIONS_CSV, predictions_csv_key(evaluation.predictions_key))):
            if member := _stored(storage, name, key):
                members.append(member)
    return members


def _files(session: Session, storage: Storage, user: User, job: FineTuningJob, include_data: bool) -> list[Member]:
    files = FileRepository(session, user.id)
    members: list[Member] = []
    for role, file_id, data_name in (("training", job.training_file_id, fmt.TRAINING_DATA),
                                     ("validation", job.validation_file_id, fmt.VALIDATION_DATA)):
        file: File | None = files.get(file_id) if file_id else None
        if file is None:
            continue
        report = {"id": file.id, "filename": file.filename, "bytes": file.bytes, "sha256": file.sha256,
                  "report": file.report}
        members.append(Member(fmt.report_member(role), data=_json(report)))
        if include_data and (member := _stored(storage, data_name, file.storage_key)):
            members.append(member)
    return members


def plan_bundle(
    session: Session, storage: Storage, settings: Settings, user: User, job_id: str, *, include_data: bool
) -> BundlePlan:
    """Everything a succeeded job's bundle holds, read now (Conflict for a job
    that has not succeeded or whose weights are gone). A sharee gets the
    model's bundle without what sharing keeps with the owner: the events and
    the evaluation's predictions (they quote the owner's held-out examples)."""
    job = readable_job(session, user, job_id)
    owner = job.owner_id == user.id
    if job.status != "succeeded" or not job.adapter_key or not job.recipe:
        raise Conflict(f"Job '{job_id}' is {job.status}; its bundle exists once it succeeds.", code="bundle_not_ready")
    created_at = job.finished_at or int(time.time())
    # The job's own history; files only the caller's (a job shared with them does not share its files).
    repository = JobRepository(session, job.owner_id)
    events = list(reversed(repository.events(job.id, after=None, limit=ALL_EVENTS))) if owner else []
    rows = metrics_by_step(repository.metrics_events(job.id))
    data_members = _files(session, storage, user, job, include_data)
    manifest = fmt.BundleManifest(
        tunehouse_bundle_version=fmt.FORMAT_VERSION,
        created_at=created_at,
        fine_tuning_job=job.id,
        fine_tuned_model=job.fine_tuned_model,
        base_model=job.model,
        suffix=job.suffix,
        method=job.method,
        weights="full" if is_full_fine_tune(job) else "adapter",
        trained_tokens=job.trained_tokens,
        lineage=job.recipe.get("lineage") or [job.model],  # parents (nearest first), then the base
        imported_from=job.recipe.get("imported_from"),
        includes_data=any(member.name in (fmt.TRAINING_DATA, fmt.VALIDATION_DATA) for member in data_members),
    )
    weights = _weights(storage, job)
    card = model_card_files(session, settings, job)
    members = [
        Member(fmt.MANIFEST, data=_json(manifest.model_dump(mode="json"))),
        *weights,
        Member(fmt.RECIPE_JSON, data=_json(job.recipe)),
        Member(fmt.RECIPE_YAML, data=recipe_yaml(job.recipe).encode()),
        *(Member(name, data=data, deflate=not name.endswith(".png")) for name, data in card.items()),
        Member(fmt.METRICS_CSV, data=metrics_csv(rows).encode()),
        *([Member(fmt.EVENTS_JSONL, data="".join(
            EventObject.of(event).model_dump_json() + "\n" for event in events).encode())] if owner else []),
        *_evaluation(session, storage, job, predictions=owner),
        *data_members,
    ]
    return BundlePlan(filename=f"{job.id}-bundle.zip", created_at=created_at, members=members)
