"""Hard stops: cancellation and wall time end in-flight work, in every phase.

`StopGuard.check` is the one cancellation check: the runner calls it between steps (before
every rung and trial), and `StopGuard.watch` calls it every `poll_seconds` while work runs,
cancelling that work (and with it every LLM call in flight) as soon as the observer asks to
stop. `within` bounds one piece of work by a wall-clock deadline of the job's budget.
`Pace` measures the task model's wall time per call, so the search phase can stop early
enough for the final phase (promotion, selection, test) to fit in what is left.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog

from prompttune.search._errors import BudgetExceeded, SearchCancelled
from prompttune.search._protocols import SearchObserver

log = structlog.get_logger(__name__)

T = TypeVar("T")

# The final phase's wall time is sized as its calls at the search's measured pace, with
# this margin (its batches are larger, but its prompts may be longer).
FINAL_PHASE_MARGIN = 1.25


@dataclass
class Pace:
    """Wall seconds per task-model call sent, measured on the search's own scoring (calls
    answered from the response cache cost no time and are not counted)."""

    seconds: float = 0.0
    calls: int = 0

    def add(self, seconds: float, calls: int) -> None:
        if calls > 0:
            self.seconds += max(0.0, seconds)
            self.calls += calls

    def seconds_for(self, calls: int) -> float:
        """Wall seconds `calls` are expected to take, margin included (0 before any call
        was measured)."""
        if not self.calls:
            return 0.0
        return FINAL_PHASE_MARGIN * calls * self.seconds / self.calls


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

    def elapsed(self) -> float:
        """Seconds of the job's budget clock used so far."""
        return self._elapsed()

    def remaining(self, share: float = 1.0, keep: float = 0.0) -> float | None:
        """Seconds until `share` of the wall budget is used, or until only `keep` seconds of
        it are left, whichever comes first (None: no wall limit)."""
        if not self._max_wall:
            return None
        deadline = min(share * self._max_wall, self._max_wall - keep)
        return max(0.0, deadline - self._elapsed())

    async def within(self, work: Awaitable[T], share: float = 1.0, keep: float = 0.0) -> T:
        """`work`, cancelled at the deadline of `remaining(share, keep)`: then raises
        `BudgetExceeded("max_wall_seconds")`, like a call refused by the budget."""
        try:
            async with asyncio.timeout(self.remaining(share, keep)):
                return await work
        except TimeoutError:
            raise BudgetExceeded("max_wall_seconds") from None
