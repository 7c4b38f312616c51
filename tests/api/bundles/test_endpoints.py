"""POST /v1/models/import and GET .../bundle on both backends, with bundles
written by the real writer around a stand-in adapter (no training here;
tests/api/bundles/test_round_trip.py trains, bundles, imports and chats)."""

import io
import json
import zipfile
from dataclasses import replace

import pytest
from sqlalchemy import func, select

from domain.bundles import format as fmt
from domain.files.models import File
from domain.jobs.events import add_event
from domain.jobs.lineage import final_adapter_key
from domain.jobs.models import FineTuningEvent, FineTuningJob
from domain.jobs.weights import merged_weights_key
from tests.api.evaluations.test_endpoints import succeeded_job
from tests.api.files.test_endpoints import upload
from tests.chat_data import chat_jsonl
from tests.domain.bundles.test_format import ADAPTER_WEIGHTS, BASE, bundle_bytes, rewritten, synthetic_members


def import_bundle(client, data: bytes):
    return client.post("/v1/models/import", files={"file": ("bundle.zip", data, "application/zip")})


def stored_state(service, user_id: int) -> tuple:
    """Every row and object a user could have: what a refused import must leave as it was."""
    with service.state.sessionmaker() as session:
        counts = tuple(
            session.scalar(select(func.count()).select_from(model).where(model.owner_id == user_id))
            for model in (FineTuningJob, File)
        )
        events = session.scalar(select(func.count()).select_from(FineTuningEvent))
    return counts, events, tuple(service.state.storage.list_keys(""))


def test_an_imported_bundle_is_the_callers_fine_tune_and_nobody_elses(service, alice, alice_user, bob):
    data = chat_jsonl(12)
    response = import_bundle(alice, bundle_bytes(synthetic_members(data=data)))
    assert response.status_code == 200, response.text
    model = response.json()
    job_id = model["fine_tuning_job"]
    assert model["id"] == f"ft:{BASE}:{alice_user.name}:lab:{job_id}"
    assert (model["kind"], model["base_model"], model["owned_by"]) == ("fine-tune", BASE, alice_user.name)
    assert model["id"] in [m["id"] for m in alice.get("/v1/models").json()["data"]]
    assert model["id"] not in [m["id"] for m in bob.get("/v1/models").json()["data"]]
    assert bob.get(f"/v1/models/{model['id']}").status_code == 404
    assert bob.get(f"/v1/fine_tuning/jobs/{job_id}").status_code == 404

    # The job renders like a trained one: hyperparameters, seed, recipe with provenance, history, files.
    job = alice.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    assert (job["status"], job["fine_tuned_model"], job["seed"]) == ("succeeded", model["id"], 7)
    assert job["hyperparameters"] == {"n_epochs": 2, "lora_r": 8} and job["trained_tokens"] == 1234
    assert alice.get("/v1/fine_tuning/jobs").json()["data"][0]["id"] == job_id
    training = alice.get(f"/v1/files/{job['training_file']}")
    assert training.status_code == 200 and training.json()["filename"] == "chat.jsonl"
    assert alice.get(f"/v1/files/{job['training_file']}/content").content == data
    recipe = alice.get(f"/v1/fine_tuning/jobs/{job_id}/recipe").json()
    assert recipe["imported_from"]["fine_tuned_model"] == f"ft:{BASE}:carol:lab:ftjob-source"
    assert recipe["imported_from"]["lineage"] == [BASE] and recipe["seed"]["value"] == 7
    messages = [e["message"] for e in alice.get(f"/v1/fine_tuning/jobs/{job_id}/events").json()["data"]]
    assert messages[0].startswith("Imported ft:") and "Job queued" in messages
    assert alice.get(f"/v1/fine_tuning/jobs/{job_id}/metrics").json()["data"][0]["train_loss"] == 1.5
    assert alice.get(f"/v1/files/{job['result_files'][0]}/content").text.startswith("step,epoch,train_loss")

    # Its adapter download holds the bundle's adapter, the recipe and a model card; the stored zip keeps
    # the bundle's own card.
    adapter = zipfile.ZipFile(io.BytesIO(alice.get(f"/v1/fine_tuning/jobs/{job_id}/adapter", follow_redirects=True).content))
    assert adapter.read("adapter_model.safetensors") == ADAPTER_WEIGHTS
    assert json.loads(adapter.read("tunehouse_recipe.json"))["imported_from"]["bundle_sha256"]
    assert BASE.encode() in adapter.read("README.md")
    stored = zipfile.ZipFile(io.BytesIO(service.state.storage.get_bytes(f"jobs/{job_id}/adapter.zip")))
    assert stored.read("README.md") == b"# card\n"

    # And it bundles again, with its provenance carried on.
    again = zipfile.ZipFile(io.BytesIO(alice.get(f"/v1/fine_tuning/jobs/{job_id}/bundle").content))
    manifest = json.loads(again.read(fmt.MANIFEST))
    assert manifest["imported_from"]["fine_tuning_job"] == "ftjob-source"
    assert again.read("adapter/adapter_model.safetensors") == ADAPTER_WEIGHTS


def flip_weights(name, data):
    if name == "adapter/adapter_model.safetensors":
        data = data[:10] + bytes([data[10] ^ 0xFF]) + data[11:]
    return [(name, data)]


TAMPERED = {
    "a byte changed in the adapter": (flip_weights, "bundle_tampered"),
    "a member missing": (lambda n, d: [] if n == fmt.EVENTS_JSONL else [(n, d)], "bundle_tampered"),
    "a member not in SHA256SUMS": (
        lambda n, d: [(n, d), ("adapter/adapter_model.bin", b"pickle")] if n == fmt.MANIFEST else [(n, d)],
        "bundle_tampered"),
    "a path-traversal member name": (
        lambda n, d: [("../../evil.json" if n == fmt.RECIPE_YAML else n, d)], "invalid_bundle_member"),
}


@pytest.mark.parametrize("what", TAMPERED)
def test_a_tampered_bundle_is_refused_and_nothing_is_stored(service, alice, alice_user, what):
    change, code = TAMPERED[what]
    before = stored_state(service, alice_user.id)
    response = import_bundle(alice, rewritten(bundle_bytes(synthetic_members(data=chat_jsonl(12))), change))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == code
    assert stored_state(service, alice_user.id) == before


def test_a_bundle_whose_base_model_is_not_offered_is_refused_by_name(service, alice, alice_user):
    before = stored_state(service, alice_user.id)
    response = import_bundle(alice, bundle_bytes(synthetic_members(base="acme/elsewhere-7b")))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "base_model_not_offered" and "'acme/elsewhere-7b'" in error["message"]
    assert stored_state(service, alice_user.id) == before


def test_bundled_data_that_does_not_validate_is_refused_and_nothing_is_stored(service, alice, alice_user):
    before = stored_state(service, alice_user.id)
    response = import_bundle(alice, bundle_bytes(synthetic_members(data=b'{"messages": "not a list"}\n')))
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_file"
    assert stored_state(service, alice_user.id) == before


def test_an_adapter_with_pickled_weights_is_refused(service, alice):
    members = [replace(m, name="adapter/adapter_model.bin") if m.name.endswith(".safetensors") else m
               for m in synthetic_members()]
    response = import_bundle(alice, bundle_bytes(members))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_bundle_member" and "safetensors" in response.json()["error"]["message"]


def test_an_import_larger_than_the_upload_limit_is_a_413(service, alice, alice_user):
    before = stored_state(service, alice_user.id)
    members = synthetic_members(weights=b"\x01" * (service.settings.max_upload_bytes + 1))
    response = import_bundle(alice, bundle_bytes(members))
    assert response.status_code == 413 and response.json()["error"]["code"] == "file_too_large"
    assert stored_state(service, alice_user.id) == before


def test_a_bundle_is_409_until_the_job_succeeds_and_404_for_others(service, alice, bob):
    file_id = upload(alice, chat_jsonl(12)).json()["id"]
    job = alice.post("/v1/fine_tuning/jobs", json={"model": BASE, "training_file": file_id}).json()
    response = alice.get(f"/v1/fine_tuning/jobs/{job['id']}/bundle")
    assert response.status_code == 409 and response.json()["error"]["code"] == "bundle_not_ready"
    assert bob.get(f"/v1/fine_tuning/jobs/{job['id']}/bundle").status_code == 404


def stored_job(service, user, *, full: bool) -> str:
    """A succeeded job as a training worker leaves it, with its weights in storage."""
    with service.client(user.key) as client:
        file_id = upload(client, chat_jsonl(12)).json()["id"]
    job = succeeded_job(service, user, file_id, suffix="stored")
    with service.state.sessionmaker() as session:
        job = session.merge(job)
        job.hyperparameters = {"adapter": {"value": "full" if full else "lora", "origin": "user", "reason": "asked"}}
        job.recipe = {"tunehouse_recipe_version": 1, "job_id": job.id, "base_model": {"id": BASE},
                      "hyperparameters": job.hyperparameters, "seed": {"value": 11, "origin": "user"}}
        add_event(session, job.id, "Step 1/1", type="metrics", data={"step": 1, "train_loss": 0.5})
        session.commit()
    storage = service.state.storage
    if full:
        storage.put_bytes(merged_weights_key(job.id), b"the whole model" * 100)
    else:
        storage.put_bytes(f"{final_adapter_key(job.id)}/adapter_config.json", b'{"peft_type": "LORA"}')
        storage.put_bytes(f"{final_adapter_key(job.id)}/adapter_model.safetensors", ADAPTER_WEIGHTS)
        storage.put_bytes(f"{final_adapter_key(job.id)}/README.md", b"PEFT's generic card")
    return job.id


def test_a_bundle_is_streamed_with_every_member_in_sha256sums(service, alice, alice_user, bob):
    job_id = stored_job(service, alice_user, full=False)
    assert bob.get(f"/v1/fine_tuning/jobs/{job_id}/bundle").status_code == 404
    response = alice.get(f"/v1/fine_tuning/jobs/{job_id}/bundle")
    assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
    assert f'filename="{job_id}-bundle.zip"' in response.headers["content-disposition"]
    bundle = fmt.verify_bundle(io.BytesIO(response.content))  # every member listed, every digest right
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors", fmt.RECIPE_JSON, fmt.RECIPE_YAML,
            "README.md", "training_curves.png", fmt.METRICS_CSV, fmt.EVENTS_JSONL,
            fmt.report_member("training")} == set(bundle.names()) - {fmt.MANIFEST}
    assert "adapter/README.md" not in bundle.names()  # the bundle's card is the real one
    assert bundle.read(fmt.METRICS_CSV, 1 << 20).decode().splitlines()[1].startswith("1,")
    manifest = json.loads(bundle.read(fmt.MANIFEST, 1 << 20))
    assert (manifest["weights"], manifest["fine_tuning_job"], manifest["lineage"]) == ("adapter", job_id, [BASE])
    with_data = fmt.verify_bundle(io.BytesIO(alice.get(f"/v1/fine_tuning/jobs/{job_id}/bundle",
                                                       params={"include_data": "true"}).content))
    assert with_data.read(fmt.TRAINING_DATA, 1 << 20) == chat_jsonl(12)


def test_a_full_fine_tunes_bundle_holds_its_model_and_is_not_imported(service, alice, alice_user):
    job_id = stored_job(service, alice_user, full=True)
    response = alice.get(f"/v1/fine_tuning/jobs/{job_id}/bundle")
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert archive.read(fmt.FULL_MODEL) == b"the whole model" * 100
    assert archive.getinfo(fmt.FULL_MODEL).compress_type == zipfile.ZIP_STORED
    assert not any(name.startswith("adapter/") for name in archive.namelist())
    assert json.loads(archive.read(fmt.MANIFEST))["weights"] == "full"
    refused = import_bundle(alice, response.content)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "full_fine_tune_not_importable"
