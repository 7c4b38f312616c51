"""The reproducibility bundle's layout, its manifest and its checksums, and
the checks a bundle passes before anything of it is used.

A bundle is one zip:

    tunehouse_bundle.json        the manifest (BundleManifest)
    adapter/…                    the PEFT adapter folder (LoRA/QLoRA jobs)
    model.zip                    or, for a full fine-tune, the whole model as the job's merged download
    recipe.json, recipe.yaml     every resolved hyperparameter with its origin (`tunehouse train --recipe`)
    README.md, training_curves.png   the model card
    metrics.csv                  every training step's metrics
    events.jsonl                 every event of the job, oldest first
    evaluation/metrics.json      the automatic evaluation (base vs fine-tune), when there is one,
    evaluation/predictions.jsonl, evaluation/predictions.csv   with its per-item predictions
    data/training_file.report.json, data/validation_file.report.json   the files' validation reports
    data/training.jsonl, data/validation.jsonl   the files themselves, with ?include_data=true
    SHA256SUMS                   `sha256sum` lines over every other member, written last

Member names in a bundle someone hands us are untrusted: each must be a plain
relative path, and every member but SHA256SUMS must be listed in it, with the
right digest, before any of them is read for its content.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from collections.abc import Iterator
from typing import IO, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from domain.errors import InvalidRequest

FORMAT_VERSION = 1
MANIFEST = "tunehouse_bundle.json"
SUMS = "SHA256SUMS"
ADAPTER_DIR = "adapter/"
FULL_MODEL = "model.zip"
RECIPE_JSON = "recipe.json"
RECIPE_YAML = "recipe.yaml"
METRICS_CSV = "metrics.csv"
EVENTS_JSONL = "events.jsonl"
EVALUATION_METRICS = "evaluation/metrics.json"
PREDICTIONS_JSONL = "evaluation/predictions.jsonl"
PREDICTIONS_CSV = "evaluation/predictions.csv"
TRAINING_DATA = "data/training.jsonl"
VALIDATION_DATA = "data/validation.jsonl"


def report_member(role: str) -> str:
    """role: "training" or "validation"."""
    return f"data/{role}_file.report.json"


# A member name: "/"-separated segments of plain characters, none of them "."
# or "..": never absolute, never outside the folder it is unpacked in.
_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
MAX_MEMBERS = 10_000
MAX_NAME_LENGTH = 512
# Decompressed bytes allowed per compressed byte of the whole bundle (a zip
# bomb is refused long before it fills a disk), with a floor for small
# bundles of well-compressing text.
MAX_EXPANSION = 20
MIN_EXPANSION_BYTES = 64 << 20
# What zipfile raises on a damaged, encrypted or oddly compressed zip.
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError, NotImplementedError, RuntimeError)


def refused(message: str, code: str = "invalid_bundle") -> InvalidRequest:
    return InvalidRequest(message, param="file", code=code)


def tampered(message: str) -> InvalidRequest:
    return refused(f"The bundle does not match its SHA256SUMS: {message}. Nothing was imported.", "bundle_tampered")


def check_member_name(name: str) -> str:
    if len(name) > MAX_NAME_LENGTH or not all(_SEGMENT.match(part) for part in name.split("/")):
        raise refused(f"The bundle holds a member with a name that is not a plain relative path: {name[:100]!r}.",
                      "invalid_bundle_member")
    return name


def sha256sums_text(digests: dict[str, str]) -> str:
    """`sha256sum` format, so `sha256sum -c SHA256SUMS` checks an unpacked bundle."""
    return "".join(f"{digest}  {name}\n" for name, digest in digests.items())


_SUMS_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


def parse_sha256sums(text: str) -> dict[str, str]:
    digests: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        match = _SUMS_LINE.match(line)
        if match is None:
            raise refused(f"{SUMS} line {number} is not '<sha256>  <name>'.")
        name = check_member_name(match[2])
        if name in digests or name == SUMS:
            raise refused(f"{SUMS} names {name!r} more than once (or itself).")
        digests[name] = match[1]
    return digests


class Lineage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(max_length=512)


class BundleManifest(BaseModel):
    """tunehouse_bundle.json. Unknown keys are kept but not used (a newer writer may add some)."""

    model_config = ConfigDict(extra="allow")

    tunehouse_bundle_version: Literal[1]
    created_at: int
    fine_tuning_job: str = Field(max_length=64, description="The job in the deployment the bundle came from.")
    fine_tuned_model: str = Field(max_length=512, description="Its model name there.")
    base_model: str = Field(min_length=1, max_length=255)
    suffix: str | None = Field(default=None, max_length=40, pattern=r"^[A-Za-z0-9_.-]*$")
    method: Literal["supervised", "dpo"] = "supervised"
    weights: Literal["adapter", "full"]
    trained_tokens: int | None = Field(default=None, ge=0)
    # The models this one was trained from, nearest first, down to the base model.
    lineage: list[str] = Field(default_factory=list, max_length=100)
    # Where the source job itself came from, if it was imported there.
    imported_from: dict[str, Any] | None = None
    includes_data: bool = False


class VerifiedBundle:
    """A bundle whose every member is named in SHA256SUMS and matches it, and
    whose SHA256SUMS names nothing missing. Read members with `read`."""

    def __init__(self, archive: zipfile.ZipFile, digests: dict[str, str], sha256: str):
        self.archive = archive
        self.digests = digests
        self.sha256 = sha256  # of the whole zip: the bundle's identity

    def names(self) -> list[str]:
        return list(self.digests)

    def has(self, name: str) -> bool:
        return name in self.digests

    def read(self, name: str, max_bytes: int) -> bytes:
        if name not in self.digests:
            raise refused(f"The bundle has no {name}.")
        return _read_limited(self.archive, name, max_bytes)

    def chunks(self, name: str) -> Iterator[bytes]:
        with self.archive.open(name) as member:
            while chunk := member.read(1 << 20):
                yield chunk


def verify_bundle(handle: IO[bytes]) -> VerifiedBundle:
    """Open the zip in `handle` (seekable) and check it against its SHA256SUMS,
    reading every member once. Refused (InvalidRequest) when it is no zip, a
    name is not a plain relative path or repeats, a member is missing from
    SHA256SUMS or SHA256SUMS names one that is not there, a digest differs, or
    it expands too far."""
    handle.seek(0, 2)
    size = handle.tell()
    handle.seek(0)
    whole = hashlib.sha256()
    while chunk := handle.read(1 << 20):
        whole.update(chunk)
    handle.seek(0)
    try:
        archive = zipfile.ZipFile(handle)
        infos = archive.infolist()
    except ZIP_ERRORS as exc:
        raise refused(f"The upload is not a readable zip: {exc}.") from exc
    if len(infos) > MAX_MEMBERS:
        raise refused(f"The bundle holds more than {MAX_MEMBERS} members.")
    seen: set[str] = set()
    for info in infos:
        name = check_member_name(info.filename)
        if info.is_dir() or name in seen:
            raise refused(f"The bundle holds {name!r} twice, or as a folder.", "invalid_bundle_member")
        seen.add(name)
    if SUMS not in seen:
        raise refused(f"The bundle has no {SUMS}; it is not a tunehouse bundle (or was cut short).")
    budget = max(MIN_EXPANSION_BYTES, MAX_EXPANSION * size)
    try:
        digests = parse_sha256sums(_read_limited(archive, SUMS, 4 << 20).decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise refused(f"{SUMS} is not UTF-8 text.") from exc
    extra = sorted(seen - set(digests) - {SUMS})
    if extra:
        raise tampered(f"{', '.join(extra[:5])} {'is' if len(extra) == 1 else 'are'} not listed in it")
    missing = sorted(set(digests) - seen)
    if missing:
        raise tampered(f"{', '.join(missing[:5])} {'is' if len(missing) == 1 else 'are'} listed but missing")
    for name, expected in digests.items():
        digest = hashlib.sha256()
        try:
            with archive.open(name) as member:
                while chunk := member.read(1 << 20):
                    budget -= len(chunk)  # counted as read: a header's sizes are not trusted
                    if budget < 0:
                        raise refused("The bundle expands to far more than its own size; refused as a zip bomb.")
                    digest.update(chunk)
        except ZIP_ERRORS as exc:
            raise tampered(f"{name} cannot be read ({exc})") from exc
        if digest.hexdigest() != expected:
            raise tampered(f"the content of {name} has changed")
    return VerifiedBundle(archive, digests, whole.hexdigest())


def _read_limited(archive: zipfile.ZipFile, name: str, max_bytes: int) -> bytes:
    try:
        with archive.open(name) as member:
            data = member.read(max_bytes + 1)
    except ZIP_ERRORS as exc:
        raise refused(f"{name} cannot be read ({exc}).") from exc
    if len(data) > max_bytes:
        raise refused(f"{name} is larger than {max_bytes} bytes.")
    return data
