"""Schema migrations with Alembic. The service upgrades its database to the latest revision
at start-up; several processes starting at once are serialised by the database's own locks."""

from __future__ import annotations

from pathlib import Path

import optuna
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return config


def upgrade(engine: Engine) -> None:
    """Brings our schema and Optuna's to the latest revision. Idempotent."""
    url = engine.url.render_as_string(hide_password=False)
    postgres = engine.dialect.name == "postgresql"
    with engine.begin() as connection:
        if postgres:
            # One migrator at a time when several servers and workers start together.
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7318220)")
        config = alembic_config(engine)
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
        if postgres:
            # Optuna creates its tables on first use; doing it under the lock keeps workers
            # that start together from racing on that DDL.
            optuna.storages.RDBStorage(url)
    if not postgres:
        optuna.storages.RDBStorage(url)  # SQLite serialises writers itself
