"""user metadata: the NUL character (U+0000) taken out of keys and values

Requests with U+0000 in metadata are refused since this revision's release.
Rows stored before then break, on PostgreSQL, every query that reads metadata
as text (json keeps the escape, ->> cannot return it): the owner's moves list
answered 500. Taking the character out is the smallest change that makes them
readable; nothing else in the metadata changes.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_TABLES = ("fine_tuning_jobs", "evaluations", "batches")
_NUL = "\x00"


def _without_nul(metadata):
    if not isinstance(metadata, dict):
        return metadata
    return {str(key).replace(_NUL, ""): value.replace(_NUL, "") if isinstance(value, str) else value
            for key, value in metadata.items()}


def upgrade() -> None:
    connection = op.get_bind()
    for name in _TABLES:
        table = sa.table(name, sa.column("id", sa.String), sa.column("user_metadata", sa.JSON))
        # The stored text holds the character as the escape \u0000 (both
        # databases keep JSON as text): only such rows are read and rewritten.
        stored = sa.cast(table.c.user_metadata, sa.Text)
        rows = connection.execute(
            sa.select(table.c.id, table.c.user_metadata).where(stored.contains("\\u0000", autoescape=True))
        ).all()
        for row_id, metadata in rows:
            cleaned = _without_nul(metadata)
            if cleaned != metadata:
                connection.execute(sa.update(table).where(table.c.id == row_id).values(user_metadata=cleaned))


def downgrade() -> None:
    pass  # the character is gone; nothing to put back
