"""distributed trials: job phase and parallelism, helper slots

Jobs written before this revision get phase "queued" until their next progress update and
parallelism 1, so no helper ever joins them.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pt_job_helpers",
        sa.Column("num", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("slot", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(length=80), nullable=True),
        sa.Column("lease_expires_at", sa.Float(), nullable=True),
        sa.Column("done", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("num"),
        sa.UniqueConstraint("job_id", "slot", name="uq_helper_slot"),
    )
    with op.batch_alter_table("pt_job_helpers", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_pt_job_helpers_job_id"), ["job_id"], unique=False)

    with op.batch_alter_table("pt_jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("phase", sa.String(length=32), server_default="queued", nullable=False)
        )
        batch_op.add_column(
            sa.Column("parallelism", sa.Integer(), server_default="1", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("pt_jobs", schema=None) as batch_op:
        batch_op.drop_column("parallelism")
        batch_op.drop_column("phase")

    with op.batch_alter_table("pt_job_helpers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pt_job_helpers_job_id"))

    op.drop_table("pt_job_helpers")
