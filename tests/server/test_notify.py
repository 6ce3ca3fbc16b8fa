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
    assert waker.ready(timeout=10)
    first, second, other = (waker.subscribe(job) for job in ("job-a", "job-a", "job-b"))
    try:
        started = time.monotonic()
        unrelated = asyncio.ensure_future(other.wait())
        await asyncio.to_thread(_notify, "job-a")
        await asyncio.wait_for(asyncio.gather(first.wait(), second.wait()), timeout=5)

        assert time.monotonic() - started < 3
        assert not unrelated.done()
        unrelated.cancel()
    finally:
        for subscription in (first, second, other):
            subscription.close()
        waker.close()


@pytest.mark.postgres
async def test_a_notify_before_the_wait_is_not_lost() -> None:
    waker = PostgresNotifyWaker(libpq_conninfo(PG_URL), safety_seconds=10.0)
    assert waker.ready(timeout=10)
    subscription = waker.subscribe("job-early")
    try:
        await asyncio.to_thread(_notify, "job-early")
        await asyncio.sleep(0.5)  # the notify arrives while nobody waits
        started = time.monotonic()

        await asyncio.wait_for(subscription.wait(), timeout=5)

        assert time.monotonic() - started < 0.5
    finally:
        subscription.close()
        waker.close()


@pytest.mark.postgres
async def test_without_a_notify_a_watcher_wakes_after_the_safety_interval() -> None:
    waker = PostgresNotifyWaker(libpq_conninfo(PG_URL), safety_seconds=0.3)
    assert waker.ready(timeout=10)
    subscription = waker.subscribe("job-quiet")
    try:
        started = time.monotonic()
        await subscription.wait()

        assert 0.2 <= time.monotonic() - started < 2  # 0.3 s, jittered by 25%
    finally:
        subscription.close()
        waker.close()


async def test_polling_sleeps_its_interval() -> None:
    subscription = PollingWaker(poll_seconds=0.05).subscribe("job-x")
    started = time.monotonic()

    await subscription.wait()

    assert 0.04 <= time.monotonic() - started < 1


def test_a_sqlalchemy_url_becomes_a_libpq_url() -> None:
    url = "postgresql+psycopg://user:pw@db:5433/x"
    assert libpq_conninfo(url) == "postgresql://user:pw@db:5433/x"


@pytest.mark.postgres
async def test_a_listener_that_connects_wakes_every_watcher() -> None:
    """Events appended while the listener was away are read as soon as it is back."""
    # The safety interval (30 s, jittered by 25%) is far beyond the wait, so only the
    # listener's (re)connection can wake the watcher, even on a loaded machine.
    waker = PostgresNotifyWaker(libpq_conninfo(PG_URL), safety_seconds=30.0)
    subscription = waker.subscribe("job-during-outage")  # before the listener is connected
    try:
        started = time.monotonic()
        await asyncio.wait_for(subscription.wait(), timeout=15)

        assert time.monotonic() - started < 15
    finally:
        subscription.close()
        waker.close()
