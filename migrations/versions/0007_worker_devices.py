"""workers report their device (name, total memory) when they start, and the
config numbers of each base model they prepare: the preview's memory fit check

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "worker_devices",
        sa.Column("worker", sa.String(255), primary_key=True),
        sa.Column("queues", sa.String(255), nullable=False),
        sa.Column("device", sa.String(16), nullable=False),
        sa.Column("name", sa.String(255), nullable=True),
        sa.Column("total_memory_bytes", sa.BigInteger(), nullable=True),
        sa.Column("memory_source", sa.String(64), nullable=True),
        sa.Column("device_count", sa.BigInteger(), nullable=True),
        sa.Column("details", sa.JSON(), nullable=True),
        sa.Column("reported_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "base_model_shapes",
        sa.Column("model", sa.String(255), primary_key=True),
        sa.Column("source", sa.String(1024), nullable=False),
        sa.Column("revision", sa.String(255), nullable=True),
        sa.Column("shape", sa.JSON(), nullable=False),
        sa.Column("recorded_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("base_model_shapes")
    op.drop_table("worker_devices")
