"""A bundle from another deployment (or this one) becomes one of a user's
fine-tunes here: a succeeded FineTuningJob row whose adapter is stored where
a trained job's is, so `/v1/models`, chat, batches and evaluations find it
like any other (domain/jobs/lineage.py find_fine_tune).

Order: the whole bundle is checked against its SHA256SUMS first
(format.verify_bundle), then its manifest, recipe, adapter and events are
read and checked; only then is anything stored, and a failure after that
removes what was stored. A refused bundle leaves no row and no object.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import partial
from typing import IO, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.orm import Session, sessionmaker

from domain.auth.models import User
from domain.bundles import format as fmt
from domain.bundles.service import recipe_yaml
from domain.bundles.writer import Member, stream_zip
from domain.errors import InvalidRequest
from domain.files.models import File
from domain.files.outputs import write_output_file
from domain.files.repository import FileRepository
from domain.files.service import IncomingFile
from domain.ids import new_id
from domain.jobs.events import add_event
from domain.jobs.lineage import final_adapter_key
from domain.jobs.models import FineTuningEvent, FineTuningJob
from domain.jobs.repository import JobRepository
from domain.jobs.schemas import EventObject, fine_tuned_model_name
from domain.settings import Settings
from domain.storage import Storage

MAX_JSON_BYTES = 16 << 20  # manifest, recipe, adapter config, reports
MAX_EVENTS_BYTES = 256 << 20
# What an adapter folder may hold: configuration and safetensors weights, never pickles.
ADAPTER_SUFFIXES = (".json", ".safetensors")
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
CARD_FILES = ("README.md", "training_curves.png")


class _Detail(BaseModel):
    model_config = ConfigDict(extra="allow")

    value: Any


class _Seed(BaseModel):
    value: int = Field(ge=0, le=2**63 - 1)
    origin: str = Field(default="user", max_length=16)


class _Recipe(BaseModel):
    """The parts of a recipe the import reads; the rest is kept as it is."""

    model_config = ConfigDict(extra="allow")

    hyperparameters: dict[str, _Detail]
    seed: _Seed
    base_model: dict[str, Any]
    data: dict[str, Any] = Field(default_factory=dict)


def _json(bundle: fmt.VerifiedBundle, name: str) -> Any:
    try:
        return json.loads(bundle.read(name, MAX_JSON_BYTES))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise fmt.refused(f"{name} in the bundle is not valid JSON: {exc}.") from exc


def _parsed(model: type[BaseModel], value: Any, name: str):
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in exc.errors()[:5])
        raise fmt.refused(f"{name} in the bundle is not what tunehouse writes: {problems}.") from None


def _adapter_files(bundle: fmt.VerifiedBundle) -> list[str]:
    names = [name[len(fmt.ADAPTER_DIR):] for name in bundle.names() if name.startswith(fmt.ADAPTER_DIR)]
    for name in names:
        if "/" in name or not name.endswith(ADAPTER_SUFFIXES):
            raise fmt.refused(
                f"The bundle's adapter holds {name!r}; an adapter here is configuration (.json) and "
                "safetensors weights only.", "invalid_bundle_member")
    if ADAPTER_CONFIG not in names or ADAPTER_WEIGHTS not in names:
        raise fmt.refused(f"The bundle has no adapter ({fmt.ADAPTER_DIR}{ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}).")
    config = _json(bundle, fmt.ADAPTER_DIR + ADAPTER_CONFIG)
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise fmt.refused("The bundle's adapter_config.json is not a PEFT LoRA configuration.")
    return sorted(names)


def _events(bundle: fmt.VerifiedBundle) -> list[EventObject]:
    if not bundle.has(fmt.EVENTS_JSONL):
        return []
    events = []
    for number, line in enumerate(bundle.read(fmt.EVENTS_JSONL, MAX_EVENTS_BYTES).splitlines(), 1):
        if line.strip():
            try:
                events.append(EventObject.model_validate_json(line))
            except ValidationError:
                raise fmt.refused(f"{fmt.EVENTS_JSONL} line {number} is not a fine-tuning event.") from None
    return events


def _filename(bundle: fmt.VerifiedBundle, role: str, default: str) -> str:
    """The file's original name, from its report (metadata only, never a path)."""
    if not bundle.has(fmt.report_member(role)):
        return default
    report = _json(bundle, fmt.report_member(role))
    name = str(report.get("filename") or "") if isinstance(report, dict) else ""
    name = "".join(ch for ch in name.replace("\\", "/").rsplit("/", 1)[-1] if ch.isprintable()).strip()
    return name[:255] or default


def _source_file_id(recipe: _Recipe, role: str) -> str | None:
    entry = recipe.data.get(f"{role}_file")
    file_id = entry.get("id") if isinstance(entry, dict) else None
    return file_id if isinstance(file_id, str) and 0 < len(file_id) <= 64 else None


def _text(value: str) -> str:
    return value.replace("\x00", "")  # PostgreSQL's text holds no NUL


class _Stored:
    """What the import has put in storage so far, removed again if it fails."""

    def __init__(self, storage: Storage):
        self.storage = storage
        self.keys: list[str] = []
        self.prefixes: list[str] = []

    def undo(self) -> None:
        for key in self.keys:
            self.storage.delete(key)
        for prefix in self.prefixes:
            self.storage.delete_prefix(prefix)


def _stream_to(storage: Storage, key: str, chunks) -> None:
    with storage.writer(key) as writer:
        for chunk in chunks:
            writer.write(chunk)
        writer.commit()


def _data_file(bundle: fmt.VerifiedBundle, storage: Storage, settings: Settings, user: User, role: str) -> File | None:
    """A bundled data file as the user's file, validated as an upload is."""
    name = fmt.TRAINING_DATA if role == "training" else fmt.VALIDATION_DATA
    if not bundle.has(name):
        return None
    incoming = IncomingFile(storage, user.id, settings.max_upload_bytes)
    incoming.expect("fine-tune")
    try:
        for chunk in bundle.chunks(name):
            incoming.feed(chunk)
        return incoming.finish("fine-tune", _filename(bundle, role, f"{role}.jsonl"))
    except BaseException:
        incoming.abort()
        raise


@dataclass(frozen=True)
class _Checked:
    """A verified bundle and what the import read from it."""

    bundle: fmt.VerifiedBundle
    manifest: fmt.BundleManifest
    recipe_value: dict
    recipe: _Recipe
    adapter: list[str]
    events: list[EventObject]
    card: dict[str, bytes]


def check_bundle(handle: IO[bytes], settings: Settings) -> _Checked:
    """Everything that can be checked before anything is stored."""
    bundle = fmt.verify_bundle(handle)
    manifest: fmt.BundleManifest = _parsed(fmt.BundleManifest, _json(bundle, fmt.MANIFEST), fmt.MANIFEST)
    if manifest.weights == "full":
        raise fmt.refused(
            f"'{manifest.fine_tuned_model}' is a full fine-tune; this deployment serves LoRA/QLoRA fine-tunes "
            f"only. Unpack its {fmt.FULL_MODEL} and add it as a base model (TUNEHOUSE_BASE_MODELS, path:) instead.",
            "full_fine_tune_not_importable")
    if manifest.base_model not in settings.base_models:
        raise InvalidRequest(
            f"The bundle's base model '{manifest.base_model}' is not offered by this deployment "
            f"(it offers {', '.join(sorted(settings.base_models))}).",
            param="file", code="base_model_not_offered")
    recipe_value = _json(bundle, fmt.RECIPE_JSON)
    recipe: _Recipe = _parsed(_Recipe, recipe_value, fmt.RECIPE_JSON)
    adapter_setting = recipe.hyperparameters.get("adapter")
    if adapter_setting is not None and adapter_setting.value == "full":
        raise fmt.refused("The recipe trains every weight (adapter 'full') but the manifest says the bundle holds an adapter.")
    if recipe.base_model.get("id") != manifest.base_model:
        raise fmt.refused(f"The recipe's base model {recipe.base_model.get('id')!r} is not the manifest's "
                          f"'{manifest.base_model}'.")
    return _Checked(
        bundle, manifest, recipe_value, recipe, _adapter_files(bundle), _events(bundle),
        {name: bundle.read(name, MAX_EVENTS_BYTES) for name in CARD_FILES if bundle.has(name)},
    )


def import_bundle(
    db: sessionmaker[Session], storage: Storage, settings: Settings, user: User, handle: IO[bytes]
) -> FineTuningJob:
    """Register the bundle in `handle` (a seekable zip) as `user`'s fine-tune.
    Refused (InvalidRequest) with nothing stored when it does not match its
    SHA256SUMS, is not a tunehouse bundle, holds a full fine-tune, or its base
    model is not offered here."""
    checked = check_bundle(handle, settings)
    stored = _Stored(storage)
    try:
        return _store(db, storage, settings, user, checked, stored)
    except BaseException:
        stored.undo()
        raise


def _store(db: sessionmaker[Session], storage: Storage, settings: Settings, user: User, checked: _Checked,
           stored: _Stored) -> FineTuningJob:
    bundle, manifest, recipe = checked.bundle, checked.manifest, checked.recipe
    job_id, now = new_id("ftjob-"), int(time.time())
    prefix = final_adapter_key(job_id)
    stored.prefixes.append(prefix)
    for name in checked.adapter:
        _stream_to(storage, f"{prefix}/{name}", bundle.chunks(fmt.ADAPTER_DIR + name))
    provenance = {
        "fine_tuned_model": manifest.fine_tuned_model,
        "fine_tuning_job": manifest.fine_tuning_job,
        "lineage": manifest.lineage,
        "bundle_sha256": bundle.sha256,
        "bundle_created_at": manifest.created_at,
        "imported_at": now,
        "earlier": manifest.imported_from,  # where the source had imported it from, if it had
    }
    kept_recipe = {**checked.recipe_value, "imported_from": provenance}
    # The adapter download, laid out as a trained job's (worker/training/artifacts.py adapter_zip).
    zip_key = f"jobs/{job_id}/adapter.zip"
    stored.keys.append(zip_key)
    _stream_to(storage, zip_key, stream_zip(None, [
        *(Member(name, read=partial(bundle.chunks, fmt.ADAPTER_DIR + name), deflate=not name.endswith(".safetensors"))
          for name in checked.adapter),
        Member("tunehouse_recipe.json", data=json.dumps(kept_recipe, indent=2).encode()),
        Member("tunehouse_recipe.yaml", data=recipe_yaml(kept_recipe).encode()),
        *(Member(name, data=data) for name, data in checked.card.items()),
    ], now, sums=False))
    files: dict[str, File | None] = {}
    for role in ("training", "validation"):
        files[role] = _data_file(bundle, storage, settings, user, role)
        if files[role] is not None:
            stored.keys.append(files[role].storage_key)
    metrics_file = None
    if bundle.has(fmt.METRICS_CSV):
        metrics_file = write_output_file(storage, user.id, "fine-tune-results", f"{job_id}-step-metrics.csv",
                                         bundle.chunks(fmt.METRICS_CSV))
        stored.keys.append(metrics_file.storage_key)

    hyperparameters = {name: detail.model_dump() for name, detail in recipe.hyperparameters.items()}
    steps = [event.data["step"] for event in checked.events
             if event.type == "metrics" and isinstance((event.data or {}).get("step"), int)]
    with db() as session:
        for file in [*files.values(), metrics_file]:
            if file is not None:
                FileRepository(session, user.id).add(file)
        job = FineTuningJob(
            id=job_id,
            owner_id=user.id,
            model=manifest.base_model,
            # Without the bundled data, the source deployment's file ids: named, not found here.
            training_file_id=files["training"].id if files["training"] else _source_file_id(recipe, "training") or "",
            validation_file_id=(files["validation"].id if files["validation"]
                                else _source_file_id(recipe, "validation")),
            status="succeeded",
            method=manifest.method,
            requested_hyperparameters={name: detail["value"] for name, detail in hyperparameters.items()
                                       if detail.get("origin") == "user"},
            hyperparameters=hyperparameters,
            seed=recipe.seed.value,
            seed_origin=recipe.seed.origin,
            suffix=manifest.suffix or None,
            user_metadata=None,
            model_deleted=False,
            trained_tokens=manifest.trained_tokens,
            result_files=[metrics_file.id] if metrics_file else [],
            created_at=now,
            started_at=None,
            finished_at=now,
            step=max(steps, default=None),
            total_steps=max(steps, default=None),
            adapter_key=zip_key,
            recipe=kept_recipe,
            attempt=0,
        )
        job.fine_tuned_model = fine_tuned_model_name(job, user.name)
        JobRepository(session, user.id).add(job)
        # The source's history, oldest first, under new ids: its curves show here too.
        for event in checked.events:
            session.add(FineTuningEvent(id=new_id("ft-event-"), job_id=job_id, created_at=event.created_at,
                                        level=event.level, type=event.type, message=_text(event.message),
                                        data=event.data))
        add_event(session, job_id, f"Imported {_text(manifest.fine_tuned_model)} from a bundle "
                                   f"(sha256 {bundle.sha256[:12]}…) as {job.fine_tuned_model}")
        session.commit()
        session.refresh(job)
        session.expunge(job)
        return job
