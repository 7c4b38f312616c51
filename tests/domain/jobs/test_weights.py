"""A full fine-tune's weights are the whole model (domain/jobs/weights.py):
it is refused where an adapter on a served base is needed, with a message
that says where its weights are (both backends)."""

import time
import uuid

import pytest

from domain.auth.models import User
from domain.errors import InvalidRequest
from domain.inference.targets import resolve_target
from domain.jobs.models import FineTuningJob
from domain.jobs.weights import is_full_fine_tune, merged_weights_key

BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"


def succeeded_job(service, who, adapter: str) -> FineTuningJob:
    with service.state.sessionmaker() as session:
        owner = session.get(User, who.id)
        job_id = f"ftjob-{uuid.uuid4().hex[:12]}"
        job = FineTuningJob(
            id=job_id, owner_id=owner.id, model=BASE, training_file_id="file-x", status="succeeded",
            requested_hyperparameters={"adapter": adapter}, seed=1, seed_origin="auto", model_deleted=False,
            result_files=[], created_at=int(time.time()), attempt=1, handbacks=0,
            hyperparameters={"adapter": {"value": adapter, "origin": "user", "reason": None}},
            fine_tuned_model=f"ft:{BASE}:{owner.name}::{job_id}",
            adapter_key=merged_weights_key(job_id) if adapter == "full" else f"jobs/{job_id}/adapter.zip",
        )
        session.add(job)
        session.commit()
        return job


def test_a_lora_fine_tune_resolves_to_its_base_and_adapter(service, alice_user):
    job = succeeded_job(service, alice_user, "lora")
    assert not is_full_fine_tune(job)
    with service.state.sessionmaker() as session:
        target = resolve_target(session, alice_user.id, service.settings, job.fine_tuned_model)
    assert (target.base_id, target.job_id) == (BASE, job.id)


def test_a_full_fine_tune_is_refused_with_where_its_weights_are(service, alice_user):
    job = succeeded_job(service, alice_user, "full")
    assert is_full_fine_tune(job)
    with service.state.sessionmaker() as session, pytest.raises(InvalidRequest) as refused:
        resolve_target(session, alice_user.id, service.settings, job.fine_tuned_model)
    assert refused.value.code == "model_not_supported" and refused.value.param == "model"
    assert f"/v1/fine_tuning/jobs/{job.id}/merged" in refused.value.message


def test_over_http_the_adapter_is_a_409_and_chat_a_400(service, alice, alice_user):
    job = succeeded_job(service, alice_user, "full")
    adapter = alice.get(f"/v1/fine_tuning/jobs/{job.id}/adapter")
    assert adapter.status_code == 409 and adapter.json()["error"]["code"] == "full_fine_tune_has_no_adapter"
    chat = alice.post("/v1/chat/completions", json={"model": job.fine_tuned_model,
                                                    "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 400 and chat.json()["error"]["code"] == "model_not_supported"
