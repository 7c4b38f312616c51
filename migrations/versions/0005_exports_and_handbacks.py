"""exports (merged weights, ...) become leased work of their own; batches and
evaluations count hand-backs like jobs do

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

import time
import uuid

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("batches", "evaluations"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("handbacks", sa.Integer(), nullable=False, server_default="0"))
    exports = op.create_table(
        "exports",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("job_id", sa.String(64), sa.ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("owner_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("format", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("storage_key", sa.String(255), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("finished_at", sa.BigInteger(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("handbacks", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("worker", sa.String(255), nullable=True),
        sa.Column("heartbeat_at", sa.Float(), nullable=True),
        sa.Column("enqueued_at", sa.Float(), nullable=True),
    )
    op.create_index("ix_exports_job_id_format", "exports", ["job_id", "format"], unique=True)
    # Merged weights already made stay downloadable; a merge that was queued,
    # running or failed is simply asked for again.
    jobs = sa.table(
        "fine_tuning_jobs",
        sa.column("id", sa.String),
        sa.column("owner_id", sa.Integer),
        sa.column("merged_status", sa.String),
        sa.column("merged_key", sa.String),
    )
    connection = op.get_bind()
    ready = connection.execute(
        sa.select(jobs.c.id, jobs.c.owner_id, jobs.c.merged_key).where(
            jobs.c.merged_status == "ready", jobs.c.merged_key.is_not(None)
        )
    ).all()
    now = int(time.time())
    if ready:
        op.bulk_insert(
            exports,
            [
                {
                    "id": f"export_{uuid.uuid4().hex}",
                    "job_id": job_id,
                    "owner_id": owner_id,
                    "format": "merged",
                    "status": "ready",
                    "storage_key": key,
                    "created_at": now,
                    "finished_at": now,
                    "attempt": 0,
                    "handbacks": 0,
                }
                for job_id, owner_id, key in ready
            ],
        )
    with op.batch_alter_table("fine_tuning_jobs") as batch:
        batch.drop_column("merged_status")
        batch.drop_column("merged_key")
        batch.drop_column("merged_error")


def downgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs") as batch:
        batch.add_column(sa.Column("merged_status", sa.String(16), nullable=True))
        batch.add_column(sa.Column("merged_key", sa.String(255), nullable=True))
        batch.add_column(sa.Column("merged_error", sa.Text(), nullable=True))
    op.drop_index("ix_exports_job_id_format", table_name="exports")
    op.drop_table("exports")
    for table in ("batches", "evaluations"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("handbacks")
