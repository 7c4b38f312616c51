"""model shares: an owner lets named users (or every user of the deployment)
use a fine-tune read-only

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_shares",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("job_id", sa.String(64), sa.ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("owner_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        # NULL: every user of the deployment.
        sa.Column("grantee_user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_model_shares_job_id_grantee", "model_shares", ["job_id", "grantee_user_id"], unique=True)
    # NULLs are distinct in a unique index, so "everyone" needs its own.
    op.create_index(
        "ix_model_shares_job_id_everyone", "model_shares", ["job_id"], unique=True,
        sqlite_where=sa.text("grantee_user_id IS NULL"), postgresql_where=sa.text("grantee_user_id IS NULL"),
    )
    op.create_index("ix_model_shares_grantee_user_id", "model_shares", ["grantee_user_id"])


def downgrade() -> None:
    op.drop_index("ix_model_shares_grantee_user_id", table_name="model_shares")
    op.drop_index("ix_model_shares_job_id_everyone", table_name="model_shares")
    op.drop_index("ix_model_shares_job_id_grantee", table_name="model_shares")
    op.drop_table("model_shares")
