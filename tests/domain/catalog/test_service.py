"""/v1/models's domain service on a real database (both backends): base
models and the caller's fine-tunes, nobody else's; deleting a fine-tune
takes its weights and exports but keeps its job; base models are not
deletable."""

import time
import uuid

import pytest

from domain.auth.models import User
from domain.catalog import service as catalog
from domain.errors import Forbidden, NotFound
from domain.exports.models import Export
from domain.exports.service import request_export
from domain.inference.targets import resolve_target
from domain.jobs.models import FineTuningCheckpoint, FineTuningJob

BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"


def fine_tune(service, user: User, suffix: str) -> FineTuningJob:
    """A succeeded job with an adapter and merged weights in storage."""
    job_id = f"ftjob-{uuid.uuid4().hex[:12]}"
    with service.state.sessionmaker() as session:
        job = FineTuningJob(
            id=job_id, owner_id=user.id, model=BASE, training_file_id="file-x", status="succeeded",
            requested_hyperparameters={}, seed=1, seed_origin="auto", model_deleted=False, result_files=[],
            created_at=int(time.time()), finished_at=int(time.time()), attempt=1, handbacks=0,
            fine_tuned_model=f"ft:{BASE}:{user.name}:{suffix}:{job_id}", adapter_key=f"jobs/{job_id}/adapter.zip",
        )
        session.add(job)
        session.commit()
        export, _ = request_export(session, job, "merged")
        export.status, export.storage_key = "ready", f"jobs/{job_id}/merged.zip"
        session.commit()
    for key in (f"jobs/{job_id}/adapter.zip", f"jobs/{job_id}/adapter/adapter_model.safetensors", f"jobs/{job_id}/merged.zip"):
        service.state.storage.put_bytes(key, b"weights")
    return job


def user(service, who) -> User:
    with service.state.sessionmaker() as session:
        return session.get(User, who.id)


def test_a_user_lists_the_base_models_and_their_own_fine_tunes_only(service, alice_user, bob_user):
    alice, bob = user(service, alice_user), user(service, bob_user)
    mine = fine_tune(service, alice, "mine")
    fine_tune(service, bob, "theirs")
    with service.state.sessionmaker() as session:
        models = catalog.list_models(session, service.settings, alice)
    base = list(service.settings.base_models)
    assert [m.id for m in models] == [*base, mine.fine_tuned_model]
    assert (models[-1].kind, models[-1].owned_by, models[-1].fine_tuning_job) == ("fine-tune", alice.name, mine.id)


def test_another_users_fine_tune_does_not_exist_for_you(service, alice_user, bob_user):
    alice, bob = user(service, alice_user), user(service, bob_user)
    theirs = fine_tune(service, bob, "theirs")
    with service.state.sessionmaker() as session:
        assert catalog.get_model(session, service.settings, bob, theirs.fine_tuned_model).id == theirs.fine_tuned_model
        with pytest.raises(NotFound) as refused:
            catalog.get_model(session, service.settings, alice, theirs.fine_tuned_model)
        assert (refused.value.code, refused.value.param) == ("model_not_found", "model")
        with pytest.raises(NotFound):
            catalog.delete_model(session, service.state.storage, service.settings, alice, theirs.fine_tuned_model)


def test_deleting_a_fine_tune_takes_its_weights_and_exports_and_keeps_its_job(service, alice_user):
    alice = user(service, alice_user)
    job = fine_tune(service, alice, "gone")
    storage = service.state.storage
    with service.state.sessionmaker() as session:
        catalog.delete_model(session, storage, service.settings, alice, job.fine_tuned_model)
    with service.state.sessionmaker() as session:
        row = session.get(FineTuningJob, job.id)
        assert (row.model_deleted, row.adapter_key, row.status) == (True, None, "succeeded")
        assert session.query(Export).filter_by(job_id=job.id).count() == 0
        assert job.fine_tuned_model not in [m.id for m in catalog.list_models(session, service.settings, alice)]
    assert storage.list_keys(f"jobs/{job.id}") == []


def test_a_base_model_cannot_be_deleted(service, alice_user):
    alice = user(service, alice_user)
    with service.state.sessionmaker() as session, pytest.raises(Forbidden) as refused:
        catalog.delete_model(session, service.state.storage, service.settings, alice, BASE)
    assert refused.value.code == "model_not_deletable"


def add_checkpoints(service, job: FineTuningJob, steps: list[int]) -> None:
    with service.state.sessionmaker() as session:
        for step in steps:
            key = f"jobs/{job.id}/checkpoints/step-{step:06d}"
            session.add(FineTuningCheckpoint(
                id=f"ftckpt_{uuid.uuid4().hex[:12]}", job_id=job.id, step_number=step, metrics={"step": step},
                storage_key=key, created_at=int(time.time()),
            ))
            service.state.storage.put_bytes(f"{key}/adapter_model.safetensors", b"weights")
        session.commit()


def test_every_checkpoint_is_a_model_listed_under_its_job_for_its_owner_only(service, alice_user, bob_user):
    alice, bob = user(service, alice_user), user(service, bob_user)
    done = fine_tune(service, alice, "done")
    add_checkpoints(service, done, [4, 2])
    paused = fine_tune(service, alice, "paused")  # a job without a fine-tune yet: its checkpoints still are models
    with service.state.sessionmaker() as session:
        session.get(FineTuningJob, done.id).suffix = "done"
        row = session.get(FineTuningJob, paused.id)
        row.suffix, row.status, row.fine_tuned_model, row.adapter_key = "paused", "paused", None, None
        session.commit()
    add_checkpoints(service, paused, [3])
    name = f"ft:{BASE}:{alice.name}:done:{done.id}"
    paused_name = f"ft:{BASE}:{alice.name}:paused:{paused.id}"
    with service.state.sessionmaker() as session:
        models = catalog.list_models(session, service.settings, alice)
        assert [m.id for m in models if m.kind != "base"] == [
            paused_name + ":ckpt-step-3", name, name + ":ckpt-step-2", name + ":ckpt-step-4",
        ] or [m.id for m in models if m.kind != "base"] == [
            name, name + ":ckpt-step-2", name + ":ckpt-step-4", paused_name + ":ckpt-step-3",
        ]
        checkpoint = catalog.get_model(session, service.settings, alice, name + ":ckpt-step-2")
        assert (checkpoint.kind, checkpoint.step_number, checkpoint.fine_tuning_job, checkpoint.base_model) == (
            "checkpoint", 2, done.id, BASE
        )
        target = resolve_target(session, alice.id, service.settings, paused_name + ":ckpt-step-3")
        assert (target.base_id, target.job_id, target.adapter_key, target.adapter_id) == (
            BASE, paused.id, f"jobs/{paused.id}/checkpoints/step-000003", f"{paused.id}.ckpt-step-3"
        )
        for missing in (name + ":ckpt-step-3", name + ":ckpt-step-x", f"ft:{BASE}:someone:done:{done.id}:ckpt-step-2"):
            assert resolve_target(session, alice.id, service.settings, missing) is None
            with pytest.raises(NotFound):
                catalog.get_model(session, service.settings, alice, missing)
        # Bob sees none of them, and cannot use them.
        assert [m.kind for m in catalog.list_models(session, service.settings, bob)] == ["base"] * len(service.settings.base_models)
        assert resolve_target(session, bob.id, service.settings, name + ":ckpt-step-2") is None
        with pytest.raises(Forbidden) as refused:
            catalog.delete_model(session, service.state.storage, service.settings, alice, name + ":ckpt-step-2")
        assert refused.value.code == "model_not_deletable"
        # Deleting the fine-tune takes its checkpoint models with it.
        catalog.delete_model(session, service.state.storage, service.settings, alice, name)
    with service.state.sessionmaker() as session:
        assert not [m for m in catalog.list_models(session, service.settings, alice) if m.fine_tuning_job == done.id]
        assert resolve_target(session, alice.id, service.settings, name + ":ckpt-step-2") is None
    assert service.state.storage.list_keys(f"jobs/{done.id}") == []
