"""Process-wide flow control per LLM endpoint: concurrency, request and token rates, outages.

Jobs run in worker threads, each with its own event loop, yet share one endpoint's limits. So
every primitive here is guarded by a `threading.Lock`, never blocks a loop, and never holds the
lock across an await: rate buckets return how long to wait (the caller awaits `asyncio.sleep`),
and the concurrency limit hands a freed slot to the oldest waiter on *its* loop with
`call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)

# A bucket holds this many seconds' worth of its rate: bursts stay short.
BURST_SECONDS = 1.0


@dataclass(frozen=True)
class EndpointLimits:
    """Limits of one endpoint shared by every job of the process; 0 means unlimited.

    `max_outage_seconds`: how long every call may keep failing (after its retries) before the
    gateway raises `UpstreamUnavailable`.
    """

    max_concurrency: int = 0
    requests_per_minute: float = 0.0
    tokens_per_minute: float = 0.0
    max_outage_seconds: float = 300.0


class TokenBucket:
    """A token bucket refilled at `rate_per_minute`, holding `BURST_SECONDS` of it.

    `take(amount)` always charges `amount` and returns the seconds the caller must wait before
    sending (0 when the bucket had enough); the level may go negative, which makes later callers
    wait in arrival order. So over any interval T the amount *started* never exceeds
    capacity + rate x T. Thread-safe; `clock` is injectable for tests.
    """

    def __init__(self, rate_per_minute: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._rate = 0.0
        self._capacity = 0.0
        self._level = 0.0
        self._updated = clock()
        self.set_rate(rate_per_minute)
        self._level = self._capacity  # start full

    @property
    def capacity(self) -> float:
        return self._capacity

    def set_rate(self, rate_per_minute: float) -> None:
        with self._lock:
            self._refill()
            self._rate = rate_per_minute / 60.0
            self._capacity = max(1.0, self._rate * BURST_SECONDS)
            self._level = min(self._level, self._capacity)

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(self._capacity, self._level + (now - self._updated) * self._rate)
        self._updated = now

    def take(self, amount: float) -> float:
        """Charge `amount`; returns the seconds to wait before using it."""
        with self._lock:
            if not self._rate:
                return 0.0
            self._refill()
            self._level -= amount
            return 0.0 if self._level >= 0 else -self._level / self._rate

    def adjust(self, amount: float) -> None:
        """Give back (positive) or charge more (negative) once the true amount is known."""
        with self._lock:
            if self._rate:
                self._refill()
                self._level = min(self._capacity, self._level + amount)


class ConcurrencyLimit:
    """At most `limit` holders at a time across threads and event loops (0 = unlimited).

    Waiters are served first come, first served. Cancellation while waiting never leaks a slot.
    """

    def __init__(self, limit: int = 0) -> None:
        self._lock = threading.Lock()
        self._limit = limit
        self._in_use = 0
        self._waiters: collections.deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]
        self._waiters = collections.deque()

    @property
    def in_use(self) -> int:
        with self._lock:
            return self._in_use

    def set_limit(self, limit: int) -> None:
        with self._lock:
            self._limit = limit
        self._wake()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self.acquire()
        try:
            yield
        finally:
            self.release()

    async def acquire(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            if not self._limit or (self._in_use < self._limit and not self._waiters):
                self._in_use += 1
                return
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append((loop, waiter))
        try:
            await waiter
        except asyncio.CancelledError:
            self._abandon(loop, waiter)
            raise

    def _abandon(self, loop: asyncio.AbstractEventLoop, waiter: asyncio.Future[None]) -> None:
        with self._lock:
            if (loop, waiter) in self._waiters:
                self._waiters.remove((loop, waiter))
                return
        if waiter.done() and not waiter.cancelled():
            self.release()  # the slot arrived together with the cancellation
        # Otherwise a hand-over is scheduled; `_grant` sees the cancelled waiter and releases.

    def release(self) -> None:
        with self._lock:
            self._in_use -= 1
        self._wake()

    def _wake(self) -> None:
        while True:
            with self._lock:
                if not self._waiters or (self._limit and self._in_use >= self._limit):
                    return
                loop, waiter = self._waiters.popleft()
                self._in_use += 1
            try:
                loop.call_soon_threadsafe(self._grant, waiter)
            except RuntimeError:  # that loop is closed: its waiter is gone
                with self._lock:
                    self._in_use -= 1

    def _grant(self, waiter: asyncio.Future[None]) -> None:
        if waiter.done():
            self.release()
        else:
            waiter.set_result(None)


class EndpointHealth:
    """Tracks how long an endpoint has failed every call; a success resets it. Thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._failing_since: float | None = None

    def record_success(self) -> None:
        with self._lock:
            self._failing_since = None

    def record_failure(self, call_started: float) -> float:
        """Record a failed call that started at `call_started`; returns seconds failing."""
        with self._lock:
            if self._failing_since is None or call_started < self._failing_since:
                self._failing_since = call_started
            return self._clock() - self._failing_since


class EndpointControl:
    """The shared limits of one endpoint: concurrency, request and token buckets, health."""

    def __init__(
        self, identity: str, limits: EndpointLimits, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.identity = identity
        self.clock = clock
        self.limits = limits
        self.concurrency = ConcurrencyLimit(limits.max_concurrency)
        self.requests = TokenBucket(limits.requests_per_minute, clock)
        self.tokens = TokenBucket(limits.tokens_per_minute, clock)
        self.health = EndpointHealth(clock)

    def configure(self, limits: EndpointLimits) -> None:
        if limits == self.limits:
            return
        log.info("gateway.endpoint.limits", endpoint=self.identity, **limits.__dict__)
        self.limits = limits
        self.concurrency.set_limit(limits.max_concurrency)
        self.requests.set_rate(limits.requests_per_minute)
        self.tokens.set_rate(limits.tokens_per_minute)

    async def admit(self, tokens: int) -> None:
        """Wait until the request and token buckets allow one call of about `tokens`."""
        wait = max(self.requests.take(1), self.tokens.take(tokens))
        if wait > 0:
            await asyncio.sleep(wait)


class JobRates:
    """One job's own request and token rates per endpoint: the limits its model spec asks
    for, applied to its calls only, on top of the endpoint's shared ones (so a caller's tight
    limit slows its own job, never another job on the same endpoint). One loop uses it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, tuple[TokenBucket, TokenBucket]] = {}

    def take(self, identity: str, limits: EndpointLimits, tokens: int) -> float:
        """Charges one call of about `tokens` to `identity`'s buckets (created at `limits`'
        rates on first use); returns the seconds to wait before sending."""
        buckets = self._buckets.get(identity)
        if buckets is None:
            buckets = (
                TokenBucket(limits.requests_per_minute, self._clock),
                TokenBucket(limits.tokens_per_minute, self._clock),
            )
            self._buckets[identity] = buckets
        requests, token_bucket = buckets
        return max(requests.take(1), token_bucket.take(tokens))


class GatewayRegistry:
    """Process-wide registry: one `EndpointControl` per endpoint identity. Thread-safe.

    The most recent `limits` given for an identity apply (a model spec may override the
    server's defaults); state such as in-flight calls and bucket levels is kept.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._endpoints: dict[str, EndpointControl] = {}

    def endpoint(self, identity: str, limits: EndpointLimits) -> EndpointControl:
        with self._lock:
            control = self._endpoints.get(identity)
            if control is None:
                control = EndpointControl(identity, limits, self._clock)
                self._endpoints[identity] = control
                return control
        control.configure(limits)
        return control
