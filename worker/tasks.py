"""Celery tasks. Heavy imports (torch, transformers) happen inside the tasks
that need them, so the worker's parent process never touches CUDA."""

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
