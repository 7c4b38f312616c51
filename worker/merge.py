"""Merged weights for download: base + adapter folded into full safetensors,
made once on first request and kept in storage."""

import io
import logging
import shutil
import zipfile
from pathlib import Path

from sqlalchemy import update

from domain.db import make_engine, make_sessionmaker
from domain.jobs.models import FineTuningJob
from domain.settings import get_settings
from domain.storage import storage_from_url

log = logging.getLogger("tunehouse.worker")


def _set_merge_state(session, job_id: str, expected: str, **values) -> bool:
    result = session.execute(
        update(FineTuningJob)
        .where(FineTuningJob.id == job_id, FineTuningJob.merged_status == expected)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount == 1


def folder_zip(folder: Path) -> bytes:
    buffer = io.BytesIO()
    # Stored, not deflated: safetensors barely compress and this stays fast.
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


def run_merge_job(job_id: str) -> None:
    from worker.base_models import merge_adapter, resolve_base_model
    from worker.finetune import _download_prefix

    settings = get_settings()
    engine = make_engine(settings.database_url)
    storage = storage_from_url(settings.storage_url, endpoint_url=settings.s3_endpoint_url)
    work_dir = settings.work_dir / "merge" / job_id
    try:
        with make_sessionmaker(engine)() as session:
            if not _set_merge_state(session, job_id, "queued", merged_status="running"):
                return  # a duplicate delivery, or already done
            job = session.get(FineTuningJob, job_id)
            try:
                base = resolve_base_model(job.model, settings.base_models[job.model], settings.work_dir)
                adapter_dir = _download_prefix(storage, f"jobs/{job_id}/adapter", work_dir / "adapter")
                merged_dir = merge_adapter(base, adapter_dir, work_dir / "merged")
                key = f"jobs/{job_id}/merged.zip"
                storage.put_bytes(key, folder_zip(merged_dir))
                _set_merge_state(session, job_id, "running", merged_status="ready", merged_key=key)
            except Exception as exc:
                log.exception("merge of %s failed", job_id)
                session.rollback()
                _set_merge_state(
                    session, job_id, "running", merged_status="failed", merged_error=f"{type(exc).__name__}: {exc}"[:1000]
                )
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
        engine.dispose()
