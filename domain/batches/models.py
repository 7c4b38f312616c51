import time
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from domain.db import Base
from domain.runs.leases import LeaseColumns

# OpenAI's batch statuses. `validating`, `in_progress`, `finalizing` and
# `cancelling` still need a worker.
WORKING_STATUSES = ("validating", "in_progress", "finalizing", "cancelling")
FINAL_STATUSES = ("completed", "failed", "cancelled", "expired")


def failed_values(code: str, message: str) -> dict[str, Any]:
    """The columns of a batch that failed as a whole (OpenAI's `errors` list)."""
    error = {"code": code, "message": message, "param": None, "line": None}
    return {"status": "failed", "failed_at": int(time.time()), "errors": {"object": "list", "data": [error]}}


class Batch(LeaseColumns, Base):
    """Leased work (domain/runs/leases.py): attempt, worker, heartbeat."""

    __tablename__ = "batches"
    __table_args__ = (Index("ix_batches_owner_id_id", "owner_id", "id"), Index("ix_batches_status", "status"))

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    endpoint: Mapped[str] = mapped_column(String(64))
    input_file_id: Mapped[str] = mapped_column(String(64))
    completion_window: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    user_metadata: Mapped[dict[str, str] | None] = mapped_column(JSON, nullable=True)
    errors: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    output_file_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_file_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    request_total: Mapped[int] = mapped_column(Integer, default=0)
    request_completed: Mapped[int] = mapped_column(Integer, default=0)
    request_failed: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    in_progress_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    finalizing_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    completed_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    failed_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    expired_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    cancelling_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    cancelled_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class BatchResult(Base):
    """One answered input line, kept until the output files are written: a
    worker that restarts skips the lines already here, so no line is run or
    written twice."""

    __tablename__ = "batch_results"

    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True)
    line_number: Mapped[int] = mapped_column(Integer, primary_key=True)
    is_error: Mapped[bool] = mapped_column(Boolean)
    # The output line exactly as it goes into the output or error file.
    record: Mapped[dict[str, Any]] = mapped_column(JSON)
