"""response cache keeps the answers' first-token log probabilities

Entries written before this revision have none (""), which is what they were asked for: a
request that asks for log probabilities has a different cache key.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("pt_response_cache", schema=None) as batch_op:
        batch_op.add_column(sa.Column("top_logprobs", sa.Text(), server_default="", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("pt_response_cache", schema=None) as batch_op:
        batch_op.drop_column("top_logprobs")
