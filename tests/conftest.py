"""Session-wide fixtures: a PostgreSQL database created and dropped per test session."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest

POSTGRES_ADMIN_URL = os.environ.get(
    "PROMPTTUNE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh database on the PostgreSQL server at 127.0.0.1:5432, dropped afterwards."""
    psycopg = pytest.importorskip("psycopg")
    name = f"prompttune_test_{secrets.token_hex(4)}"
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}: {error}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    host_part = POSTGRES_ADMIN_URL.split("://", 1)[1].rsplit("/", 1)[0]
    yield f"postgresql+psycopg://{host_part}/{name}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
