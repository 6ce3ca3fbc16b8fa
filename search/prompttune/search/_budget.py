"""The hard budget of one job: LLM calls, tokens, cost and wall time, shared by its gateways.

Every call reserves before it is sent and settles afterwards, under one lock, so concurrent
calls can never together overshoot a cap. Cache hits never touch the budget.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from prompttune.search._errors import BudgetExceeded


@dataclass(frozen=True)
class Reservation:
    """What one in-flight call holds: one call and upper estimates of its tokens and cost."""

    tokens: int
    cost_usd: float = 0.0


def estimate_call_tokens(prompt_chars: int, max_tokens: int) -> int:
    """Conservative token estimate of a call: prompt characters / 3 plus the answer cap."""
    return prompt_chars // 3 + 1 + max_tokens


class CallBudget:
    """Caps on LLM calls, tokens, cost (USD) and wall seconds; a cap of 0 means unlimited.

    Thread-safe and safe to share between asyncio tasks (no awaits inside). Token settlement
    uses the usage the endpoint reports; the reservation uses a conservative estimate.
    """

    def __init__(
        self,
        max_llm_calls: int = 0,
        max_tokens: int = 0,
        max_wall_seconds: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_cost_usd: float = 0.0,
    ) -> None:
        self.max_llm_calls = max_llm_calls
        self.max_cost_usd = max_cost_usd
        self.max_tokens = max_tokens
        self.max_wall_seconds = max_wall_seconds
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()
        self._calls = 0
        self._tokens = 0
        self._pending_calls = 0
        self._pending_tokens = 0
        self._held_calls = 0
        self._cost = 0.0
        self._pending_cost = 0.0

    @property
    def calls_used(self) -> int:
        with self._lock:
            return self._calls

    @property
    def tokens_used(self) -> int:
        with self._lock:
            return self._tokens

    @property
    def cost_used(self) -> float:
        with self._lock:
            return self._cost

    def elapsed(self) -> float:
        return self._clock() - self._started

    def calls_available(self) -> int | None:
        """Calls that may still be reserved (None when unlimited)."""
        if not self.max_llm_calls:
            return None
        with self._lock:
            busy = self._calls + self._pending_calls + self._held_calls
            return max(0, self.max_llm_calls - busy)

    def reserve(self, estimated_tokens: int, estimated_cost: float = 0.0) -> Reservation:
        """Reserve one call; raises `BudgetExceeded` naming the cap it would break.

        `estimated_cost` (USD) must be an upper bound of the call's cost for the cost cap to
        hold; `LLMGateway` derives it from the token estimate and the model's prices.
        """
        with self._lock:
            if self.max_wall_seconds and self.elapsed() >= self.max_wall_seconds:
                raise BudgetExceeded("max_wall_seconds")
            busy = self._calls + self._pending_calls + self._held_calls
            if self.max_llm_calls and busy + 1 > self.max_llm_calls:
                raise BudgetExceeded("max_llm_calls")
            spent = self._tokens + self._pending_tokens
            if self.max_tokens and spent + estimated_tokens > self.max_tokens:
                raise BudgetExceeded("max_tokens")
            cost = self._cost + self._pending_cost
            if self.max_cost_usd and cost + estimated_cost > self.max_cost_usd:
                raise BudgetExceeded("max_cost_usd")
            self._pending_calls += 1
            self._pending_tokens += estimated_tokens
            self._pending_cost += estimated_cost
            return Reservation(estimated_tokens, estimated_cost)

    def settle(self, reservation: Reservation, tokens: int, cost_usd: float = 0.0) -> None:
        """Turn a reservation into one spent call with the actual `tokens` and `cost_usd`."""
        with self._lock:
            self._pending_calls -= 1
            self._pending_tokens -= reservation.tokens
            self._pending_cost -= reservation.cost_usd
            self._calls += 1
            self._tokens += tokens
            self._cost += cost_usd

    def release(self, reservation: Reservation) -> None:
        """Give a reservation back unspent (the call was never sent)."""
        with self._lock:
            self._pending_calls -= 1
            self._pending_tokens -= reservation.tokens
            self._pending_cost -= reservation.cost_usd

    def carry_over(self, calls: int, tokens: int, cost_usd: float = 0.0) -> None:
        """Counts usage an earlier process spent on this job, so a resumed job keeps its caps."""
        with self._lock:
            self._calls += calls
            self._tokens += tokens
            self._cost += cost_usd

    def hold_calls(self, calls: int) -> None:
        """Set aside `calls` for a later phase; `reserve` cannot use them until released."""
        with self._lock:
            limit = self.max_llm_calls - self._calls if self.max_llm_calls else calls
            self._held_calls = max(0, min(calls, limit))

    def release_held_calls(self) -> None:
        with self._lock:
            self._held_calls = 0


@dataclass(frozen=True)
class BudgetCaps:
    """The caps of one `CallBudget` (0 = unlimited)."""

    max_llm_calls: int
    max_tokens: int
    max_cost_usd: float


def shared_caps(total: BudgetCaps, held_calls: int, parts: int, index: int) -> BudgetCaps:
    """The caps of runner `index` of a search run by `parts` workers at once.

    The calls left after the final-phase reservation (`held_calls`), and all tokens and
    cost, are split into `parts` equal shares, rounded down. Helpers (index >= 1) get one
    share each; the primary (index 0) gets the rest: its share plus the reservation plus the
    rounding. The caps sum to at most the job's caps and each `CallBudget` enforces its own, so
    the workers together can never exceed the job's budget. An unlimited cap stays unlimited.
    """
    calls = max(0, total.max_llm_calls - held_calls) // parts
    tokens = total.max_tokens // parts
    cost = total.max_cost_usd / parts
    if index == 0:
        return BudgetCaps(
            total.max_llm_calls - (parts - 1) * calls if total.max_llm_calls else 0,
            total.max_tokens - (parts - 1) * tokens if total.max_tokens else 0,
            total.max_cost_usd - (parts - 1) * cost if total.max_cost_usd else 0.0,
        )
    return BudgetCaps(calls, tokens, cost)


def share_is_empty(total: BudgetCaps, share: BudgetCaps) -> bool:
    """True when a limited cap's share rounded down to 0 (which a `CallBudget` would read as
    unlimited): that helper must not run."""
    return bool(
        (total.max_llm_calls and not share.max_llm_calls)
        or (total.max_tokens and not share.max_tokens)
        or (total.max_cost_usd and not share.max_cost_usd)
    )
