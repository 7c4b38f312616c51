"""GET /v1/fine_tuning/jobs/{id}/gguf without a worker (both backends): what
is refused before anything is queued, the export queued once, its stage and
its failure as the API shows them, the download once ready. (Made by a
worker: tests/api/exports/test_gguf_e2e.py.)"""

import io
import json
import time
import uuid
import zipfile

import pytest
from sqlalchemy import select

from domain.exports.gguf import stage_key
from domain.exports.models import Export
from domain.jobs.models import FineTuningJob
from tests.api.jobs.test_endpoints import BASE, create, training_file


def succeeded_job(service, user, model_type: str | None = "llama") -> FineTuningJob:
    """A succeeded LoRA job whose recipe records the base model's architecture."""
    job_id = f"ftjob-{uuid.uuid4().hex[:12]}"
    recipe = {"memory": {"model_shape": {"model_type": model_type}}} if model_type else {}
    with service.state.sessionmaker() as session:
        job = FineTuningJob(
            id=job_id, owner_id=user.id, model=BASE, training_file_id="file-x", status="succeeded", suffix="gguf",
            requested_hyperparameters={}, seed=1, seed_origin="auto", model_deleted=False, result_files=[],
            created_at=int(time.time()), attempt=1, handbacks=0, recipe=recipe,
            fine_tuned_model=f"ft:{BASE}:{user.name}:gguf:{job_id}", adapter_key=f"jobs/{job_id}/adapter.zip",
        )
        session.add(job)
        session.commit()
        return job


def exports_of(service, job_id: str) -> list[Export]:
    with service.state.sessionmaker() as session:
        return list(session.scalars(select(Export).where(Export.job_id == job_id)))


def set_export(service, export_id: str, **values) -> None:
    with service.state.sessionmaker() as session:
        export = session.get(Export, export_id)
        for name, value in values.items():
            setattr(export, name, value)
        session.commit()


def gguf(client, job_id: str, **params):
    return client.get(f"/v1/fine_tuning/jobs/{job_id}/gguf", params=params, follow_redirects=True)


def test_nothing_is_queued_for_a_job_that_has_not_succeeded(alice, service):
    job_id = create(alice, training_file=training_file(alice)).json()["id"]
    response = gguf(alice, job_id)
    assert response.status_code == 409 and response.json()["error"]["code"] == "adapter_not_ready"
    assert exports_of(service, job_id) == []


def test_another_users_job_is_404(service, alice_user, bob):
    job = succeeded_job(service, alice_user)
    assert gguf(bob, job.id).status_code == 404
    assert exports_of(service, job.id) == []


def test_an_unknown_quantization_is_refused(service, alice_user, alice):
    job = succeeded_job(service, alice_user)
    response = gguf(alice, job.id, quantization="q2_k")
    assert response.status_code == 400 and response.json()["error"]["param"] == "quantization"
    assert exports_of(service, job.id) == []


def test_an_unsupported_architecture_is_a_422_that_names_it(service, alice_user, alice):
    job = succeeded_job(service, alice_user, model_type="gpt_neox")
    response = gguf(alice, job.id)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "unsupported_architecture" and "'gpt_neox'" in error["message"]
    assert "llama" in error["message"] and "qwen2" in error["message"]
    assert exports_of(service, job.id) == []


def test_the_first_request_queues_the_export_once_and_answers_202(service, alice_user, alice):
    job = succeeded_job(service, alice_user)
    first = gguf(alice, job.id)
    assert first.status_code == 202 and first.headers["Retry-After"]
    assert first.json() == {
        "object": "fine_tuning.job.gguf_export", "job_id": job.id, "quantization": "q8_0", "status": "queued",
        "stage": None, "message": "Exporting the fine-tune as a q8_0 GGUF; ask again shortly.",
    }
    assert gguf(alice, job.id).json()["status"] == "queued"
    assert gguf(alice, job.id, quantization="f16").json()["quantization"] == "f16"
    assert sorted(export.format for export in exports_of(service, job.id)) == ["gguf-f16", "gguf-q8_0"]


def test_a_running_export_shows_the_stage_its_worker_noted(service, alice_user, alice):
    job = succeeded_job(service, alice_user)
    gguf(alice, job.id, quantization="q4_k_m")
    [export] = exports_of(service, job.id)
    set_export(service, export.id, status="running")
    service.state.storage.put_bytes(stage_key(export.id), json.dumps({"stage": "quantizing with llama.cpp (q4_k_m)"}).encode())
    body = gguf(alice, job.id, quantization="q4_k_m").json()
    assert (body["status"], body["stage"]) == ("running", "quantizing with llama.cpp (q4_k_m)")


@pytest.mark.parametrize(
    "error, status",
    [
        ("quantizer_unavailable: q4_k_m is made by llama.cpp's quantizer, which this worker does not have.", 409),
        ("unsupported_tokenizer: GGUF export supports byte-level BPE tokenizers.", 422),
    ],
)
def test_a_failed_export_answers_its_error_until_asked_again(service, alice_user, alice, error, status):
    job = succeeded_job(service, alice_user)
    gguf(alice, job.id, quantization="q4_k_m")
    [failed] = exports_of(service, job.id)
    set_export(service, failed.id, status="failed", error=error)
    response = gguf(alice, job.id, quantization="q4_k_m")
    assert response.status_code == status
    assert response.json()["error"]["code"] == error.split(":")[0]
    assert error.split(": ", 1)[1] in response.json()["error"]["message"]
    assert [export.id for export in exports_of(service, job.id)] == [failed.id]  # nothing queued again
    retried = gguf(alice, job.id, quantization="q4_k_m", retry="true")
    assert retried.status_code == 202 and retried.json()["status"] == "queued"
    [again] = exports_of(service, job.id)
    assert again.id != failed.id and again.status == "queued"


def test_a_ready_export_is_downloaded(service, alice_user, alice):
    job = succeeded_job(service, alice_user)
    gguf(alice, job.id)
    [export] = exports_of(service, job.id)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("Modelfile", "FROM ./x.gguf\n")
    key = f"jobs/{job.id}/gguf-q8_0.zip"
    service.state.storage.put_bytes(key, archive.getvalue())
    set_export(service, export.id, status="ready", storage_key=key)
    response = gguf(alice, job.id)
    assert response.status_code == 200 and response.content == archive.getvalue()
    if service.name == "sqlite-local":  # on S3 the redirect's target names it
        assert f"{job.id}-q8_0.gguf.zip" in response.headers["Content-Disposition"]
