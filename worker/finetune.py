"""One fine-tuning job on a worker: claim it, read its data, resolve every
hyperparameter, train (resuming from the last checkpoint if an earlier attempt
died), publish the adapter, and record all of it.

The training itself is worker/training/recipe.py; `tunehouse train` runs the
same recipe from a recipe file without the service (see `train_from_recipe`).
"""

import hashlib
import io
import json
import logging
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from domain.auth.models import User
from domain.db import is_disconnect, make_engine, make_sessionmaker, retry_on_disconnect
from domain.files.models import File
from domain.files.outputs import write_output_file
from domain.files.repository import FileRepository
from domain.files.validation import DEFAULT_SPLIT_SEED, split_lines
from domain.jobs.hyperparameters import DatasetStats, HyperparameterError, plain_values, resolve
from domain.jobs.models import FineTuningJob
from domain.jobs.training_metrics import METRIC_COLUMNS, metrics_by_step, metrics_csv
from domain.jobs.repository import JobLifecycle, JobRepository, add_event
from domain.jobs.schemas import fine_tuned_model_name
from domain.queue_client import TRAIN_TASK, TaskQueue
from domain.settings import Settings, get_settings
from domain.storage import Storage, StorageError, storage_from_url
from worker import shutdown
from worker.leasing import Heartbeat, worker_name

log = logging.getLogger("tunehouse.worker")

RECIPE_VERSION = 1
STOP_CHECK_SECONDS = 0.5
# How long a worker keeps retrying a write while the database is unreachable
# before it gives the job up (the recovery loop then requeues it).
DATABASE_PATIENCE_SECONDS = 60.0


# ----------------------------------------------------------------------- data


@dataclass
class SplitData:
    train: list[dict]
    eval: list[dict]
    eval_source: str  # "test split" | "validation file"


def load_split_data(train_chunks, split_seed: int, validation_chunks=None) -> SplitData:
    """The same deterministic split the upload report showed; TEST is never trained on."""
    train, test = [], []
    for _line, example, split in split_lines(train_chunks, split_seed):
        example.pop("split", None)
        (train if split == "TRAIN" else test).append(example)
    if validation_chunks is None:
        return SplitData(train, test, "test split")
    validation = [example for _line, example, _split in split_lines(validation_chunks, split_seed)]
    for example in validation:
        example.pop("split", None)
    return SplitData(train, validation, "validation file")


def dataset_stats(tokenizer, data: SplitData) -> tuple[DatasetStats, dict]:
    from worker.training.data import tokenize_dataset

    lengths = sorted(len(example.input_ids) for example in tokenize_dataset(tokenizer, data.train))
    eval_tokens = sum(len(example.input_ids) for example in tokenize_dataset(tokenizer, data.eval))
    p99 = lengths[max(0, -(-len(lengths) * 99 // 100) - 1)] if lengths else 0
    stats = DatasetStats(
        train_examples=len(data.train),
        eval_examples=len(data.eval),
        token_length_p99=p99,
        token_length_max=lengths[-1] if lengths else 0,
        train_tokens=sum(lengths),
    )
    summary = {
        "train_examples": stats.train_examples,
        "eval_examples": stats.eval_examples,
        "eval_source": data.eval_source,
        "train_tokens": stats.train_tokens,
        "eval_tokens": eval_tokens,
        "token_length_p99": stats.token_length_p99,
        "token_length_max": stats.token_length_max,
    }
    return stats, summary


def pick_device(setting: str) -> str:
    if setting != "auto":
        return setting
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------- recipe


def build_recipe(
    job: FineTuningJob,
    base,
    hyperparameters: dict,
    data_summary: dict,
    files: dict[str, File | None],
    split_seed: int,
    environment: dict,
    method: dict | None,
) -> dict[str, Any]:
    def file_entry(file: File | None):
        if file is None:
            return None
        return {"id": file.id, "filename": file.filename, "sha256": file.sha256, "bytes": file.bytes}

    return {
        "tunehouse_recipe_version": RECIPE_VERSION,
        "job_id": job.id,
        "base_model": {"id": base.id, "source": base.source, "revision": base.revision, "max_length": base.max_length},
        "hyperparameters": hyperparameters,
        "seed": {"value": job.seed, "origin": job.seed_origin},
        "data": {
            "training_file": file_entry(files["training"]),
            "validation_file": file_entry(files["validation"]),
            "split": {"method": "explicit 'split' keys, else seeded hash draw", "seed": split_seed, "test_fraction": 0.1},
            **data_summary,
        },
        "method": method,
        "environment": environment,
        "rerun": "tunehouse train --recipe recipe.yaml --data <training file>"
        + (" --validation-data <validation file>" if files["validation"] else "")
        + " --out <dir>",
    }


def recipe_yaml(recipe: dict) -> str:
    return yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True)


# ---------------------------------------------------------------- the job run


def _upload_dir(storage: Storage, local_dir: Path, prefix: str) -> None:
    for path in sorted(local_dir.rglob("*")):
        if path.is_file():
            with path.open("rb") as handle, storage.writer(f"{prefix}/{path.relative_to(local_dir).as_posix()}") as writer:
                while chunk := handle.read(1 << 20):
                    writer.write(chunk)
                writer.commit()


def _download_prefix(storage: Storage, prefix: str, local_dir: Path) -> Path:
    local_dir.mkdir(parents=True, exist_ok=True)
    for key in storage.list_keys(prefix):
        target = local_dir / key[len(prefix) + 1 :]
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("wb") as out:
            for chunk in storage.iter_bytes(key):
                out.write(chunk)
    return local_dir


def classify_failure(exc: BaseException) -> tuple[str, str]:
    """A specific error code and a message a person can act on; never a traceback."""
    from worker.base_models import BaseModelError

    try:
        import torch

        out_of_memory = isinstance(exc, torch.OutOfMemoryError | MemoryError)
    except ImportError:  # pragma: no cover
        out_of_memory = isinstance(exc, MemoryError)
    if out_of_memory:
        return "out_of_memory", "Training ran out of memory. Lower batch_size or max_seq_length, or use adapter 'qlora'."
    if isinstance(exc, BaseModelError):
        return "model_load_failed", str(exc)
    if isinstance(exc, HyperparameterError):
        return "invalid_hyperparameters", f"{exc.param}: {exc.message}"
    if isinstance(exc, StorageError):
        return "storage_error", f"The artifact store failed: {exc}"
    if isinstance(exc, ValueError):
        return "invalid_training_data", f"The training data could not be used: {exc}"
    return "training_error", f"Training failed: {type(exc).__name__}: {str(exc)[:500]}"


class TrainingJobRun:
    """Everything one attempt at one job needs, with the steps as methods."""

    def __init__(self, settings: Settings, job_id: str):
        self.settings = settings
        self.job_id = job_id
        self.engine = make_engine(settings.database_url)
        self.db = make_sessionmaker(self.engine)
        self.session = self.db()
        self.lifecycle = JobLifecycle(self.session)
        self.storage = storage_from_url(settings.storage_url, endpoint_url=settings.s3_endpoint_url)
        self.worker_name = worker_name()
        self.attempt: int | None = None
        self._last_stop_check = 0.0
        self._stop_requested = False
        self._pause_requested = False

    def close(self) -> None:
        self.session.close()
        self.engine.dispose()

    # -- events -------------------------------------------------------------

    def event(self, message: str, data: dict | None = None, *, level: str = "info", type: str = "message") -> None:
        def write() -> None:
            add_event(self.session, self.job_id, message, level=level, type=type, data=data)
            self.session.commit()

        self._db(write, "writing an event")

    # -- retries ------------------------------------------------------------

    def _db(self, transaction, what: str):
        """A write (or read) that waits out a database restart instead of failing the job."""
        return retry_on_disconnect(
            self.session, transaction, what=f"{what} (job {self.job_id})", patience=DATABASE_PATIENCE_SECONDS
        )

    def _stored(self, what: str, operation) -> None:
        """An upload, tried TUNEHOUSE_STORAGE_ATTEMPTS times with growing pauses;
        then the StorageError fails the job (it never succeeds without its files)."""
        attempts = self.settings.storage_attempts
        for attempt in range(1, attempts + 1):
            try:
                operation()
                return
            except StorageError as exc:
                if attempt == attempts:
                    raise StorageError(f"{what} failed {attempts} times; the last error: {exc}") from exc
                delay = self.settings.storage_retry_delay * 2 ** (attempt - 1)
                log.warning("job %s: %s failed (attempt %d of %d): %s", self.job_id, what, attempt, attempts, exc)
                self.event(
                    f"{what} failed (attempt {attempt} of {attempts}): {exc}; retrying in {delay:g} s", level="warn"
                )
                time.sleep(delay)

    # -- hooks the recipe calls ---------------------------------------------

    def on_message(self, message: str, data: dict | None = None) -> None:
        self.event(message, data)

    def on_metrics(self, metrics: dict) -> None:
        step, total = metrics["step"], metrics["total_steps"]
        parts = [f"Step {step}/{total}: training loss {metrics['train_loss']:.4f}"]
        if metrics.get("valid_loss") is not None:
            parts.append(f"validation loss {metrics['valid_loss']:.4f}")
        self.event(", ".join(parts), {k: metrics.get(k) for k in (*METRIC_COLUMNS, "total_steps")}, type="metrics")
        elapsed = time.time() - self._train_started
        done = max(step - self._first_step, 1)
        remaining = (total - step) * elapsed / done
        self._db(
            lambda: self.lifecycle.update_running(
                self.job_id,
                self.attempt,
                step=step,
                total_steps=total,
                trained_tokens=metrics.get("trained_tokens"),
                estimated_finish=int(time.time() + remaining),
                heartbeat_at=time.time(),
            ),
            "recording progress",
        )

    def on_checkpoint(self, step: int, checkpoint_dir: Path, metrics: dict) -> None:
        key = f"jobs/{self.job_id}/checkpoints/step-{step:06d}"

        def upload() -> None:
            self.storage.delete_prefix(key)  # a redone step (or try) replaces its files
            _upload_dir(self.storage, checkpoint_dir, key)

        self._stored(f"Uploading the checkpoint at step {step}", upload)
        # The row is written after the files: a checkpoint in the database is complete.
        recorded = self._db(
            lambda: self.lifecycle.add_checkpoint(self.job_id, self.attempt, step, _checkpoint_metrics(metrics), key),
            "recording a checkpoint",
        )
        if recorded:
            self.event(f"Checkpoint at step {step} saved", {"step": step})

    def should_stop(self) -> bool:
        if self._stop_requested or self.heartbeat.lost.is_set():
            return True
        now = time.monotonic()
        if now - self._last_stop_check >= STOP_CHECK_SECONDS:
            self._last_stop_check = now
            self._stop_requested = not self._db(
                lambda: self.lifecycle.still_ours(self.job_id, self.attempt), "checking for a cancel"
            )
        return self._stop_requested

    def should_pause(self) -> bool:
        """The worker is shutting down (worker/shutdown.py): checkpoint and hand back."""
        self._pause_requested = self._pause_requested or shutdown.requested(self.settings)
        return self._pause_requested

    # -- the attempt ---------------------------------------------------------

    def run(self) -> None:
        self.attempt = self._db(
            lambda: self.lifecycle.claim(self.job_id, self.worker_name, self.settings.heartbeat_timeout), "claiming"
        )
        if self.attempt is None:
            log.info("job %s is not claimable (duplicate delivery, finished or alive elsewhere)", self.job_id)
            return
        lost_attempts = self.attempt - 1 - self.lifecycle.get(self.job_id).handbacks
        if lost_attempts >= self.settings.max_job_attempts:
            self.lifecycle.fail(
                self.job_id,
                "worker_lost",
                f"The job was started {lost_attempts} times without finishing; giving up.",
                attempt=self.attempt,
            )
            return
        job_id, attempt = self.job_id, self.attempt
        self.heartbeat = Heartbeat(
            self.db, lambda session: JobLifecycle(session).heartbeat(job_id, attempt), self.settings.heartbeat_interval, job_id
        )
        self.heartbeat.start()
        work_dir = self.settings.work_dir / "jobs" / self.job_id / f"attempt-{self.attempt}"
        try:
            self._train(work_dir)
        except Exception as exc:
            if isinstance(exc, DBAPIError) and is_disconnect(exc):
                raise  # not the job's fault: it is requeued (run_training_job, the recovery loop)
            log.exception("job %s failed", self.job_id)
            self.session.rollback()
            code, message = classify_failure(exc)
            self.lifecycle.fail(self.job_id, code, message, attempt=self.attempt)
        finally:
            self.heartbeat.stop()
            shutil.rmtree(work_dir, ignore_errors=True)

    def _train(self, work_dir: Path) -> None:
        from worker.base_models import load_tokenizer, resolve_base_model
        from worker.training.environment import environment_info
        from worker.training.recipe import TrainingConfig, TrainingHooks, train

        job = self.lifecycle.get(self.job_id)
        self.event(f"Attempt {self.attempt} started on worker {self.worker_name}")
        owner = self.session.scalar(select(User).where(User.id == job.owner_id))
        files = FileRepository(self.session, job.owner_id)
        training_file = files.get(job.training_file_id)
        validation_file = files.get(job.validation_file_id) if job.validation_file_id else None
        if training_file is None or (job.validation_file_id and validation_file is None):
            raise ValueError("a file of this job was deleted before training started")
        split_seed = (training_file.report or {}).get("split", {}).get("seed", DEFAULT_SPLIT_SEED)
        data = load_split_data(
            self.storage.iter_bytes(training_file.storage_key),
            split_seed,
            self.storage.iter_bytes(validation_file.storage_key) if validation_file else None,
        )

        self.event(f"Loading base model {job.model}")
        base = resolve_base_model(job.model, self.settings.base_models[job.model], self.settings.work_dir)
        device = pick_device(self.settings.worker_device)
        tokenizer = load_tokenizer(base)
        stats, data_summary = dataset_stats(tokenizer, data)
        self.event(
            f"Tokenized {stats.train_examples} training and {stats.eval_examples} evaluation examples "
            f"({stats.train_tokens} training tokens; p99 length {stats.token_length_p99})",
            data_summary,
        )
        if job.hyperparameters:  # a resumed attempt keeps what the first one resolved
            resolved = job.hyperparameters
        else:
            resolved = resolve(job.requested_hyperparameters, stats, model_max_length=base.max_length, device=device)
        environment = environment_info(device)
        recipe = build_recipe(
            job, base, resolved, data_summary, {"training": training_file, "validation": validation_file},
            split_seed, environment, job.recipe.get("method") if job.recipe else None,
        )
        self._db(
            lambda: self.lifecycle.update_running(self.job_id, self.attempt, hyperparameters=resolved, recipe=recipe),
            "recording the hyperparameters",
        )
        self.event(
            "Hyperparameters: "
            + ", ".join(f"{name}={detail['value']} ({detail['origin']})" for name, detail in resolved.items()),
            {"hyperparameters": resolved},
        )

        resume_from = None
        if job.checkpoint_key:
            resume_from = _download_prefix(self.storage, job.checkpoint_key, work_dir / "resume")
        config = TrainingConfig(base_model_dir=base.local_dir, hyperparameters=plain_values(resolved), seed=job.seed, device=device)
        hooks = TrainingHooks(
            on_message=self.on_message,
            on_metrics=self.on_metrics,
            on_checkpoint=self.on_checkpoint,
            should_stop=self.should_stop,
            should_pause=self.should_pause,
        )
        self._train_started = time.time()
        self._first_step = job.checkpoint_step or 0
        result = train(config, data.train, data.eval, work_dir, hooks, resume_from=resume_from)

        if result.paused:
            self._hand_back(result.steps)
            return
        if result.stopped:
            self.session.rollback()
            if self.lifecycle.get(self.job_id).status == "cancelled":
                self.event(f"Training stopped at step {result.steps}: the job was cancelled")
            return
        recipe["method"] = result.method
        recipe["result"] = {
            "steps": result.steps,
            "trained_tokens": result.trained_tokens,
            "train_loss": result.train_loss,
            "valid_loss": result.valid_loss,
            "truncated_examples": result.truncated_examples,
        }
        self._publish(job, owner, recipe, result)

    def _hand_back(self, steps: int) -> None:
        """Graceful shutdown: every step done is in a checkpoint (the recipe saved
        it before pausing); give the job back for another worker to resume."""
        self.heartbeat.stop()
        self.heartbeat.join()
        if not self._db(lambda: self.lifecycle.hand_back(self.job_id, self.attempt), "handing the job back"):
            return  # cancelled, or no longer ours, meanwhile
        resume = f"the checkpoint at step {steps}" if steps else "the start"
        self.event(f"Worker {self.worker_name} is shutting down: the job goes back to the queue to resume from {resume}")
        log.info("job %s handed back at step %d", self.job_id, steps)
        # Sent after the commit; if the broker does not take it, the recovery loop sends it.
        if TaskQueue(self.settings).send(TRAIN_TASK, self.job_id):
            self._db(lambda: self.lifecycle.mark_enqueued(self.job_id), "marking the job sent")

    def _publish(self, job: FineTuningJob, owner: User, recipe: dict, result) -> None:
        """Artifacts first, then the status: a job never succeeds without them."""
        self.event("Uploading the adapter")
        prefix = f"jobs/{self.job_id}"
        model_name = fine_tuned_model_name(job, owner.name)

        def upload() -> None:
            _upload_dir(self.storage, result.adapter_dir, f"{prefix}/adapter")
            self.storage.put_bytes(f"{prefix}/adapter.zip", adapter_zip(result.adapter_dir, recipe, model_name))

        self._stored("Uploading the adapter", upload)
        metrics_file = self._metrics_result_file(job)
        # The automatic evaluation (base vs the new fine-tune) is committed in
        # the same transaction as the success: a succeeded job always links it.
        evaluation = self._automatic_evaluation(job, model_name)
        succeeded = self.lifecycle.update_running(  # no retry: a repeat would lose the pending evaluation row
            self.job_id,
            self.attempt,
            status="succeeded",
            fine_tuned_model=model_name,
            trained_tokens=result.trained_tokens,
            finished_at=int(time.time()),
            estimated_finish=None,
            adapter_key=f"{prefix}/adapter.zip",
            result_files=[metrics_file.id],
            recipe=recipe,
            evaluation_id=evaluation.id if evaluation is not None else None,
        )
        if not succeeded:
            if evaluation is not None:  # the job is not ours any more: neither is its evaluation
                self.session.delete(evaluation)
                self.session.commit()
            return
        message, data = f"Fine-tuning succeeded: {model_name}", None
        if evaluation is not None:
            message += (
                f"; evaluation {evaluation.id} queued ({evaluation.models[0]} vs the fine-tune "
                f"on the {evaluation.split} split of {evaluation.file_id})"
            )
            data = {"evaluation_id": evaluation.id}
        self.event(message, data)
        if evaluation is not None:
            self._enqueue_evaluation(evaluation)

    def _automatic_evaluation(self, job: FineTuningJob, model_name: str):
        """The evaluation row to commit with the success (pending in the
        session), or None; a failure here never fails the job."""
        from domain.evaluations.service import create_job_evaluation

        try:
            evaluation = create_job_evaluation(self.session, self.settings, job, model_name)
            if evaluation is None:
                self.event("No automatic evaluation: nothing held out to evaluate on, or the base model is no longer offered")
            return evaluation
        except Exception as exc:
            log.exception("job %s: could not create its evaluation", self.job_id)
            self.session.rollback()
            self.event(f"The automatic evaluation could not be created: {type(exc).__name__}", level="warn")
            return None

    def _enqueue_evaluation(self, evaluation) -> None:
        """After the commit: send the evaluation to an inference worker. A
        message the broker did not take is sent again by the recovery loop."""
        from domain.evaluations.models import WORKING_STATUSES, Evaluation
        from domain.runs.leases import Leases
        from domain.queue_client import EVALUATION_TASK, TaskQueue

        try:
            if TaskQueue(self.settings).send(EVALUATION_TASK, evaluation.id):
                Leases(self.session, Evaluation, working=WORKING_STATUSES).mark_enqueued(evaluation.id)
        except Exception:
            log.exception("job %s: could not queue evaluation %s", self.job_id, evaluation.id)
            self.session.rollback()

    def _metrics_result_file(self, job: FineTuningJob) -> File:
        """OpenAI's result file: the per-step metrics as CSV, owned by the job's user."""
        rows = metrics_by_step(JobRepository(self.session, job.owner_id).metrics_events(job.id))
        file = write_output_file(
            self.storage, job.owner_id, "fine-tune-results", f"{job.id}-step-metrics.csv", [metrics_csv(rows).encode()]
        )
        FileRepository(self.session, job.owner_id).add(file)
        self.session.commit()
        return file


def _checkpoint_metrics(metrics: dict) -> dict:
    return {key: metrics.get(key) for key in ("step", "train_loss", "valid_loss", "learning_rate", "epoch")}


def adapter_zip(adapter_dir: Path, recipe: dict, model_name: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(adapter_dir.rglob("*")):
            # PEFT writes a generic README.md; ours (below) replaces it.
            if path.is_file() and path.name != "README.md":
                archive.write(path, path.relative_to(adapter_dir).as_posix())
        archive.writestr("tunehouse_recipe.json", json.dumps(recipe, indent=2))
        archive.writestr("tunehouse_recipe.yaml", recipe_yaml(recipe))
        archive.writestr("README.md", _adapter_readme(recipe, model_name))
    return buffer.getvalue()


def _adapter_readme(recipe: dict, model_name: str) -> str:
    base = recipe["base_model"]
    return f"""# {model_name}

A LoRA adapter for `{base['id']}` (revision `{base['revision']}`), trained by tunehouse
job `{recipe['job_id']}`.

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

base = AutoModelForCausalLM.from_pretrained("{base['id']}")
model = PeftModel.from_pretrained(base, "path/to/this/folder")
tokenizer = AutoTokenizer.from_pretrained("{base['id']}")
```

`tunehouse_recipe.yaml` records every hyperparameter (with where it came from),
the seed, the data's sha256, the library versions and the hardware. To train
it again without the service: `{recipe['rerun']}`.
"""


def run_training_job(job_id: str) -> None:
    settings = get_settings()
    run = TrainingJobRun(settings, job_id)
    try:
        run.run()
    except DBAPIError as exc:
        if not is_disconnect(exc):
            raise
        # The database stayed away longer than we wait. This message is spent;
        # send another so the job is not stranded (a duplicate does nothing).
        log.error("job %s: the database is unreachable; sending the job back to the queue", job_id)
        TaskQueue(settings).send(TRAIN_TASK, job_id)
    finally:
        run.close()


# ------------------------------------------------------- offline re-run (CLI)


def _file_chunks(path: Path):
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            yield chunk


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    for chunk in _file_chunks(path):
        digest.update(chunk)
    return digest.hexdigest()


def train_from_recipe(
    recipe_path: Path,
    data_path: Path,
    out_dir: Path,
    *,
    validation_path: Path | None = None,
    device: str = "auto",
    settings: Settings | None = None,
    echo=print,
) -> Path:
    """Re-run a job's training from its recipe, without the service: same
    split, same resolved hyperparameters, same seed, same recipe code.
    Writes out_dir/adapter, out_dir/metrics.csv and out_dir/recipe.yaml."""
    from worker.base_models import resolve_base_model
    from worker.training.recipe import TrainingConfig, TrainingHooks, train

    settings = settings or get_settings()
    recipe = yaml.safe_load(recipe_path.read_text())
    if not isinstance(recipe, dict) or recipe.get("tunehouse_recipe_version") != RECIPE_VERSION:
        raise ValueError(f"{recipe_path} is not a tunehouse recipe (version {RECIPE_VERSION})")
    expected = (recipe["data"].get("training_file") or {}).get("sha256")
    if expected and _sha256_of(data_path) != expected:
        echo(f"warning: {data_path} differs from the job's training file (sha256 {expected[:12]}…)")
    base_entry = recipe["base_model"]
    base = resolve_base_model(base_entry["id"], base_entry["source"], settings.work_dir)
    if base.revision != base_entry["revision"]:
        echo(f"warning: base model revision {base.revision} differs from the recipe's {base_entry['revision']}")
    data = load_split_data(
        _file_chunks(data_path),
        recipe["data"]["split"]["seed"],
        _file_chunks(validation_path) if validation_path else None,
    )
    echo(f"{len(data.train)} training and {len(data.eval)} evaluation examples ({data.eval_source})")
    config = TrainingConfig(
        base_model_dir=base.local_dir,
        hyperparameters=plain_values(recipe["hyperparameters"]),
        seed=recipe["seed"]["value"],
        device=pick_device(device),
    )
    rows: list[dict] = []

    def on_metrics(metrics: dict) -> None:
        rows.append(metrics)
        echo(f"step {metrics['step']}/{metrics['total_steps']} train_loss {metrics['train_loss']:.4f}")

    out_dir.mkdir(parents=True, exist_ok=True)
    hooks = TrainingHooks(on_message=lambda message, _data=None: echo(message), on_metrics=on_metrics)
    result = train(config, data.train, data.eval, out_dir / "work", hooks)
    adapter_dir = out_dir / "adapter"
    shutil.rmtree(adapter_dir, ignore_errors=True)
    shutil.move(str(result.adapter_dir), adapter_dir)
    shutil.rmtree(out_dir / "work", ignore_errors=True)
    (out_dir / "metrics.csv").write_text(metrics_csv(rows))
    (out_dir / "recipe.yaml").write_text(recipe_yaml(recipe))
    echo(f"adapter written to {adapter_dir}")
    return adapter_dir
