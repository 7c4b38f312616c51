"""A fine-tune (or one of its checkpoints) as the base of a new job, through
the API without a worker: what the job records, the LoRA settings it takes
from its parent, and what is refused. (Training it is
tests/worker/training/test_lineage_e2e.py.)"""

import time
import uuid

from domain.jobs.models import FineTuningCheckpoint, FineTuningJob
from tests.api.jobs.test_endpoints import BASE, create, training_file

PARENT_LORA = {"lora_r": {"value": 4, "origin": "user", "reason": None},
               "lora_alpha": {"value": 8, "origin": "default", "reason": "2 x lora_r"},
               "lora_dropout": {"value": 0.05, "origin": "default", "reason": None},
               "target_modules": {"value": "all-linear", "origin": "default", "reason": None},
               "adapter": {"value": "lora", "origin": "auto", "reason": None}}


def succeeded_job(service, user, suffix: str = "parent") -> FineTuningJob:
    job_id = f"ftjob-{uuid.uuid4().hex[:12]}"
    with service.state.sessionmaker() as session:
        job = FineTuningJob(
            id=job_id, owner_id=user.id, model=BASE, training_file_id="file-x", status="succeeded", suffix=suffix,
            requested_hyperparameters={}, hyperparameters=PARENT_LORA, seed=1, seed_origin="auto", model_deleted=False,
            result_files=[], created_at=int(time.time()), attempt=1, handbacks=0, recipe={"seed": {"value": 1}},
            fine_tuned_model=f"ft:{BASE}:{user.name}:{suffix}:{job_id}", adapter_key=f"jobs/{job_id}/adapter.zip",
        )
        session.add(job)
        session.flush()
        session.add(FineTuningCheckpoint(id=f"ftckpt_{uuid.uuid4().hex[:12]}", job_id=job_id, step_number=3,
                                         metrics={}, storage_key=f"jobs/{job_id}/checkpoints/step-000003",
                                         created_at=int(time.time())))
        session.commit()
        return job


def test_a_job_on_a_fine_tune_records_its_parent_and_the_root_base(service, alice, alice_user):
    parent = succeeded_job(service, alice_user)
    response = create(alice, training_file=training_file(alice), model=parent.fine_tuned_model)
    assert response.status_code == 200, response.text
    job = response.json()
    assert (job["model"], job["base_model"]) == (parent.fine_tuned_model, BASE)
    assert job["parent"] == {"model": parent.fine_tuned_model, "fine_tuning_job": parent.id, "checkpoint_step": None}
    events = [e["message"] for e in alice.get(f"/v1/fine_tuning/jobs/{job['id']}/events").json()["data"]]
    assert f"Created fine-tuning job {job['id']} on {BASE}, continuing {parent.fine_tuned_model}" in events

    checkpoint = f"{parent.fine_tuned_model}:ckpt-step-3"
    from_checkpoint = create(alice, training_file=training_file(alice), model=checkpoint).json()
    assert from_checkpoint["parent"] == {"model": checkpoint, "fine_tuning_job": parent.id, "checkpoint_step": 3}


def test_the_preview_shows_the_lora_settings_taken_from_the_parent(alice, service, alice_user):
    parent = succeeded_job(service, alice_user)
    preview = alice.post("/v1/fine_tuning/jobs/preview", json={"model": parent.fine_tuned_model, "training_file": training_file(alice)})
    assert preview.status_code == 200, preview.text
    lora_r = preview.json()["hyperparameters"]["lora_r"]
    assert (lora_r["value"], lora_r["origin"]) == (4, "parent")


def test_what_a_fine_tune_of_a_fine_tune_refuses(alice, bob, service, alice_user):
    parent = succeeded_job(service, alice_user)
    file_id = training_file(alice)
    cases = [
        ({"model": parent.fine_tuned_model, "hyperparameters": {"extra": {"lora_alpha": 32}}},
         "hyperparameters.extra.lora_alpha", "invalid_hyperparameters"),
        ({"model": parent.fine_tuned_model, "hyperparameters": {"extra": {"adapter": "full"}}},
         "hyperparameters.extra.adapter", "invalid_hyperparameters"),
        ({"model": parent.fine_tuned_model + ":ckpt-step-4"}, "model", "model_not_found"),  # no such checkpoint
        ({"model": f"ft:{BASE}:someone-else:parent:{parent.id}"}, "model", "model_not_found"),
        ({"model": "ft:nothing"}, "model", "model_not_found"),
    ]
    for body, param, code in cases:
        response = create(alice, training_file=file_id, **body)
        assert response.status_code == 400, body
        assert (response.json()["error"]["param"], response.json()["error"]["code"]) == (param, code), body
    # The same LoRA settings as the parent's are fine.
    same = create(alice, training_file=file_id, model=parent.fine_tuned_model, hyperparameters={"extra": {"lora_r": 4}})
    assert same.status_code == 200, same.text
    # Another user's fine-tune does not exist for bob.
    theirs = create(bob, training_file=training_file(bob), model=parent.fine_tuned_model)
    assert theirs.status_code == 400 and theirs.json()["error"]["code"] == "model_not_found"
