"""initial schema

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pt_job_events",
        sa.Column("num", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("num"),
        sa.UniqueConstraint("job_id", "sequence", name="uq_event_sequence"),
    )
    with op.batch_alter_table("pt_job_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_pt_job_events_job_id"), ["job_id"], unique=False)

    op.create_table(
        "pt_jobs",
        sa.Column("num", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("request", sa.LargeBinary(), nullable=False),
        sa.Column("progress", sa.LargeBinary(), nullable=False),
        sa.Column("result", sa.LargeBinary(), nullable=True),
        sa.Column("estimate", sa.LargeBinary(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("lease_owner", sa.String(length=80), nullable=True),
        sa.Column("lease_expires_at", sa.Float(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("num"),
        sa.UniqueConstraint("tenant", "request_id", name="uq_job_tenant_request"),
    )
    with op.batch_alter_table("pt_jobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_pt_jobs_id"), ["id"], unique=True)
        batch_op.create_index(batch_op.f("ix_pt_jobs_state"), ["state"], unique=False)
        batch_op.create_index(batch_op.f("ix_pt_jobs_tenant"), ["tenant"], unique=False)

    op.create_table(
        "pt_response_cache",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )


def downgrade() -> None:
    op.drop_table("pt_response_cache")
    with op.batch_alter_table("pt_jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pt_jobs_tenant"))
        batch_op.drop_index(batch_op.f("ix_pt_jobs_state"))
        batch_op.drop_index(batch_op.f("ix_pt_jobs_id"))

    op.drop_table("pt_jobs")
    with op.batch_alter_table("pt_job_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pt_job_events_job_id"))

    op.drop_table("pt_job_events")
