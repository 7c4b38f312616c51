"""Exports of a fine-tune, made on first request and kept in storage: today
the merged weights (base + adapter folded into full safetensors). An export
is leased work (worker/runs.py): a worker that dies while exporting leaves
it to be redone by another."""

from __future__ import annotations

import io
import logging
import shutil
import time
import zipfile
from pathlib import Path

from domain.jobs.models import FineTuningJob
from domain.runs.kinds import EXPORT
from worker.models.catalog import BaseModel, check_adapter_folder, load_causal_lm
from worker.models.folders import atomic_directory
from worker.runs import FailureWords, LeasedRun, RunFailure, run_leased

log = logging.getLogger("tunehouse.worker")


def merge_adapter(base: BaseModel, adapter_dir: Path, out_dir: Path, *, dtype=None) -> Path:
    """Merge a LoRA adapter into the base weights and save a plain model folder.

    Loads the base in fp32 on the CPU unless `dtype` says otherwise (merging
    into 4-bit weights would lose the adapter's precision). `out_dir` is
    written atomically and replaced if it exists.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    check_adapter_folder(adapter_dir)
    model = load_causal_lm(base, dtype=dtype or torch.float32)
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    # The base's tokenizer exactly as it is (no pad-token fill-in): the download
    # should behave like the base model everywhere.
    tokenizer = AutoTokenizer.from_pretrained(base.local_dir, trust_remote_code=False)
    with atomic_directory(out_dir) as staging:
        merged.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
    return out_dir


def folder_zip(folder: Path) -> bytes:
    buffer = io.BytesIO()
    # Stored, not deflated: safetensors barely compress and this stays fast.
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


class ExportRun(LeasedRun):
    kind = EXPORT
    words = FailureWords(
        generic_code="export_failed",
        generic_what="The export failed",
        bad_data_code="export_failed",
        bad_data_what="The fine-tune's files",
        out_of_memory="The export ran out of memory: the worker cannot hold the full base model.",
    )

    def _work_dir(self) -> Path:
        return self.settings.work_dir / "exports" / self.row_id

    def cleanup(self) -> None:
        shutil.rmtree(self._work_dir(), ignore_errors=True)

    def work(self) -> None:
        from worker.models.catalog import resolve_base_model

        def read():
            export = self.leases.get(self.row_id)
            return export.format, self.session.get(FineTuningJob, export.job_id)

        format, job = self.transaction(read, "reading the export")
        if format != "merged":
            raise RunFailure("unsupported_format", f"Unknown export format '{format}'.")
        if job is None or job.adapter_key is None or job.model not in self.settings.base_models:
            raise RunFailure("adapter_not_found", "The fine-tune's adapter or its base model is no longer available.")
        base = resolve_base_model(job.model, self.settings.base_models[job.model], self.settings.work_dir)
        work_dir = self._work_dir()
        shutil.rmtree(work_dir, ignore_errors=True)  # what a dead attempt on this machine left
        adapter_dir = self.storage.download_prefix(f"jobs/{job.id}/adapter", work_dir / "adapter")
        merged_dir = merge_adapter(base, adapter_dir, work_dir / "merged")
        key = f"jobs/{job.id}/merged.zip"
        self.stored("Uploading the merged weights", lambda: self.storage.put_bytes(key, folder_zip(merged_dir)))
        self.write("recording the export", status="ready", storage_key=key, finished_at=int(time.time()))
        log.info("export %s of %s ready: %s", self.row_id, job.id, key)


def run_export(export_id: str) -> None:
    run_leased(ExportRun, export_id)
