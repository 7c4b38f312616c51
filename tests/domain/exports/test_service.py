"""Asking for an export (both backends): made once however often and by
however many requests it is asked for; a failed one is made anew, with its
own attempts."""

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from domain.auth.models import User
from domain.exports.models import Export
from domain.exports.service import delete_exports, request_export
from domain.jobs.models import FineTuningJob


def succeeded_job(service, who) -> FineTuningJob:
    with service.state.sessionmaker() as session:
        owner = session.get(User, who.id)
        job = FineTuningJob(
            id=f"ftjob-{uuid.uuid4().hex[:12]}", owner_id=owner.id, model="m", training_file_id="file-x",
            status="succeeded", requested_hyperparameters={}, seed=1, seed_origin="auto", model_deleted=False,
            result_files=[], created_at=int(time.time()), attempt=1, handbacks=0,
        )
        session.add(job)
        session.commit()
        return job


def test_an_export_is_queued_once_however_many_ask_at_once(service, alice_user):
    job = succeeded_job(service, alice_user)

    def ask(_):
        with service.state.sessionmaker() as session:
            export, queued = request_export(session, job, "merged")
            return export.id, queued

    answers = list(ThreadPoolExecutor(max_workers=8).map(ask, range(16)))
    assert len({export_id for export_id, _ in answers}) == 1
    assert sum(queued for _, queued in answers) == 1


def test_a_failed_export_is_made_anew_with_its_own_attempts(service, alice_user):
    job = succeeded_job(service, alice_user)
    with service.state.sessionmaker() as session:
        first, _ = request_export(session, job, "merged")
        first.status, first.attempt, first.error = "failed", 3, "worker_lost: gone"
        session.commit()
        second, queued = request_export(session, job, "merged")
        assert queued and second.id != first.id
        assert (second.status, second.attempt, second.error) == ("queued", 0, None)
        assert session.get(Export, first.id) is None


def test_deleting_a_jobs_exports_returns_their_keys_for_after_the_commit(service, alice_user):
    job = succeeded_job(service, alice_user)
    with service.state.sessionmaker() as session:
        export, _ = request_export(session, job, "merged")
        export.status, export.storage_key = "ready", f"jobs/{job.id}/merged.zip"
        session.commit()
        assert delete_exports(session, job) == [f"jobs/{job.id}/merged.zip"]
        session.commit()
        assert session.query(Export).filter_by(job_id=job.id).count() == 0
