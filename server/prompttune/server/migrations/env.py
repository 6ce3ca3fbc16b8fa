"""Alembic environment: runs migrations on the connection handed over by `_migrate.upgrade`."""

from __future__ import annotations

from alembic import context

from prompttune.server._db import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table="pt_alembic_version",
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
