"""Waking WatchJob streams when their job has a new event.

On PostgreSQL the store sends ``NOTIFY prompttune_events, '<job id>'`` in the transaction that
appends an event, and one listener connection per server process wakes every stream watching
that job: an idle watcher costs no queries. Other databases poll. Either way a watcher
re-reads the store after every wake-up or timeout, so a lost notification only delays an
event by the safety interval, never drops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections import defaultdict
from typing import Protocol

import psycopg
import structlog

from prompttune.server._store import EVENTS_CHANNEL

log = structlog.get_logger(__name__)


class Subscription(Protocol):
    """One watcher's wake-ups for one job. Subscribe before the first read of the store, so
    an event appended between a read and the wait still wakes it."""

    async def wait(self) -> None:
        """Returns when the job may have a new event since the last `wait`, or after the
        waker's interval."""
        ...

    def close(self) -> None: ...


class EventWaker(Protocol):
    """Lets a watcher sleep until its job may have a new event."""

    def subscribe(self, job_id: str) -> Subscription:
        """Call on the server's event loop."""
        ...

    def close(self) -> None: ...


class _Sleep:
    def __init__(self, seconds: float) -> None:
        self._seconds = seconds

    async def wait(self) -> None:
        await asyncio.sleep(self._seconds)

    def close(self) -> None:
        return None


class PollingWaker:
    """Sleeps a fixed interval: every watcher reads the store every `poll_seconds`."""

    def __init__(self, poll_seconds: float = 0.2) -> None:
        self._poll_seconds = poll_seconds

    def subscribe(self, job_id: str) -> Subscription:
        return _Sleep(self._poll_seconds)

    def close(self) -> None:
        return None


class _Flag:
    """A watcher's flag, set by notifications of its job and cleared by each `wait`."""

    def __init__(self, waiters: _Waiters, job_id: str, timeout: float) -> None:
        # Jittered, so that streams opened together do not re-read the store together.
        self._waiters, self._job_id = waiters, job_id
        self._timeout = timeout * random.uniform(0.75, 1.25)
        self.event = asyncio.Event()
        waiters.by_job[job_id].add(self.event)

    async def wait(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.event.wait(), self._timeout)
        self.event.clear()

    def close(self) -> None:
        waiters = self._waiters.by_job.get(self._job_id)
        if waiters is not None:
            waiters.discard(self.event)
            if not waiters:
                del self._waiters.by_job[self._job_id]


class _Waiters:
    """asyncio events of the watchers of each job, touched only on their event loop."""

    def __init__(self) -> None:
        self.by_job: defaultdict[str, set[asyncio.Event]] = defaultdict(set)

    def wake(self, job_id: str) -> None:
        for event in self.by_job.get(job_id, ()):
            event.set()

    def wake_all(self) -> None:
        for events in self.by_job.values():
            for event in events:
                event.set()


class PostgresNotifyWaker:
    """Wakes watchers on ``NOTIFY prompttune_events`` from a listener thread.

    `conninfo` is a libpq connection string (see `libpq_conninfo`). When the listener
    (re)connects it wakes every watcher, so events appended while it was away are read at
    once; `safety_seconds` (jittered by +-25% per stream) only bounds a watcher's sleep if a
    notification is lost some other way. At 1,000 idle watchers a 5 s interval cost about
    600 reads a second and doubled GetJob p99 (benchmarks/load_bench.py); 30 s costs 100.
    Thread-safe; subscriptions belong to one event loop (the server's).
    """

    def __init__(self, conninfo: str, safety_seconds: float = 30.0) -> None:
        self._conninfo = conninfo
        self._safety_seconds = safety_seconds
        self._waiters = _Waiters()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._listening = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="pg-notify", daemon=True)
        self._thread.start()

    def ready(self, timeout: float) -> bool:
        """True once the listener has subscribed (notifications sent after it are seen)."""
        return self._listening.wait(timeout)

    def subscribe(self, job_id: str) -> Subscription:
        self._loop = asyncio.get_running_loop()
        return _Flag(self._waiters, job_id, self._safety_seconds)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as connection:
                    connection.execute(f"LISTEN {EVENTS_CHANNEL}")
                    self._listening.set()
                    self._wake_everyone()
                    self._dispatch(connection)
            except psycopg.Error as error:
                log.warning("events.listen.failed", error=type(error).__name__)
                self._listening.clear()
                self._stop.wait(1.0)

    def _wake_everyone(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._waiters.wake_all)

    def _dispatch(self, connection: psycopg.Connection[tuple[object, ...]]) -> None:
        while not self._stop.is_set():
            for notify in connection.notifies(timeout=0.5):
                loop = self._loop
                if loop is not None and not loop.is_closed():
                    loop.call_soon_threadsafe(self._waiters.wake, notify.payload)


def libpq_conninfo(db_url: str) -> str:
    """The libpq form of a SQLAlchemy PostgreSQL URL (``postgresql+psycopg://...``)."""
    from sqlalchemy.engine import make_url

    url = make_url(db_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def waker_for(db_url: str, notify: bool = True, poll_seconds: float = 0.2) -> EventWaker:
    """LISTEN/NOTIFY on PostgreSQL (unless `notify` is off), polling every `poll_seconds`
    elsewhere."""
    if notify and db_url.startswith("postgresql"):
        return PostgresNotifyWaker(libpq_conninfo(db_url))
    return PollingWaker(poll_seconds)
