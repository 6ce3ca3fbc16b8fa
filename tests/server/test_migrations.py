"""Alembic migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from prompttune.server._db import Base, create_db_engine


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_migrated_schema_matches_the_models(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'm.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    engine = create_db_engine(url)
    create_db_engine(url).dispose()  # a second start-up is a no-op
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"version_table": "pt_alembic_version"}
        )
        assert context.get_current_revision() is not None
        ours = [
            diff for diff in compare_metadata(context, Base.metadata) if not _is_foreign_table(diff)
        ]
    assert ours == []
    assert "pt_jobs" in sa.inspect(engine).get_table_names()
    engine.dispose()


def _is_foreign_table(diff: object) -> bool:
    """Optuna's own tables share the database; only ours are compared."""
    text = repr(diff)
    return "pt_" not in text
