"""connections: a user's external OpenAI-compatible endpoints (their API keys
encrypted at rest)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "connections",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("owner_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("base_url", sa.String(2048), nullable=False),
        # Fernet token of the key (domain/connections/secrets.py); never the key itself.
        sa.Column("api_key_encrypted", sa.Text(), nullable=False),
        # The model allow-list; NULL: every model of the endpoint.
        sa.Column("models", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_connections_owner_id_name", "connections", ["owner_id", "name"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_connections_owner_id_name", table_name="connections")
    op.drop_table("connections")
