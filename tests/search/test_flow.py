"""Process-wide flow control: token buckets, the cross-loop concurrency limit, outages."""

from __future__ import annotations

import asyncio
import threading

import pytest

from prompttune.contract import ChatMessage
from prompttune.search import (
    BudgetExceeded,
    CallBudget,
    ChatRequest,
    ConcurrencyLimit,
    EndpointLimits,
    EndpointPolicy,
    GatewayRegistry,
    LLMCallFailed,
    LLMGateway,
    Pricing,
    TokenBucket,
    UpstreamUnavailable,
)
from tests.fakes import FakeChatModel


class SteppingClock:
    """A thread-safe fake clock advancing `step` per reading; each thread sees its last reading."""

    def __init__(self, step: float) -> None:
        self._lock = threading.Lock()
        self._now = 0.0
        self._step = step
        self.seen = threading.local()

    def __call__(self) -> float:
        with self._lock:
            self._now += self._step
            self.seen.value = self._now
            return self._now


def test_token_bucket_never_exceeds_its_rate_across_threads() -> None:
    clock = SteppingClock(step=0.002)
    bucket = TokenBucket(rate_per_minute=600, clock=clock)  # 10 per second, burst 10
    starts: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(60):
            wait = bucket.take(1)
            with lock:
                starts.append(clock.seen.value + wait)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    starts.sort()
    assert len(starts) == 240
    for i in range(len(starts)):
        for j in range(i, len(starts), 7):
            allowed = bucket.capacity + 10.0 * (starts[j] - starts[i])
            assert j - i + 1 <= allowed + 1e-6
    # Not over-throttled either: 240 starts at 10/s take about 23 s after the burst.
    assert starts[-1] - starts[0] == pytest.approx((240 - bucket.capacity) / 10.0, rel=0.05)


def test_token_bucket_adjust_and_unlimited() -> None:
    now = [0.0]
    bucket = TokenBucket(rate_per_minute=60, clock=lambda: now[0])  # 1 per second, burst 1
    assert bucket.take(1) == 0.0
    assert bucket.take(3) == pytest.approx(3.0)
    bucket.adjust(3)  # the call used nothing after all
    assert bucket.take(1) == pytest.approx(1.0)
    assert TokenBucket(0).take(10**9) == 0.0


def test_concurrency_limit_holds_across_threads_and_loops() -> None:
    limit = ConcurrencyLimit(3)
    lock = threading.Lock()
    active, peak = [0], [0]

    async def call() -> None:
        async with limit.slot():
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            await asyncio.sleep(0.002)
            with lock:
                active[0] -= 1

    async def job() -> None:
        await asyncio.gather(*(call() for _ in range(25)))

    threads = [threading.Thread(target=asyncio.run, args=(job(),)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert peak[0] == 3 and limit.in_use == 0


async def test_cancelled_waiter_does_not_leak_a_slot() -> None:
    limit = ConcurrencyLimit(1)
    await limit.acquire()
    waiter = asyncio.create_task(limit.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    limit.release()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await asyncio.sleep(0)
    assert limit.in_use == 0
    await asyncio.wait_for(limit.acquire(), 1)
    assert limit.in_use == 1


def request(text: str = "hello") -> ChatRequest:
    return ChatRequest((ChatMessage("user", text),), 0.0, 8)


async def test_endpoint_down_longer_than_the_limit_raises_upstream_unavailable() -> None:
    now = [0.0]
    registry = GatewayRegistry(clock=lambda: now[0])
    down = [True]
    model = FakeChatModel(lambda r: "ok", fail_if=lambda r: down[0])
    policy = EndpointPolicy(EndpointLimits(max_outage_seconds=10))
    gateway = LLMGateway(model, CallBudget(), policy=policy, registry=registry)
    with pytest.raises(LLMCallFailed):
        await gateway.complete(request("a"), "task")
    now[0] = 5.0
    with pytest.raises(LLMCallFailed):
        await gateway.complete(request("b"), "task")
    down[0] = False
    await gateway.complete(request("c"), "task")  # a success resets the outage
    down[0] = True
    now[0] = 12.0
    with pytest.raises(LLMCallFailed):
        await gateway.complete(request("d"), "task")
    now[0] = 22.5
    with pytest.raises(UpstreamUnavailable, match=r"failed every call for 10\.5 s \(limit 10 s\)"):
        await gateway.complete(request("e"), "task")
    # Another job's gateway on the same endpoint sees the same outage.
    other = LLMGateway(model, CallBudget(), policy=policy, registry=registry)
    with pytest.raises(UpstreamUnavailable):
        await other.complete(request("f"), "task")


async def test_rejected_requests_are_not_an_outage() -> None:
    now = [0.0]
    registry = GatewayRegistry(clock=lambda: now[0])

    class Rejecting(FakeChatModel):
        async def complete(self, request: ChatRequest) -> object:  # type: ignore[override]
            raise LLMCallFailed("HTTP 400", transient=False)

    gateway = LLMGateway(
        Rejecting(lambda r: ""),
        CallBudget(),
        policy=EndpointPolicy(EndpointLimits(max_outage_seconds=1)),
        registry=registry,
    )
    for step in range(3):
        now[0] = 10.0 * step
        with pytest.raises(LLMCallFailed):
            await gateway.complete(request(str(step)), "task")


async def test_shared_concurrency_limit_spans_gateways_of_one_endpoint() -> None:
    registry = GatewayRegistry()
    model = FakeChatModel(lambda r: "ok", delay=0.01)
    policy = EndpointPolicy(EndpointLimits(max_concurrency=2))
    first = LLMGateway(model, CallBudget(), max_concurrency=10, policy=policy, registry=registry)
    second = LLMGateway(model, CallBudget(), max_concurrency=10, policy=policy, registry=registry)
    await asyncio.gather(
        *(
            gateway.complete(request(f"q{i}"), "task")
            for i in range(10)
            for gateway in (first, second)
        )
    )
    assert model.max_in_flight == 2


async def test_cost_budget_is_never_exceeded_by_concurrent_calls() -> None:
    model = FakeChatModel(lambda r: "a fairly long answer with many words in it", delay=0.005)
    budget = CallBudget(max_cost_usd=0.002)
    policy = EndpointPolicy(pricing=Pricing(10.0, 30.0))
    gateway = LLMGateway(model, budget, max_concurrency=50, policy=policy)
    outcomes = await asyncio.gather(
        *(gateway.complete(request(f"question number {i} " * 5), "task") for i in range(80)),
        return_exceptions=True,
    )
    exceeded = [o for o in outcomes if isinstance(o, BudgetExceeded)]
    assert exceeded and all(e.limit == "max_cost_usd" for e in exceeded)
    assert 0 < budget.cost_used <= 0.002
    usage = gateway.usage()
    assert usage.cost_usd == pytest.approx(budget.cost_used)
    assert usage.cost_usd == pytest.approx(
        (usage.prompt_tokens * 10.0 + usage.completion_tokens * 30.0) / 1e6
    )


async def test_a_jobs_own_rate_limit_slows_only_that_job() -> None:
    """Two jobs on one endpoint (one registry): the job whose spec asks for 60 requests a
    minute waits for its second call; the other job, without such a limit, does not wait,
    and neither does a third job after the slow one configured the endpoint."""
    registry = GatewayRegistry()
    model = FakeChatModel(lambda r: "ok")
    shared = EndpointLimits(requests_per_minute=60_000)
    slow_policy = EndpointPolicy(shared, job_limits=EndpointLimits(requests_per_minute=60))
    slow = LLMGateway(model, CallBudget(), policy=slow_policy, registry=registry)
    fast = LLMGateway(model, CallBudget(), policy=EndpointPolicy(shared), registry=registry)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.gather(*(fast.complete(request(f"f{i}"), "task") for i in range(20)))
    assert loop.time() - started < 0.3
    calls = asyncio.gather(*(slow.complete(request(f"s{i}"), "task") for i in range(2)))
    with pytest.raises(TimeoutError):  # 1 per second, burst 1: the second call waits
        await asyncio.wait_for(asyncio.shield(calls), timeout=0.3)
    later = LLMGateway(model, CallBudget(), policy=EndpointPolicy(shared), registry=registry)
    started = loop.time()
    await asyncio.gather(*(later.complete(request(f"l{i}"), "task") for i in range(20)))
    assert loop.time() - started < 0.3
    await calls


async def test_requests_per_minute_spaces_calls() -> None:
    registry = GatewayRegistry()
    model = FakeChatModel(lambda r: "ok")
    policy = EndpointPolicy(EndpointLimits(requests_per_minute=1200))  # 20/s, burst 20
    gateway = LLMGateway(model, CallBudget(), max_concurrency=64, policy=policy, registry=registry)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.gather(*(gateway.complete(request(f"q{i}"), "task") for i in range(30)))
    assert loop.time() - started >= 0.45  # 10 calls beyond the burst at 20 per second
