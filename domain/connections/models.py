from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from domain.db import Base


class Connection(Base):
    """A user's external OpenAI-compatible endpoint; its models are
    `conn:{name}/{model}`. The key is kept only as a Fernet token."""

    __tablename__ = "connections"
    __table_args__ = (Index("ix_connections_owner_id_name", "owner_id", "name", unique=True),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    base_url: Mapped[str] = mapped_column(String(2048))
    api_key_encrypted: Mapped[str] = mapped_column(Text)
    # The model allow-list; None: every model of the endpoint.
    models: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger)

    def __repr__(self) -> str:  # the token stays out of logs and tracebacks too
        return f"Connection(id={self.id!r}, name={self.name!r}, base_url={self.base_url!r})"
