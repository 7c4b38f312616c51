"""Exports: a fine-tune's weights in another form (merged safetensors, GGUF),
made by a worker on first request and kept in storage. Each is leased work
(domain/runs/leases.py): a worker that dies while exporting leaves the export
to be redone by another."""

import time
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from domain.db import Base
from domain.exports.gguf import FORMAT_PREFIX, QUANTIZATIONS
from domain.runs.leases import LeaseColumns

# queued -> running -> ready | failed. A failed export is made anew when asked again.
CLAIMABLE_STATUSES = ("queued", "running")
FORMATS = ("merged", *(FORMAT_PREFIX + quantization for quantization in QUANTIZATIONS))


def failed_values(code: str, message: str) -> dict[str, Any]:
    return {"status": "failed", "error": f"{code}: {message}"[:2000], "finished_at": int(time.time())}


class Export(LeaseColumns, Base):
    __tablename__ = "exports"
    __table_args__ = (Index("ix_exports_job_id_format", "job_id", "format", unique=True),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"))
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    format: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    storage_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    finished_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
