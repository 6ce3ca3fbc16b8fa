"""WatchJob wake-ups: NOTIFY on PostgreSQL wakes exactly the watchers of that job."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from prompttune.server._notify import PollingWaker, PostgresNotifyWaker, libpq_conninfo

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _notify(job_id: str) -> None:
    with psycopg.connect(libpq_conninfo(PG_URL), autocommit=True) as connection:
        connection.execute("SELECT pg_notify('prompttune_events', %s)", (job_id,))


@pytest.mark.postgres
async def test_a_notify_wakes_the_watchers_of_its_job_long_before_the_safety_interval() -> None:
    waker = PostgresNotifyWaker(libpq_conninfo(PG_URL), safety_seconds=10.0)
    try:
        assert waker.ready(timeout=10)
        started = time.monotonic()
        watched = asyncio.gather(waker.wait("job-a"), waker.wait("job-a"))
        other = asyncio.ensure_future(waker.wait("job-b"))
        await asyncio.sleep(0.1)
        await asyncio.to_thread(_notify, "job-a")
        await asyncio.wait_for(watched, timeout=5)

        assert time.monotonic() - started < 3
        assert not other.done()
        other.cancel()
    finally:
        waker.close()


@pytest.mark.postgres
async def test_without_a_notify_a_watcher_wakes_after_the_safety_interval() -> None:
    waker = PostgresNotifyWaker(libpq_conninfo(PG_URL), safety_seconds=0.3)
    try:
        started = time.monotonic()
        await waker.wait("job-quiet")

        assert 0.25 <= time.monotonic() - started < 2
    finally:
        waker.close()


async def test_polling_sleeps_its_interval() -> None:
    waker = PollingWaker(poll_seconds=0.05)
    started = time.monotonic()

    await waker.wait("job-x")

    assert 0.04 <= time.monotonic() - started < 1
    assert waker.wait_seconds == 0.05


def test_a_sqlalchemy_url_becomes_a_libpq_url() -> None:
    assert (
        libpq_conninfo("postgresql+psycopg://user:pw@db:5433/x") == "postgresql://user:pw@db:5433/x"
    )
