"""One fine-tuning job on a worker: claim it, read its data, resolve every
hyperparameter, train (resuming from the last checkpoint if an earlier attempt
died), publish the adapter, and record all of it.

The training loop itself is worker/training/recipe.py, the documents a job
leaves (recipe, adapter zip) worker/training/artifacts.py; `tunehouse train`
runs the same recipe without the service (worker/training/offline.py).
"""

import logging
import shutil
import time
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from domain.auth.models import User
from domain.db import is_disconnect
from domain.files.models import File
from domain.files.outputs import write_output_file
from domain.files.repository import FileRepository
from domain.files.split import DEFAULT_SPLIT_SEED
from domain.jobs.events import add_event
from domain.jobs.hyperparameters import plain_values, resolve
from domain.jobs.lineage import FineTuneModel, lineage_chain, lineage_entry, parent_of_job, with_inherited
from domain.jobs.models import FineTuningJob
from domain.jobs.repository import JobRepository, record_checkpoint
from domain.jobs.schemas import fine_tuned_model_name
from domain.jobs.weights import merged_weights_key
from domain.jobs.training_metrics import METRIC_COLUMNS, PREFERENCE_COLUMNS, metrics_by_step, metrics_csv, peak_memory
from domain.queue_client import TaskQueue
from domain.runs.kinds import EVALUATION, JOB
from domain.runs.leases import send_to_worker
from worker.compute import choose_compute_dtype
from worker.runs import FailureWords, HandBack, LeasedRun, RunFailure, run_leased
from worker.training.artifacts import adapter_zip, build_recipe, copy_tokenizer_files, full_model_zip
from worker.training.data import dataset_stats, load_split_data
from worker.training.preference import dataset_stats as preference_dataset_stats
from worker.training.environment import pick_device

log = logging.getLogger("tunehouse.worker")


class TrainingJobRun(LeasedRun):
    """One attempt at one fine-tuning job; the steps are methods."""

    kind = JOB
    words = FailureWords(
        generic_code="training_error",
        generic_what="Training failed",
        bad_data_code="invalid_training_data",
        bad_data_what="The training data",
        out_of_memory="Training ran out of memory. Lower batch_size or max_seq_length, or use adapter 'qlora'.",
    )

    @property
    def job_id(self) -> str:
        return self.row_id

    def cleanup(self) -> None:
        if self.attempt is not None:
            shutil.rmtree(self._work_dir(), ignore_errors=True)

    def _work_dir(self) -> Path:
        return self.settings.work_dir / "jobs" / self.job_id / f"attempt-{self.attempt}"

    # -- events -------------------------------------------------------------

    def event(self, message: str, data: dict | None = None, *, level: str = "info", type: str = "message") -> None:
        def write() -> None:
            add_event(self.session, self.job_id, message, level=level, type=type, data=data)
            self.session.commit()

        self.transaction(write, "writing an event")

    def record(self, message: str, level: str = "info") -> None:
        self.event(message, level=level)

    # -- hooks the recipe calls ---------------------------------------------

    def on_message(self, message: str, data: dict | None = None) -> None:
        self.event(message, data)

    def on_metrics(self, metrics: dict) -> None:
        step, total = metrics["step"], metrics["total_steps"]
        parts = [f"Step {step}/{total}: training loss {metrics['train_loss']:.4f}"]
        if metrics.get("train_reward_margin") is not None:
            parts.append(f"reward margin {metrics['train_reward_margin']:.4f}")
        if metrics.get("valid_loss") is not None:
            parts.append(f"validation loss {metrics['valid_loss']:.4f}")
        if metrics.get("valid_preference_accuracy") is not None:
            parts.append(f"validation preference accuracy {metrics['valid_preference_accuracy']:.0%}")
        elapsed = time.time() - self._train_started
        done = max(step - self._first_step, 1)
        remaining = (total - step) * elapsed / done

        def record() -> bool:
            # The step's metrics event and the job's progress in one commit.
            held = self.leases.update(
                self.job_id,
                self.attempt,
                step=step,
                total_steps=total,
                trained_tokens=metrics.get("trained_tokens"),
                estimated_finish=int(time.time() + remaining),
                heartbeat_at=time.time(),
            )
            if not held:  # cancelled meanwhile: the loop stops at its next check
                self.session.rollback()
                return False
            data = {k: metrics.get(k) for k in (*METRIC_COLUMNS, "total_steps")}
            data.update({k: metrics[k] for k in PREFERENCE_COLUMNS if k in metrics})
            add_event(self.session, self.job_id, ", ".join(parts), type="metrics", data=data)
            self.session.commit()
            return True

        if not self.transaction(record, "recording progress"):
            self._stop_requested = True

    def on_checkpoint(self, step: int, checkpoint_dir: Path, metrics: dict) -> None:
        key = f"jobs/{self.job_id}/checkpoints/step-{step:06d}"

        def upload() -> None:
            self.storage.delete_prefix(key)  # a redone step (or try) replaces its files
            self.storage.upload_folder(checkpoint_dir, key)

        self.stored(f"Uploading the checkpoint at step {step}", upload)
        # The row is written after the files: a checkpoint in the database is complete.
        recorded = self.transaction(
            lambda: record_checkpoint(self.session, self.job_id, self.attempt, step, _checkpoint_metrics(metrics), key),
            "recording a checkpoint",
        )
        if recorded:
            self.event(f"Checkpoint at step {step} saved", {"step": step})

    # -- lineage ---------------------------------------------------------------

    def _parent(self, job: FineTuningJob) -> FineTuneModel | None:
        """The fine-tune (or checkpoint) this job continues; None for a job on a base model."""
        if not job.parent_job_id:
            return None
        parent = parent_of_job(self.session, job)
        if parent is None:
            raise RunFailure(
                "parent_model_not_found",
                f"The model this job continues, '{job.parent_model}', does not exist any more (deleted?).",
            )
        return parent

    # -- the attempt ---------------------------------------------------------

    def work(self) -> None:
        from worker.models.catalog import load_tokenizer, resolve_base_model
        from worker.training.environment import environment_info
        from worker.training.recipe import TrainingConfig, TrainingHooks, train

        work_dir = self._work_dir()
        job = self.leases.get(self.job_id)
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
        measure = preference_dataset_stats if job.method == "dpo" else dataset_stats
        stats, data_summary = measure(tokenizer, data)
        self.event(
            f"Tokenized {stats.train_examples} training and {stats.eval_examples} evaluation examples "
            f"({stats.train_tokens} training tokens; p99 length {stats.token_length_p99})",
            data_summary,
        )
        if job.hyperparameters:  # a resumed attempt keeps what the first one resolved
            resolved = job.hyperparameters
        else:
            # The dtype this machine computes fastest in: a matmul probe, kept once per machine.
            compute = choose_compute_dtype(device, kept_in=self.settings.compute_probe_file)
            resolved = resolve(
                job.requested_hyperparameters, stats, model_max_length=base.max_length, device=device,
                measured_compute_dtype=(compute.dtype, compute.reason), method=job.method,
            )
        parent = self._parent(job)
        if parent is not None:  # it trains the parent's adapter on: the parent's LoRA settings
            resolved = with_inherited(resolved, parent)
        environment = environment_info(device)
        recipe = build_recipe(
            job, base, resolved, data_summary, {"training": training_file, "validation": validation_file},
            split_seed, environment, job.recipe.get("method") if job.recipe else None,
        )
        recipe["memory"] = self._memory_estimate(job, base, resolved, device, stats.token_length_max)
        if parent is not None:  # the whole chain down to the base model, every parent's recipe in it
            recipe["parent"] = lineage_entry(parent)
            recipe["lineage"] = lineage_chain(parent, job.model)
        self.write("recording the hyperparameters", hyperparameters=resolved, recipe=recipe)
        self.event(
            "Hyperparameters: "
            + ", ".join(f"{name}={detail['value']} ({detail['origin']})" for name, detail in resolved.items()),
            {"hyperparameters": resolved},
        )

        resume_from = None
        if job.checkpoint_key:
            resume_from = self.storage.download_prefix(job.checkpoint_key, work_dir / "resume")
        init_adapter_dir = None
        if parent is not None:
            self.event(f"Continuing the adapter of {parent.name}")
            init_adapter_dir = self.storage.download_prefix(parent.adapter_key, work_dir / "parent-adapter")
        config = TrainingConfig(base_model_dir=base.local_dir, hyperparameters=plain_values(resolved), seed=job.seed, device=device,
                                method=job.method, init_adapter_dir=init_adapter_dir,
                                compute_probe_file=self.settings.compute_probe_file)
        hooks = TrainingHooks(
            on_message=self.on_message,
            on_metrics=self.on_metrics,
            on_checkpoint=self.on_checkpoint,
            should_stop=self.should_stop,
            should_pause=self.should_pause,
        )
        self._train_started = time.time()
        self._first_step = job.checkpoint_step or 0
        result = train(config, data.train, data.eval, work_dir, hooks, resume_from=resume_from, tokenizer=tokenizer)

        if result.paused:
            # Every step done is in a checkpoint: the recipe saved it before pausing.
            raise HandBack(f"the checkpoint at step {result.steps}" if result.steps else "the start")
        if result.stopped:
            self.session.rollback()
            if self.leases.get(self.job_id).status == "cancelled":
                self.event(f"Training stopped at step {result.steps}: the job was cancelled")
            return
        recipe["method"] = result.method
        recipe["result"] = {
            "steps": result.steps,
            "trained_tokens": result.trained_tokens,
            "train_loss": result.train_loss,
            "valid_loss": result.valid_loss,
            "truncated_examples": result.truncated_examples,
            "memory": self._run_peak_memory(job, result),
        }
        if result.method.get("adapter") == "full":
            copy_tokenizer_files(base.local_dir, result.adapter_dir)  # the folder is the whole model
        self._publish(job, owner, recipe, result)

    def _memory_estimate(self, job: FineTuningJob, base, resolved: dict, device: str, longest: int) -> dict:
        """The estimate of this run's peak memory (domain/jobs/memory.py), for
        the recipe and the job page; the base model's numbers are recorded for
        the API's preview on the way."""
        from worker.devices import record_base_model_shape
        from worker.training.memory import estimate_run_memory

        try:
            shape, estimate = estimate_run_memory(
                base.local_dir, plain_values(resolved), device,
                method=getattr(job, "method", None) or "supervised", row_tokens=longest,
            )
        except Exception as error:  # noqa: BLE001 - an estimate never fails a job
            log.warning("job %s: no memory estimate: %s", self.job_id, error)
            return {"estimate": None, "error": str(error)}
        self.transaction(
            lambda: record_base_model_shape(self.session, job.model, self.settings.base_models[job.model], base.revision, shape),
            "recording the base model's shape",
        )
        return {"estimate": estimate, "model_shape": shape.as_dict()}

    def _run_peak_memory(self, job: FineTuningJob, result) -> dict:
        """The run's measured peak: over every step's metrics, earlier attempts' included."""
        rows = metrics_by_step(JobRepository(self.session, job.owner_id).metrics_events(job.id))
        return {**(result.memory or {}), **peak_memory(rows)}

    def _publish(self, job: FineTuningJob, owner: User, recipe: dict, result) -> None:
        """Artifacts first, then the status: a job never succeeds without them."""
        prefix = f"jobs/{self.job_id}"
        model_name = fine_tuned_model_name(job, owner.name)
        # A full fine-tune has no adapter: its weights are the whole model,
        # stored as the job's merged weights (domain/jobs/weights.py).
        full = result.method.get("adapter") == "full"
        weights_key = merged_weights_key(self.job_id) if full else f"{prefix}/adapter.zip"
        what = "Uploading the model's weights" if full else "Uploading the adapter"
        self.event(what)

        def upload() -> None:
            if full:
                self.storage.put_bytes(weights_key, full_model_zip(result.adapter_dir, recipe, model_name))
                return
            self.storage.upload_folder(result.adapter_dir, f"{prefix}/adapter")
            self.storage.put_bytes(f"{prefix}/adapter.zip", adapter_zip(result.adapter_dir, recipe, model_name))

        self.stored(what, upload)
        metrics_file = self._metrics_result_file(job)

        def succeed():
            # The automatic evaluation (base vs the new fine-tune) is committed
            # in the same transaction as the success: a succeeded job always
            # links it. Made anew on each try, so a retried commit loses nothing.
            # A full fine-tune is not served here: nothing to evaluate it with.
            evaluation = None if full else self._automatic_evaluation(job, model_name)
            if full:
                self.session.add(ready_export(job, weights_key))
            succeeded = self.leases.update(
                self.job_id,
                self.attempt,
                status="succeeded",
                fine_tuned_model=model_name,
                trained_tokens=result.trained_tokens,
                finished_at=int(time.time()),
                estimated_finish=None,
                adapter_key=weights_key,
                result_files=[metrics_file.id],
                recipe=recipe,
                evaluation_id=evaluation.id if evaluation is not None else None,
            )
            if not succeeded:  # the job is not ours any more: neither is its evaluation
                self.session.rollback()
                return None, False
            self.session.commit()
            return evaluation, True

        evaluation, succeeded = self.transaction(succeed, "recording the success")
        if not succeeded:
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
                log.info("job %s: nothing held out to evaluate on, or the base model is no longer offered", self.job_id)
            return evaluation
        except Exception as exc:
            if isinstance(exc, DBAPIError) and is_disconnect(exc):
                raise
            log.exception("job %s: could not create its evaluation", self.job_id)
            return None

    def _enqueue_evaluation(self, evaluation) -> None:
        """After the commit: send the evaluation to an inference worker. A
        message the broker did not take is sent again by the recovery loop."""
        try:
            send_to_worker(self.session, TaskQueue(self.settings), EVALUATION, evaluation.id)
        except Exception:
            log.exception("job %s: could not queue evaluation %s", self.job_id, evaluation.id)
            self.session.rollback()

    def _metrics_result_file(self, job: FineTuningJob) -> File:
        """OpenAI's result file: the per-step metrics as CSV, owned by the job's user."""
        rows = metrics_by_step(JobRepository(self.session, job.owner_id).metrics_events(job.id))
        file = write_output_file(
            self.storage, job.owner_id, "fine-tune-results", f"{job.id}-step-metrics.csv", [metrics_csv(rows).encode()]
        )

        def add() -> None:
            FileRepository(self.session, job.owner_id).add(file)
            self.session.commit()

        self.transaction(add, "recording the metrics file")
        return file


def _checkpoint_metrics(metrics: dict) -> dict:
    return {key: metrics.get(key) for key in ("step", "train_loss", "valid_loss", "learning_rate", "epoch")}


def run_training_job(job_id: str) -> None:
    run_leased(TrainingJobRun, job_id)


def ready_export(job: FineTuningJob, key: str):
    """A full fine-tune's merged weights: ready the moment the job succeeds."""
    from domain.exports.models import Export
    from domain.ids import new_id

    now = int(time.time())
    return Export(id=new_id("export_"), job_id=job.id, owner_id=job.owner_id, format="merged", status="ready",
                  storage_key=key, attempt=0, handbacks=0, created_at=now, finished_at=now)
