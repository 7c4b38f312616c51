from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from domain.db import Base
from domain.runs.leases import LeaseColumns


class FineTuningJob(LeaseColumns, Base):
    """Leased work (domain/runs/leases.py): attempt, worker, heartbeat."""

    __tablename__ = "fine_tuning_jobs"
    __table_args__ = (
        Index("ix_fine_tuning_jobs_owner_id_id", "owner_id", "id"),
        Index("ix_fine_tuning_jobs_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(255))  # the base model's public id
    training_file_id: Mapped[str] = mapped_column(String(64))
    validation_file_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str] = mapped_column(String(32))
    # OpenAI's method.type: "supervised" or "dpo".
    method: Mapped[str] = mapped_column(String(16), default="supervised", server_default="supervised")
    # What the user asked for (explicit values only) and, once a worker has seen
    # the data, every value with its origin and reason.
    requested_hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    hyperparameters: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    seed: Mapped[int] = mapped_column(BigInteger)
    seed_origin: Mapped[str] = mapped_column(String(16))
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    user_metadata: Mapped[dict[str, str] | None] = mapped_column(JSON, nullable=True)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(512), nullable=True)
    model_deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    result_files: Mapped[list[str]] = mapped_column(JSON, default=list)
    estimated_finish: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    started_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    finished_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # Progress and artifacts.
    step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    total_steps: Mapped[int | None] = mapped_column(Integer, nullable=True)
    checkpoint_step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    checkpoint_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    adapter_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    recipe: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # The evaluation made automatically when the job succeeded (base vs fine-tune).
    evaluation_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Pause (OpenAI's POST .../pause): asked while a worker runs the job; the
    # worker saves a checkpoint of its step and hands the job back as "paused".
    pause_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    # Lineage: the fine-tune (or checkpoint model) this job continues, by the
    # name the user gave, its job and, for a checkpoint, its step. `model`
    # stays the root base model's public id.
    parent_model: Mapped[str | None] = mapped_column(String(512), nullable=True)
    parent_job_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    parent_checkpoint_step: Mapped[int | None] = mapped_column(Integer, nullable=True)


class FineTuningEvent(Base):
    __tablename__ = "fine_tuning_events"
    __table_args__ = (Index("ix_fine_tuning_events_job_id_seq", "job_id", "seq"),)

    # seq orders events exactly (ids made in the same millisecond would not).
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"))
    created_at: Mapped[int] = mapped_column(BigInteger)
    level: Mapped[str] = mapped_column(String(16))
    type: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class FineTuningCheckpoint(Base):
    __tablename__ = "fine_tuning_checkpoints"
    __table_args__ = (Index("ix_fine_tuning_checkpoints_job_id_step", "job_id", "step_number", unique=True),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"))
    step_number: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    storage_key: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[int] = mapped_column(BigInteger)
