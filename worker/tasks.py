"""Celery tasks. Heavy imports (torch, transformers) happen inside the tasks
that need them, so the worker's parent process never touches CUDA; each task
runs in a fresh child process on training workers (worker_max_tasks_per_child=1);
inference workers keep their child process, and its loaded models, between tasks."""

import json
import logging
import os
import socket
import time
from contextlib import contextmanager

from celery import current_task

from domain.observability.logs import log_context
from domain.settings import get_settings
from domain.storage import storage_from_url
from worker.celery_app import app

log = logging.getLogger("tunehouse.worker")


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


@app.task(name="tunehouse.batch")
def batch(batch_id: str) -> None:
    with _task_context(batch_id=batch_id):
        from worker.inference.batch import run_batch

        run_batch(batch_id)


@app.task(name="tunehouse.evaluate")
def evaluate(evaluation_id: str) -> None:
    with _task_context(evaluation_id=evaluation_id):
        from worker.evaluation.run import run_evaluation

        run_evaluation(evaluation_id)
