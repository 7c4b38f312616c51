import time
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from domain.db import Base
from domain.runs.leases import LeaseColumns

WORKING_STATUSES = ("queued", "running")
FINAL_STATUSES = ("succeeded", "failed", "cancelled")


def failed_values(code: str, message: str) -> dict[str, Any]:
    """The columns of an evaluation that failed."""
    return {"status": "failed", "finished_at": int(time.time()), "error": {"code": code, "message": message}}


class Evaluation(LeaseColumns, Base):
    """Leased work (domain/runs/leases.py): attempt, worker, heartbeat."""

    __tablename__ = "evaluations"
    __table_args__ = (Index("ix_evaluations_owner_id_id", "owner_id", "id"), Index("ix_evaluations_status", "status"))

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    file_id: Mapped[str] = mapped_column(String(64))
    split: Mapped[str] = mapped_column(String(8))
    models: Mapped[list[str]] = mapped_column(JSON)
    max_tokens: Mapped[int] = mapped_column(Integer)
    temperature: Mapped[float] = mapped_column(Float)
    metrics: Mapped[list[str]] = mapped_column(JSON)
    item_limit: Mapped[int | None] = mapped_column(Integer, nullable=True)
    seed: Mapped[int] = mapped_column(BigInteger)
    # Set when a fine-tuning job made this evaluation on success.
    fine_tuning_job_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str] = mapped_column(String(16))
    # {model: {metric: value}}; filled per model as each finishes.
    results: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    items_total: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Progress: items done over all models (items_total * len(models) at the end).
    items_done: Mapped[int] = mapped_column(Integer, default=0)
    # Examples of the split left out because they do not end with an assistant answer.
    items_skipped: Mapped[int | None] = mapped_column(Integer, nullable=True)
    predictions_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    user_metadata: Mapped[dict[str, str] | None] = mapped_column(JSON, nullable=True)
    # The LLM judges asked for (JudgeSpec dicts); None: supervised metrics only.
    judges: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    # From the pairwise judgments (domain/evaluations/ratings.py), set on success.
    ratings: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    pairwise: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    # {model: {tag: count}}: the automatic tags (set on success) and the users' own
    # (recounted from evaluation_item_tags whenever they change).
    tag_counts: Mapped[dict[str, dict[str, int]] | None] = mapped_column(JSON, nullable=True)
    user_tag_counts: Mapped[dict[str, dict[str, int]] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    started_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    finished_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class EvaluationItemTags(Base):
    """A user's own tags on one model's output for one item of an evaluation."""

    __tablename__ = "evaluation_item_tags"

    evaluation_id: Mapped[str] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"), primary_key=True)
    item: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(String(255), primary_key=True)
    tags: Mapped[list[str]] = mapped_column(JSON)
    updated_at: Mapped[int] = mapped_column(BigInteger)
