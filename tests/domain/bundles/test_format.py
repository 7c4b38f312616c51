"""The bundle as a stream, and the checks a bundle passes before it is used:
every member named in SHA256SUMS with its digest, nothing else, plain names,
no zip bomb."""

import hashlib
import io
import json
import zipfile

import pytest

from domain.bundles import format as fmt
from domain.bundles.writer import Member, stream_zip
from domain.errors import InvalidRequest

BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
ADAPTER_WEIGHTS = bytes(range(256)) * 64


def synthetic_members(base: str = BASE, weights: bytes = ADAPTER_WEIGHTS, *, data: bytes | None = None) -> list[Member]:
    """A bundle's members as tunehouse writes them, with a stand-in adapter:
    what the import reads, without training anything."""
    manifest = fmt.BundleManifest(
        tunehouse_bundle_version=1, created_at=1_780_000_000, fine_tuning_job="ftjob-source",
        fine_tuned_model=f"ft:{base}:carol:lab:ftjob-source", base_model=base, suffix="lab", weights="adapter",
        trained_tokens=1234, lineage=[base], includes_data=data is not None,
    )
    recipe = {
        "tunehouse_recipe_version": 1, "job_id": "ftjob-source", "training_method": "supervised",
        "base_model": {"id": base, "source": "bundled:smollm2", "revision": "r1", "max_length": 2048},
        "hyperparameters": {"n_epochs": {"value": 2, "origin": "user", "reason": "given"},
                            "lora_r": {"value": 8, "origin": "auto", "reason": "default"}},
        "seed": {"value": 7, "origin": "user"},
        "data": {"training_file": {"id": "file-source", "filename": "chat.jsonl", "sha256": "0" * 64, "bytes": 10}},
    }
    events = [
        {"object": "fine_tuning.job.event", "id": "ft-event-1", "created_at": 1_780_000_000, "level": "info",
         "message": "Job queued", "type": "message", "data": None},
        {"object": "fine_tuning.job.event", "id": "ft-event-2", "created_at": 1_780_000_001, "level": "info",
         "message": "Step 1/1", "type": "metrics", "data": {"step": 1, "total_steps": 1, "train_loss": 1.5}},
    ]
    members = [
        Member(fmt.MANIFEST, data=manifest.model_dump_json().encode()),
        Member("adapter/adapter_config.json", data=json.dumps({"peft_type": "LORA", "r": 8}).encode()),
        Member("adapter/adapter_model.safetensors", data=weights, deflate=False),
        Member(fmt.RECIPE_JSON, data=json.dumps(recipe).encode()),
        Member(fmt.RECIPE_YAML, data=b"tunehouse_recipe_version: 1\n"),
        Member("README.md", data=b"# card\n"),
        Member(fmt.METRICS_CSV, data=b"step,epoch,train_loss\n1,1.0,1.5\n"),
        Member(fmt.EVENTS_JSONL, data="".join(json.dumps(e) + "\n" for e in events).encode()),
        Member(fmt.report_member("training"), data=json.dumps({"id": "file-source", "filename": "chat.jsonl"}).encode()),
    ]
    if data is not None:
        members.append(Member(fmt.TRAINING_DATA, data=data))
    return members


def bundle_bytes(members: list[Member]) -> bytes:
    return b"".join(stream_zip(None, members, 1_780_000_000))


def rewritten(bundle: bytes, change) -> bytes:
    """The bundle's members passed through `change(name, data) -> [(name, data)]`,
    zipped again as they are: SHA256SUMS is not recomputed."""
    source = zipfile.ZipFile(io.BytesIO(bundle))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for info in source.infolist():
            for name, data in change(info.filename, source.read(info)):
                archive.writestr(zipfile.ZipInfo(name), data)
    return out.getvalue()


def verify(data: bytes) -> fmt.VerifiedBundle:
    return fmt.verify_bundle(io.BytesIO(data))


def refusal(data: bytes) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        verify(data)
    return caught.value


def test_a_streamed_bundle_lists_every_member_in_sha256sums_and_verifies():
    members = synthetic_members()
    data = bundle_bytes(members)
    archive = zipfile.ZipFile(io.BytesIO(data))
    assert archive.namelist() == [m.name for m in members] + [fmt.SUMS]
    sums = archive.read(fmt.SUMS).decode().splitlines()
    assert sums == [f"{hashlib.sha256(m.data).hexdigest()}  {m.name}" for m in members]
    # Weights are stored as they are; text is deflated.
    assert archive.getinfo("adapter/adapter_model.safetensors").compress_type == zipfile.ZIP_STORED
    assert archive.getinfo(fmt.EVENTS_JSONL).compress_type == zipfile.ZIP_DEFLATED
    bundle = verify(data)
    assert bundle.sha256 == hashlib.sha256(data).hexdigest()
    assert bundle.read("adapter/adapter_model.safetensors", 1 << 20) == ADAPTER_WEIGHTS
    assert bundle_bytes(members) == data  # the same job gives the same bytes


def test_a_changed_byte_is_refused_as_tampered():
    def flip(name, data):
        if name == "adapter/adapter_model.safetensors":
            data = data[:100] + bytes([data[100] ^ 1]) + data[101:]
        return [(name, data)]

    error = refusal(rewritten(bundle_bytes(synthetic_members()), flip))
    assert error.code == "bundle_tampered" and "adapter/adapter_model.safetensors" in error.message


def test_a_missing_member_is_refused_as_tampered():
    error = refusal(rewritten(bundle_bytes(synthetic_members()),
                              lambda name, data: [] if name == fmt.RECIPE_JSON else [(name, data)]))
    assert error.code == "bundle_tampered" and "recipe.json is listed but missing" in error.message


def test_a_member_not_in_sha256sums_is_refused_as_tampered():
    def add(name, data):
        return [(name, data), ("adapter/extra.json", b"{}")] if name == fmt.MANIFEST else [(name, data)]

    error = refusal(rewritten(bundle_bytes(synthetic_members()), add))
    assert error.code == "bundle_tampered" and "adapter/extra.json is not listed" in error.message


@pytest.mark.parametrize("evil", ["../outside.json", "/etc/passwd", "adapter/../../x", "a\\..\\b", "adapter//x", "C:/x"])
def test_a_member_name_that_is_not_a_plain_relative_path_is_refused(evil):
    def add(name, data):
        return [(name, data), (evil, b"x")] if name == fmt.MANIFEST else [(name, data)]

    error = refusal(rewritten(bundle_bytes(synthetic_members()), add))
    assert error.code == "invalid_bundle_member"


def test_a_path_in_sha256sums_that_is_not_plain_is_refused():
    def sums(name, data):
        return [(name, data + b"0" * 64 + b"  ../escape\n" if name == fmt.SUMS else data)]

    assert refusal(rewritten(bundle_bytes(synthetic_members()), sums)).code == "invalid_bundle_member"


def test_no_zip_and_no_sha256sums_are_refused():
    assert refusal(b"not a zip at all").code == "invalid_bundle"
    without_sums = rewritten(bundle_bytes(synthetic_members()), lambda n, d: [] if n == fmt.SUMS else [(n, d)])
    assert "no SHA256SUMS" in refusal(without_sums).message


def test_a_zip_bomb_is_refused_before_it_is_read_whole():
    huge = b"\0" * (fmt.MIN_EXPANSION_BYTES + 1)  # deflates to a few dozen kilobytes
    data = bundle_bytes([Member("adapter/adapter_model.safetensors", data=huge)])
    assert len(data) < fmt.MIN_EXPANSION_BYTES // fmt.MAX_EXPANSION
    assert "zip bomb" in refusal(data).message
