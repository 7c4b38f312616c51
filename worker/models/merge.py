"""Exports of a fine-tune, made on first request and kept in storage: the
merged weights (base + adapter folded into full safetensors) and GGUF files
for llama.cpp / Ollama (worker/models/gguf_export.py). An export is leased
work (worker/runs.py): a worker that dies while exporting leaves it to be
redone by another."""

from __future__ import annotations

import io
import json
import logging
import shutil
import time
import zipfile
from pathlib import Path

from domain.exports.gguf import quantization_of, shared_system_prompt, stage_key
from domain.files.repository import FileRepository
from domain.jobs.model_card import CARD_NAME, model_card_files
from domain.jobs.models import FineTuningJob
from domain.jobs.weights import is_full_fine_tune
from domain.runs.kinds import EXPORT
from worker.models.catalog import BaseModel, check_adapter_folder, load_causal_lm
from worker.models.folders import atomic_directory
from worker.runs import FailureWords, LeasedRun, RunFailure, RunLost, run_leased

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


def folder_zip(folder: Path, extra_files: dict[str, bytes] | None = None) -> bytes:
    """The folder's files, then `extra_files` (name -> bytes) beside them."""
    buffer = io.BytesIO()
    # Stored, not deflated: safetensors barely compress and this stays fast.
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())
        for name, data in (extra_files or {}).items():
            archive.writestr(name, data)
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
        try:
            self.storage.delete(stage_key(self.row_id))
        except Exception as error:  # noqa: BLE001 - a stale stage is only shown while the export is unfinished
            log.warning("export %s: could not delete its stage: %s", self.row_id, error)

    def work(self) -> None:
        def read():
            export = self.leases.get(self.row_id)
            return export.format, self.session.get(FineTuningJob, export.job_id)

        format, job = self.transaction(read, "reading the export")
        quantization = quantization_of(format)
        if format != "merged" and quantization is None:
            raise RunFailure("unsupported_format", f"Unknown export format '{format}'.")
        if job is None or job.adapter_key is None:
            raise RunFailure("adapter_not_found", "The fine-tune's adapter or its base model is no longer available.")
        work_dir = self._work_dir()
        shutil.rmtree(work_dir, ignore_errors=True)  # what a dead attempt on this machine left
        if format == "merged":
            merged_dir = self._merge(job, work_dir)
            key = f"jobs/{job.id}/merged.zip"
            card = self._model_card(job)
            self.stored("Uploading the merged weights", lambda: self.storage.put_bytes(key, folder_zip(merged_dir, card)))
        else:
            key = self._gguf(job, quantization, work_dir)
        self.write("recording the export", status="ready", storage_key=key, finished_at=int(time.time()))
        log.info("export %s of %s ready: %s", self.row_id, job.id, key)

    def _merge(self, job: FineTuningJob, work_dir: Path) -> Path:
        from worker.models.catalog import resolve_base_model

        if job.model not in self.settings.base_models:
            raise RunFailure("adapter_not_found", "The fine-tune's adapter or its base model is no longer available.")
        base = resolve_base_model(job.model, self.settings.base_models[job.model], self.settings.work_dir)
        adapter_dir = self.storage.download_prefix(f"jobs/{job.id}/adapter", work_dir / "adapter")
        return merge_adapter(base, adapter_dir, work_dir / "merged")

    def _merged_folder(self, job: FineTuningJob, work_dir: Path) -> Path:
        """The whole model as a transformers folder: a full fine-tune's own
        weights (stored as its merged download), else base + adapter merged here."""
        if not is_full_fine_tune(job):
            self._stage("merging the adapter into the base weights")
            return self._merge(job, work_dir)
        self._stage("fetching the model's weights")
        archive_path = work_dir / "model.zip"
        archive_path.parent.mkdir(parents=True, exist_ok=True)
        with archive_path.open("wb") as target:
            for chunk in self.storage.iter_bytes(job.adapter_key):
                target.write(chunk)
        with zipfile.ZipFile(archive_path) as archive:
            archive.extractall(work_dir / "merged")
        archive_path.unlink()
        return work_dir / "merged"

    def _gguf(self, job: FineTuningJob, quantization: str, work_dir: Path) -> str:
        from worker.models.gguf_export import download_readme, gguf_zip, model_file_name, modelfile, write_gguf

        merged_dir = self._merged_folder(job, work_dir)
        name = model_file_name(job.model, job.id, quantization)
        gguf_path = work_dir / f"{name}.gguf"
        facts = write_gguf(merged_dir, gguf_path, quantization, name=name, on_stage=self._stage)
        shutil.rmtree(merged_dir, ignore_errors=True)
        system = self._training_system_prompt(job)
        # The download's README is the model card followed by how to run the file.
        card = self._model_card(job)
        readme = f"{card.pop(CARD_NAME).decode().rstrip()}\n\n---\n\n{download_readme(name, gguf_path.name, quantization, system)}"
        files = (gguf_path, gguf_path.name, modelfile(gguf_path.name, facts, system), readme, card)
        key = f"jobs/{job.id}/gguf-{quantization}.zip"
        self._stage("uploading the GGUF download")
        self.stored("Uploading the GGUF download", lambda: self._upload_chunks(key, gguf_zip(*files)))
        return key

    def _model_card(self, job: FineTuningJob) -> dict[str, bytes]:
        """The model card as it is now (domain/jobs/model_card.py): README.md and its curves."""
        return self.transaction(lambda: model_card_files(self.session, self.settings, job), "writing the model card")

    def _upload_chunks(self, key: str, chunks) -> None:
        with self.storage.writer(key) as writer:
            for chunk in chunks:
                writer.write(chunk)
            writer.commit()

    def _training_system_prompt(self, job: FineTuningJob) -> str | None:
        training_file = self.transaction(
            lambda: FileRepository(self.session, job.owner_id).get(job.training_file_id), "reading the training file"
        )
        if training_file is None:
            return None
        return shared_system_prompt(self.storage.iter_bytes(training_file.storage_key))

    def _stage(self, stage: str) -> None:
        """Which step the export is at, for the API's 202 (best effort: a
        stage that cannot be written only goes unseen)."""
        try:
            self.storage.put_bytes(stage_key(self.row_id), json.dumps({"stage": stage, "at": time.time()}).encode())
        except Exception as error:  # noqa: BLE001
            log.warning("export %s: could not note its stage: %s", self.row_id, error)
        if self.should_stop():
            raise RunLost


def run_export(export_id: str) -> None:
    run_leased(ExportRun, export_id)
