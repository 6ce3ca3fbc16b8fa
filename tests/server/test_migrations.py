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


def test_upgrade_moves_stored_requests_into_specs_and_a_dataset_table(tmp_path: Path) -> None:
    from alembic import command

    from prompttune.contract import JobState, Metric
    from prompttune.server import SqlJobStore
    from prompttune.server._migrate import alembic_config
    from prompttune.v1 import optimizer_pb2 as pb

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        config = alembic_config(engine)
        config.attributes["connection"] = connection
        command.upgrade(config, "0002")
    old_request = pb.CreateJobRequest(
        task=pb.TaskSpec(description="Classify.", metric=pb.METRIC_LABEL_CHOICE, labels=["a", "b"]),
        dataset=pb.Dataset(validation=[pb.Example(id="v1", inputs={"input": "x"}, output="a")]),
        search=pb.SearchSpec(max_demos=2),
        request_id="old-key",
    )
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO pt_jobs (id, tenant, request_id, state, request, progress, phase, "
                "parallelism, estimate, error, cancel_requested, created_at, updated_at) VALUES "
                "('job-old', 'default', 'old-key', 1, :request, '', 'queued', 1, '', '', 0, 1, 1)"
            ),
            {"request": old_request.SerializeToString()},
        )
    engine.dispose()
    store = SqlJobStore(create_db_engine(url))
    job = store.get("job-old")
    assert job.state is JobState.QUEUED and job.request_id == "old-key"
    assert job.task.metric is Metric.LABEL_CHOICE and job.task.labels == ("a", "b")
    assert job.search.max_demos == 2
    spec = store.job_spec("job-old")
    assert [example.id for example in spec.dataset.validation] == ["v1"]
    assert "request" not in {c["name"] for c in sa.inspect(store._engine).get_columns("pt_jobs")}
