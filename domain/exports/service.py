"""Asking for an export: made once on first request, then served from storage."""

import time

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from domain.exports.models import Export
from domain.exports.repository import ExportRepository
from domain.ids import new_id
from domain.jobs.models import FineTuningJob


def request_export(session: Session, job: FineTuningJob, format: str, *, retry_failed: bool = True) -> tuple[Export, bool]:
    """The job's export in `format`, and whether this request queued it (the
    caller then sends it to a worker, after this commit). A failed export is
    replaced by a new one (its attempts do not count against the new try),
    unless `retry_failed` is false: then it is returned, for its error."""
    repository = ExportRepository(session, job.owner_id)
    export = repository.get(job.id, format)
    if export is not None and (export.status != "failed" or not retry_failed):
        return export, False
    if export is not None:
        repository.delete(export.id)
    export = Export(
        id=new_id("export_"),
        job_id=job.id,
        owner_id=job.owner_id,
        format=format,
        status="queued",
        attempt=0,
        handbacks=0,
        created_at=int(time.time()),
    )
    try:
        repository.add(export)
        session.commit()
    except IntegrityError:  # a concurrent request queued it first
        session.rollback()
        return repository.get(job.id, format), False
    return export, True


def delete_exports(session: Session, job: FineTuningJob) -> list[str]:
    """With the model: deletes the rows (the caller commits) and returns the
    storage keys to delete once it has (rows first: a crash between the two
    leaves an orphan object, never an export whose file is gone)."""
    repository = ExportRepository(session, job.owner_id)
    keys = []
    for export in repository.for_job(job.id):
        repository.delete(export.id)
        if export.storage_key:
            keys.append(export.storage_key)
    return keys
