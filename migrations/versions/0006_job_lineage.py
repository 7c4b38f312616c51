"""jobs: pause requests (OpenAI's pause/resume) and lineage (a job whose base
is an earlier fine-tune or one of its checkpoints)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs") as table:
        # Set by POST .../pause while a worker runs the job; the worker saves
        # its step, hands the job back and it becomes "paused".
        table.add_column(sa.Column("pause_requested", sa.Boolean(), nullable=False, server_default=sa.false()))
        # The fine-tune (or checkpoint) this job continues: the model name the
        # user gave, its job and, for a checkpoint, its step.
        table.add_column(sa.Column("parent_model", sa.String(512), nullable=True))
        table.add_column(sa.Column("parent_job_id", sa.String(64), nullable=True))
        table.add_column(sa.Column("parent_checkpoint_step", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs") as table:
        table.drop_column("parent_checkpoint_step")
        table.drop_column("parent_job_id")
        table.drop_column("parent_model")
        table.drop_column("pause_requested")
