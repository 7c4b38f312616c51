"""Model shares in the domain, on a real database (both backends): what a
share makes readable and usable, and what it never does (checkpoint models,
training on it, a job that has not succeeded, the owner's own evaluations of
it); one share per grantee, enforced by the database."""

import time

import pytest
from sqlalchemy.exc import IntegrityError

from domain.catalog import service as catalog
from domain.errors import Forbidden, InvalidRequest, NotFound
from domain.evaluations.models import Evaluation
from domain.ids import new_id
from domain.inference.targets import resolve_target
from domain.jobs.lineage import find_fine_tune, parent_for_request
from domain.jobs.models import FineTuningJob
from domain.sharing import service as sharing
from domain.sharing.models import ModelShare
from domain.sharing.schemas import CreateShareRequest
from tests.domain.catalog.test_service import BASE, add_checkpoints, fine_tune, user


def share_with(service, owner, model: str, grantee=None):
    request = CreateShareRequest(user=grantee.name) if grantee is not None else CreateShareRequest(everyone=True)
    with service.state.sessionmaker() as session:
        return sharing.create_share(session, owner, model, request)


def evaluation_of(service, job: FineTuningJob, *, automatic: bool) -> str:
    """An evaluation of the job's model by its owner: the job's automatic one, or one made by hand."""
    with service.state.sessionmaker() as session:
        evaluation = Evaluation(
            id=new_id("eval_"), owner_id=job.owner_id, file_id="file-x", split="test",
            models=[BASE, job.fine_tuned_model], max_tokens=8, temperature=0.0, metrics=["exact_match"], seed=1,
            fine_tuning_job_id=job.id if automatic else None, status="queued", results={}, items_done=0, attempt=0,
            created_at=int(time.time()),
        )
        session.add(evaluation)
        if automatic:
            session.get(FineTuningJob, job.id).evaluation_id = evaluation.id
        session.commit()
        return evaluation.id


def test_a_share_makes_the_fine_tune_usable_and_nothing_else(service, alice_user, bob_user):
    alice, bob = user(service, alice_user), user(service, bob_user)
    job = fine_tune(service, alice, "shared")
    with service.state.sessionmaker() as session:
        session.get(FineTuningJob, job.id).suffix = "shared"  # its checkpoints are named after it
        session.commit()
    add_checkpoints(service, job, [2])
    automatic, by_hand = evaluation_of(service, job, automatic=True), evaluation_of(service, job, automatic=False)
    share_with(service, alice, job.fine_tuned_model, bob)
    with service.state.sessionmaker() as session:
        target = resolve_target(session, bob.id, service.settings, job.fine_tuned_model)
        assert (target.job_id, target.base_id, target.adapter_key) == (job.id, BASE, f"jobs/{job.id}/adapter")
        assert sharing.readable_job(session, bob, job.id).id == job.id
        assert sharing.readable_evaluation(session, bob, automatic).id == automatic
        with pytest.raises(NotFound):
            sharing.readable_evaluation(session, bob, by_hand)  # the owner's own evaluations stay theirs
        # Its checkpoints are not shared: neither usable nor listed.
        checkpoint = f"{job.fine_tuned_model}:ckpt-step-2"
        assert resolve_target(session, bob.id, service.settings, checkpoint) is None
        assert [m.id for m in catalog.list_models(session, service.settings, bob) if m.kind != "base"] == [
            job.fine_tuned_model
        ]
        with pytest.raises(InvalidRequest) as refused:
            sharing.create_share(session, alice, checkpoint, CreateShareRequest(everyone=True))
        assert refused.value.code == "model_not_shareable"
        # Training on it, deleting it: the owner's.
        assert find_fine_tune(session, bob.id, job.fine_tuned_model) is None
        with pytest.raises(InvalidRequest):
            parent_for_request(session, service.settings, bob.id, job.fine_tuned_model, {})
        with pytest.raises(Forbidden):
            catalog.delete_model(session, service.state.storage, service.settings, bob, job.fine_tuned_model)


def test_only_a_succeeded_fine_tune_is_shared(service, alice_user, bob_user):
    alice, bob = user(service, alice_user), user(service, bob_user)
    job = fine_tune(service, alice, "shared")
    share_with(service, alice, job.fine_tuned_model)
    with service.state.sessionmaker() as session:
        assert sharing.readable_job(session, bob, job.id).id == job.id
        # A share row whose job went back to running (never in practice, but
        # the rule is the succeeded fine-tune, not the row) reads as nothing.
        session.get(FineTuningJob, job.id).status = "running"
        session.commit()
        with pytest.raises(NotFound):
            sharing.readable_job(session, bob, job.id)
        assert resolve_target(session, bob.id, service.settings, job.fine_tuned_model) is None


def test_one_share_per_grantee_held_by_the_database(service, alice_user, bob_user):
    alice, bob = user(service, alice_user), user(service, bob_user)
    job = fine_tune(service, alice, "shared")
    for grantee in (bob.id, None):  # None: everyone, where NULLs would not collide in a plain unique index
        with service.state.sessionmaker() as session:
            for _ in range(2):
                session.add(ModelShare(id=new_id("share_"), job_id=job.id, owner_id=alice.id,
                                       grantee_user_id=grantee, created_at=int(time.time())))
            with pytest.raises(IntegrityError):
                session.commit()
