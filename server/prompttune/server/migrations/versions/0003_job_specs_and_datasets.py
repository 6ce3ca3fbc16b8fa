"""job specs as contract documents, datasets in their own table, claim attempts

Each existing job's serialised CreateJobRequest is split: task, model, search and request_id
become the `spec` JSON document, the dataset moves to pt_job_datasets, and the `request`
column is dropped. A request that no longer decodes keeps an empty spec; such a job is failed
by the first worker that claims it.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import hashlib
import json

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pt_job_datasets",
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("job_id"),
    )
    with op.batch_alter_table("pt_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("spec", sa.Text(), server_default="", nullable=False))
        batch_op.add_column(
            sa.Column("body_digest", sa.String(length=64), server_default="", nullable=False)
        )
        batch_op.add_column(sa.Column("attempts", sa.Integer(), server_default="0", nullable=False))
    _move_requests()
    with op.batch_alter_table("pt_jobs", schema=None) as batch_op:
        batch_op.drop_column("request")


def _move_requests() -> None:
    from prompttune.contract import (
        ContractError,
        ModelSpec,
        SearchSpec,
        TaskSpec,
        to_document,
        wire,
    )
    from prompttune.v1 import optimizer_pb2 as pb

    connection = op.get_bind()
    jobs = sa.table(
        "pt_jobs",
        sa.column("id", sa.String),
        sa.column("request", sa.LargeBinary),
        sa.column("spec", sa.Text),
        sa.column("body_digest", sa.String),
    )
    datasets = sa.table(
        "pt_job_datasets", sa.column("job_id", sa.String), sa.column("payload", sa.LargeBinary)
    )
    for job_id, payload in connection.execute(sa.select(jobs.c.id, jobs.c.request)).all():
        request = pb.CreateJobRequest.FromString(payload)
        try:
            spec = {
                "task": to_document(wire.from_message(TaskSpec, request.task, "task")),
                "model": to_document(wire.from_message(ModelSpec, request.model, "model")),
                "search": to_document(wire.from_message(SearchSpec, request.search, "search")),
                "request_id": request.request_id,
            }
            document = json.dumps(spec, sort_keys=True)
        except (ContractError, ValueError):
            document = ""
        dataset = request.dataset.SerializeToString(deterministic=True)
        connection.execute(datasets.insert().values(job_id=job_id, payload=dataset))
        digest = hashlib.sha256(document.encode() + dataset).hexdigest()
        connection.execute(
            jobs.update().where(jobs.c.id == job_id).values(spec=document, body_digest=digest)
        )


def downgrade() -> None:
    # Jobs keep their specs only in the new form; a downgrade loses the stored requests.
    with op.batch_alter_table("pt_jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("request", sa.LargeBinary(), server_default="", nullable=False)
        )
        batch_op.drop_column("attempts")
        batch_op.drop_column("body_digest")
        batch_op.drop_column("spec")
    op.drop_table("pt_job_datasets")
