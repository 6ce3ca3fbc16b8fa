"""Database schema and engine set-up. One database holds jobs, events, the response cache and
the Optuna studies; SQLite by default, any SQLAlchemy URL otherwise."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class JobRow(Base):
    __tablename__ = "pt_jobs"
    # Idempotency keys are per tenant: two tenants may use the same request_id.
    __table_args__ = (sa.UniqueConstraint("tenant", "request_id", name="uq_job_tenant_request"),)

    num: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(sa.String(40), unique=True, index=True)
    tenant: Mapped[str] = mapped_column(sa.String(64), index=True, default="default")
    request_id: Mapped[str | None] = mapped_column(sa.String(128), nullable=True)
    state: Mapped[int] = mapped_column(sa.Integer, index=True)
    # The validated spec without its dataset (task, model, search, request_id): a JSON
    # document of prompttune.contract types. The dataset lives in pt_job_datasets.
    spec: Mapped[str] = mapped_column(sa.Text, default="", server_default="")
    # SHA-256 of the validated spec with its dataset: a reused request_id must match it.
    body_digest: Mapped[str] = mapped_column(sa.String(64), default="", server_default="")
    # How often a worker claimed the job; bounded by Limits.max_job_attempts.
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    # Serialised prompttune.v1.Progress / JobResult / Estimate.
    progress: Mapped[bytes] = mapped_column(sa.LargeBinary, default=b"")
    # The progress phase, readable without parsing `progress` (helpers join while "searching").
    phase: Mapped[str] = mapped_column(sa.String(32), default="queued", server_default="queued")
    # SearchSpec.parallelism: workers that may run this job's trials at once.
    parallelism: Mapped[int] = mapped_column(sa.Integer, default=1, server_default="1")
    result: Mapped[bytes | None] = mapped_column(sa.LargeBinary, nullable=True)
    estimate: Mapped[bytes] = mapped_column(sa.LargeBinary, default=b"")
    error: Mapped[str] = mapped_column(sa.Text, default="")
    cancel_requested: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    lease_owner: Mapped[str | None] = mapped_column(sa.String(80), nullable=True)
    lease_expires_at: Mapped[float | None] = mapped_column(sa.Float, nullable=True)
    created_at: Mapped[float] = mapped_column(sa.Float)
    updated_at: Mapped[float] = mapped_column(sa.Float)


class DatasetRow(Base):
    """A job's validated dataset (explicit train/validation/test splits), apart from the job
    row so that reading jobs never reads datasets."""

    __tablename__ = "pt_job_datasets"

    job_id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    # Serialised prompttune.v1.Dataset.
    payload: Mapped[bytes] = mapped_column(sa.LargeBinary)


class EventRow(Base):
    __tablename__ = "pt_job_events"
    __table_args__ = (sa.UniqueConstraint("job_id", "sequence", name="uq_event_sequence"),)

    num: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(sa.String(40), index=True)
    sequence: Mapped[int] = mapped_column(sa.Integer)
    # Serialised prompttune.v1.JobEvent.
    payload: Mapped[bytes] = mapped_column(sa.LargeBinary)


class HelperSlotRow(Base):
    """One helper place of a job with parallelism p > 1 (slots 1..p-1, created with the job).

    Free while `owner` is None or its lease expired; `done` once a helper finished its part,
    so the slot is not taken again for nothing.
    """

    __tablename__ = "pt_job_helpers"
    __table_args__ = (sa.UniqueConstraint("job_id", "slot", name="uq_helper_slot"),)

    num: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(sa.String(40), index=True)
    slot: Mapped[int] = mapped_column(sa.Integer)
    owner: Mapped[str | None] = mapped_column(sa.String(80), nullable=True)
    lease_expires_at: Mapped[float | None] = mapped_column(sa.Float, nullable=True)
    done: Mapped[bool] = mapped_column(sa.Boolean, default=False)


class CacheRow(Base):
    __tablename__ = "pt_response_cache"

    key: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    text: Mapped[str] = mapped_column(sa.Text)
    prompt_tokens: Mapped[int] = mapped_column(sa.Integer)
    completion_tokens: Mapped[int] = mapped_column(sa.Integer)
    created_at: Mapped[float] = mapped_column(sa.Float)
    # The answer's first-token alternatives: a JSON list of [token, logprob]; "" for none.
    top_logprobs: Mapped[str] = mapped_column(sa.Text, default="", server_default="")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the API read while a worker writes; the busy timeout absorbs short lock waits.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def create_db_engine(url: str) -> Engine:
    """Creates the engine and migrates the schema to the latest revision (idempotent).
    SQLite files get WAL mode."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    from prompttune.server._migrate import upgrade

    upgrade(engine)
    return engine
