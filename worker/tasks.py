"""Celery tasks. Heavy imports (torch, transformers) happen inside the tasks
that need them, so the worker's parent process never touches CUDA; each task
runs in a fresh child process on training workers (worker_max_tasks_per_child=1);
inference workers keep their child process, and its loaded models, between tasks."""

import json
import os
import socket
import time

from api.settings import get_settings
from api.storage import storage_from_url
from worker.celery_app import app


@app.task(name="tunehouse.ping")
def ping(nonce: str) -> None:
    """Proves a worker consumes the queue with the service's configuration: it
    writes `system/ping/<nonce>` to the artifact store."""
    settings = get_settings()
    storage = storage_from_url(settings.storage_url, endpoint_url=settings.s3_endpoint_url)
    record = {"nonce": nonce, "host": socket.gethostname(), "pid": os.getpid(), "at": time.time()}
    storage.put_bytes(f"system/ping/{nonce}", json.dumps(record).encode())


@app.task(name="tunehouse.train")
def train(job_id: str) -> None:
    """Message = job id only; everything else is read from the database."""
    from worker.finetune import run_training_job

    run_training_job(job_id)


@app.task(name="tunehouse.merge")
def merge(job_id: str) -> None:
    from worker.merge import run_merge_job

    run_merge_job(job_id)


@app.task(name="tunehouse.chat")
def chat(request: dict) -> None:
    """The request travels whole in the message; the answer goes back on its
    stream (api/inference/streams.py)."""
    from worker.serving import run_chat_request

    run_chat_request(request)


@app.task(name="tunehouse.batch")
def batch(batch_id: str) -> None:
    from worker.batches import run_batch

    run_batch(batch_id)


@app.task(name="tunehouse.evaluate")
def evaluate(evaluation_id: str) -> None:
    from worker.evaluations import run_evaluation

    run_evaluation(evaluation_id)
