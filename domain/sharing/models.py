from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from domain.db import Base


class ModelShare(Base):
    """A fine-tune (the model of a job) its owner lets another user, or every
    user of the deployment, use read-only."""

    __tablename__ = "model_shares"
    __table_args__ = (
        Index("ix_model_shares_job_id_grantee", "job_id", "grantee_user_id", unique=True),
        # NULLs are distinct in a unique index, so "everyone" needs its own.
        Index("ix_model_shares_job_id_everyone", "job_id", unique=True,
              sqlite_where=text("grantee_user_id IS NULL"), postgresql_where=text("grantee_user_id IS NULL")),
        Index("ix_model_shares_grantee_user_id", "grantee_user_id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"))
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    # None: every user of the deployment.
    grantee_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
