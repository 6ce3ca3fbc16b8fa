"""Hard stops: cancellation and wall time end in-flight work, in every phase.

`StopGuard.check` is the one cancellation check: the runner calls it between steps (before
every rung and trial), and `StopGuard.watch` calls it every `poll_seconds` while work runs,
cancelling that work (and with it every LLM call in flight) as soon as the observer asks to
stop. `within` bounds one piece of work by a wall-clock deadline of the job's budget.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from prompttune.search._errors import BudgetExceeded, SearchCancelled
from prompttune.search._protocols import SearchObserver

log = structlog.get_logger(__name__)

T = TypeVar("T")


class StopGuard:
    """Cancellation and wall deadlines of one run.

    `elapsed` reads the job's budget clock; `max_wall_seconds` 0 means no wall limit.
    `poll_seconds` 0 turns the watchdog off (only the checks between steps remain).
    """

    def __init__(
        self,
        observer: SearchObserver,
        elapsed: Callable[[], float],
        max_wall_seconds: float,
        poll_seconds: float,
    ) -> None:
        self._observer = observer
        self._elapsed = elapsed
        self._max_wall = max_wall_seconds
        self._poll = poll_seconds
        self.cancelled = False

    def check(self) -> None:
        """Raises `SearchCancelled` once the observer asks to stop. An observer that fails
        to answer (its store is down) is logged and asked again at the next check."""
        if not self.cancelled:
            try:
                self.cancelled = self._observer.cancelled()
            except Exception:
                log.exception("search.stop_check.failed")
        if self.cancelled:
            raise SearchCancelled()

    async def watch(self, work: Awaitable[T]) -> T:
        """Runs `work`, cancelling it when `check` fails (polled every `poll_seconds`);
        then raises `SearchCancelled`."""
        task = asyncio.ensure_future(work)
        watchdog = asyncio.create_task(self._watchdog(task)) if self._poll > 0 else None
        try:
            return await task
        except asyncio.CancelledError:
            if self.cancelled and task.cancelled():
                raise SearchCancelled() from None
            raise
        finally:
            if watchdog is not None:
                watchdog.cancel()
            if not task.done():
                task.cancel()

    async def _watchdog(self, task: asyncio.Future[T]) -> None:
        while not task.done():
            await asyncio.sleep(self._poll)
            try:
                self.check()
            except SearchCancelled:
                task.cancel()
                return

    def remaining(self, share: float = 1.0) -> float | None:
        """Seconds until `share` of the wall budget is used (None: no wall limit)."""
        if not self._max_wall:
            return None
        return max(0.0, share * self._max_wall - self._elapsed())

    async def within(self, work: Awaitable[T], share: float = 1.0) -> T:
        """`work`, cancelled when `share` of the wall budget is used: then raises
        `BudgetExceeded("max_wall_seconds")`, like a call refused by the budget."""
        try:
            async with asyncio.timeout(self.remaining(share)):
                return await work
        except TimeoutError:
            raise BudgetExceeded("max_wall_seconds") from None
