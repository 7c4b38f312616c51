"""What the workers report about themselves: the device each one computes on
(written when it starts, read by the API's memory fit check), and the shape
of each base model a worker has prepared (read by the API's memory estimate,
which cannot load a model)."""

from typing import Any

from sqlalchemy import JSON, BigInteger, Float, String
from sqlalchemy.orm import Mapped, mapped_column

from domain.db import Base


class WorkerDevice(Base):
    """One row per worker name (Celery's hostname), upserted when it starts."""

    __tablename__ = "worker_devices"

    worker: Mapped[str] = mapped_column(String(255), primary_key=True)
    queues: Mapped[str] = mapped_column(String(255))  # comma-separated, as the worker was started
    device: Mapped[str] = mapped_column(String(16))  # cpu | cuda
    name: Mapped[str | None] = mapped_column(String(255), nullable=True)  # GPU or CPU model name
    total_memory_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # cuda: torch.cuda.get_device_properties(0).total_memory; cpu: cgroup
    # memory limit, else the machine's RAM.
    memory_source: Mapped[str | None] = mapped_column(String(64), nullable=True)
    device_count: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    reported_at: Mapped[float] = mapped_column(Float)


class BaseModelShape(Base):
    """A base model's config numbers (domain/jobs/memory.py ModelShape), one row
    per public model id, written by a worker that prepared the model."""

    __tablename__ = "base_model_shapes"

    model: Mapped[str] = mapped_column(String(255), primary_key=True)
    source: Mapped[str] = mapped_column(String(1024))
    revision: Mapped[str | None] = mapped_column(String(255), nullable=True)
    shape: Mapped[dict[str, Any]] = mapped_column(JSON)
    recorded_at: Mapped[float] = mapped_column(Float)
