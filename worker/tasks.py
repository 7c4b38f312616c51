"""Celery tasks. Heavy imports (torch, transformers) happen inside the tasks
that need them, so the worker's parent process never touches CUDA; each task
runs in a fresh child process on training workers (worker_max_tasks_per_child=1);
inference workers run their tasks in threads of one process, which keeps the
loaded models and one decode loop for all of them (worker/inference/loop.py)."""

import json
import logging
import os
import socket
import time
from contextlib import contextmanager

from celery import current_task
from celery.exceptions import Reject

from domain.observability.logs import log_context
from domain.settings import get_settings
from domain.storage import storage_from_url
from worker import shutdown
from worker.celery_app import app

log = logging.getLogger("tunehouse.worker")
SHUTDOWN_REQUEUE_PAUSE_SECONDS = 1.0


@contextmanager
def _task_context(**ids):
    """Every record a task logs carries its ids (domain/observability/logs.py) and Celery's task id."""
    task_id = current_task.request.id if current_task else None
    with log_context(task_id=task_id, **ids):
        yield


@app.task(name="tunehouse.ping")
def ping(nonce: str) -> None:
    """Proves a worker consumes the queue with the service's configuration: it
    writes `system/ping/<nonce>` to the artifact store."""
    with _task_context():
        settings = get_settings()
        storage = storage_from_url(settings.storage_url, endpoint_url=settings.s3_endpoint_url)
        record = {"nonce": nonce, "host": socket.gethostname(), "pid": os.getpid(), "at": time.time()}
        storage.put_bytes(f"system/ping/{nonce}", json.dumps(record).encode())
        log.info("ping %s answered by pid %d", nonce, os.getpid())


@app.task(name="tunehouse.train")
def train(job_id: str) -> None:
    """Message = job id only; everything else is read from the database."""
    with _task_context(job_id=job_id):
        from worker.training.job import run_training_job

        run_training_job(job_id)


@app.task(name="tunehouse.export")
def export(export_id: str) -> None:
    """Merged weights (and later other formats) of a fine-tune."""
    with _task_context(export_id=export_id):
        from worker.models.merge import run_export

        run_export(export_id)


@app.task(name="tunehouse.chat")
def chat(request: dict) -> None:
    """The request travels whole in the message; the answer goes back on its
    stream (domain/inference/streams.py)."""
    with _task_context(completion_id=request.get("id") if isinstance(request, dict) else None):
        from worker.inference.chat import run_chat_request

        run_chat_request(request)


def _not_while_shutting_down(what: str) -> None:
    """An inference worker runs its tasks in threads and goes on taking
    messages for a moment after SIGTERM; a leased task it takes then would
    claim its row only to hand it back at once (and be sent back to this same
    worker). Instead the message goes back to the queue unclaimed, for
    another worker, after a pause that keeps this one from spinning on it."""
    if shutdown.requested(get_settings()):
        log.info("%s: this worker is shutting down; the message goes back to the queue", what)
        time.sleep(SHUTDOWN_REQUEUE_PAUSE_SECONDS)
        raise Reject(f"{what}: the worker is shutting down", requeue=True)


@app.task(name="tunehouse.batch")
def batch(batch_id: str) -> None:
    with _task_context(batch_id=batch_id):
        _not_while_shutting_down(f"batch {batch_id}")
        from worker.inference.batch import run_batch

        run_batch(batch_id)


@app.task(name="tunehouse.evaluate")
def evaluate(evaluation_id: str) -> None:
    with _task_context(evaluation_id=evaluation_id):
        _not_while_shutting_down(f"evaluation {evaluation_id}")
        from worker.evaluation.run import run_evaluation

        run_evaluation(evaluation_id)
