"""Reads and upserts of what workers report (domain/workers/models.py)."""

import time
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from domain.jobs.memory import ModelShape
from domain.workers.models import BaseModelShape, WorkerDevice

TRAIN_QUEUE_NAME = "train"


def report_device(session: Session, worker: str, queues: str, device: dict[str, Any]) -> WorkerDevice:
    """Insert or replace the worker's row (the caller commits). `device`:
    device, name, total_memory_bytes, memory_source, device_count and any details."""
    row = session.get(WorkerDevice, worker) or WorkerDevice(worker=worker)
    row.queues = queues
    row.device = device["device"]
    row.name = device.get("name")
    row.total_memory_bytes = device.get("total_memory_bytes")
    row.memory_source = device.get("memory_source")
    row.device_count = device.get("device_count")
    row.details = {k: v for k, v in device.items() if k not in (
        "device", "name", "total_memory_bytes", "memory_source", "device_count")} or None
    row.reported_at = time.time()
    session.add(row)
    session.flush()
    return row


def forget_worker(session: Session, worker: str) -> None:
    """A worker that stops says so (one that dies keeps its row until its name comes back)."""
    session.execute(delete(WorkerDevice).where(WorkerDevice.worker == worker))


def device_dict(row: WorkerDevice) -> dict[str, Any]:
    return {
        "worker": row.worker,
        "queues": row.queues.split(",") if row.queues else [],
        "device": row.device,
        "name": row.name,
        "total_memory_bytes": row.total_memory_bytes,
        "memory_source": row.memory_source,
        "device_count": row.device_count,
        "reported_at": row.reported_at,
    }


def training_devices(session: Session) -> list[dict[str, Any]]:
    """The devices of workers that take training jobs, newest report first."""
    rows = session.scalars(select(WorkerDevice).order_by(WorkerDevice.reported_at.desc()))
    return [device_dict(row) for row in rows if TRAIN_QUEUE_NAME in (row.queues or "").split(",")]


def record_model_shape(session: Session, model: str, source: str, revision: str | None, shape: ModelShape) -> None:
    """Insert or replace (the caller commits)."""
    row = session.get(BaseModelShape, model) or BaseModelShape(model=model)
    row.source, row.revision, row.shape, row.recorded_at = source, revision, shape.as_dict(), time.time()
    session.add(row)
    session.flush()


def model_shape(session: Session, model: str, source: str) -> ModelShape | None:
    """The recorded shape of `model`, if a worker recorded it for the same catalogue source."""
    row = session.get(BaseModelShape, model)
    if row is None or row.source != source:
        return None
    return ModelShape.from_dict(row.shape)
