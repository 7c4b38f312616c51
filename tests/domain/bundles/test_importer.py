"""What an import checks in a bundle that matches its SHA256SUMS, before it
stores anything: a manifest and recipe as tunehouse writes them, an adapter
of safetensors and a LoRA configuration, a base model offered here.
(Storing, and refusals leaving nothing: tests/api/bundles/test_endpoints.py.)"""

import io
import json
from dataclasses import replace

import pytest

from domain.bundles import format as fmt
from domain.bundles.importer import check_bundle
from domain.errors import InvalidRequest
from domain.settings import Settings
from tests.domain.bundles.test_format import BASE, bundle_bytes, synthetic_members


def with_member(name: str, data: bytes) -> bytes:
    """A well-formed bundle (SHA256SUMS recomputed) with one member's content replaced."""
    return bundle_bytes([replace(m, data=data) if m.name == name else m for m in synthetic_members()])


def edited_json(name: str, edit) -> bytes:
    member = next(m for m in synthetic_members() if m.name == name)
    value = json.loads(member.data)
    edit(value)
    return with_member(name, json.dumps(value).encode())


def refusal(data: bytes, tmp_path) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        check_bundle(io.BytesIO(data), Settings(data_dir=tmp_path))
    return caught.value


def test_a_well_formed_bundle_passes_with_what_the_import_needs(tmp_path):
    checked = check_bundle(io.BytesIO(bundle_bytes(synthetic_members())), Settings(data_dir=tmp_path))
    assert checked.manifest.base_model == BASE and checked.manifest.suffix == "lab"
    assert checked.adapter == ["adapter_config.json", "adapter_model.safetensors"]
    assert [event.message for event in checked.events] == ["Job queued", "Step 1/1"]
    assert checked.recipe.seed.value == 7 and checked.card == {"README.md": b"# card\n"}


@pytest.mark.parametrize("data, words", [
    (with_member(fmt.MANIFEST, b"{not json"), "tunehouse_bundle.json in the bundle is not valid JSON"),
    (edited_json(fmt.MANIFEST, lambda m: m.update(tunehouse_bundle_version=2)), "tunehouse_bundle_version"),
    (edited_json(fmt.MANIFEST, lambda m: m.update(suffix="a:b")), "suffix"),
    (edited_json(fmt.RECIPE_JSON, lambda r: r.update(hyperparameters={"n_epochs": 2})), "hyperparameters.n_epochs"),
    (edited_json(fmt.RECIPE_JSON, lambda r: r["base_model"].update(id="other/model")), "is not the manifest's"),
    (edited_json(fmt.RECIPE_JSON, lambda r: r["hyperparameters"].update(adapter={"value": "full"})), "adapter 'full'"),
    (with_member("adapter/adapter_config.json", b'{"peft_type": "PREFIX_TUNING"}'), "not a PEFT LoRA configuration"),
    (with_member(fmt.EVENTS_JSONL, b'{"level": "loud"}\n'), "events.jsonl line 1"),
])
def test_a_bundle_that_is_not_what_tunehouse_writes_is_refused_with_the_reason(tmp_path, data, words):
    error = refusal(data, tmp_path)
    assert error.code == "invalid_bundle" and words in error.message


def test_a_full_fine_tune_is_not_imported(tmp_path):
    error = refusal(edited_json(fmt.MANIFEST, lambda m: m.update(weights="full")), tmp_path)
    assert error.code == "full_fine_tune_not_importable" and "model.zip" in error.message


def test_a_base_model_not_offered_is_named(tmp_path):
    error = refusal(bundle_bytes(synthetic_members(base="acme/elsewhere-7b")), tmp_path)
    assert error.code == "base_model_not_offered" and "'acme/elsewhere-7b'" in error.message and BASE in error.message
