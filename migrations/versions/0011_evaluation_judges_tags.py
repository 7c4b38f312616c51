"""evaluations: judges, ratings, pairwise records and tag counts; users' own
per-item tags

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_COLUMNS = ("judges", "ratings", "pairwise", "tag_counts", "user_tag_counts")


def upgrade() -> None:
    with op.batch_alter_table("evaluations") as batch:
        for name in _COLUMNS:
            batch.add_column(sa.Column(name, sa.JSON(), nullable=True))
    op.create_table(
        "evaluation_item_tags",
        sa.Column("evaluation_id", sa.String(64), sa.ForeignKey("evaluations.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("item", sa.Integer(), primary_key=True),
        sa.Column("model", sa.String(255), primary_key=True),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("evaluation_item_tags")
    with op.batch_alter_table("evaluations") as batch:
        for name in reversed(_COLUMNS):
            batch.drop_column(name)
