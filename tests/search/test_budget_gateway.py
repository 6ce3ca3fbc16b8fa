from __future__ import annotations

import asyncio

import pytest

from prompttune.contract import ChatMessage
from prompttune.search import BudgetExceeded, CallBudget, ChatRequest, LLMCallFailed, LLMGateway
from tests.fakes import FakeChatModel, InMemoryResponseCache


def request(text: str = "hello", max_tokens: int = 8) -> ChatRequest:
    return ChatRequest((ChatMessage("user", text),), 0.0, max_tokens)


def test_budget_reserve_settle_release() -> None:
    budget = CallBudget(max_llm_calls=2)
    first = budget.reserve(10)
    second = budget.reserve(10)
    with pytest.raises(BudgetExceeded) as info:
        budget.reserve(10)
    assert info.value.limit == "max_llm_calls"
    budget.release(first)
    budget.settle(second, 7)
    assert budget.calls_used == 1 and budget.tokens_used == 7
    budget.reserve(1)


def test_budget_tokens_and_wall_time() -> None:
    now = [0.0]
    budget = CallBudget(max_tokens=100, max_wall_seconds=5.0, clock=lambda: now[0])
    budget.settle(budget.reserve(60), 60)
    with pytest.raises(BudgetExceeded, match="max_tokens"):
        budget.reserve(41)
    now[0] = 5.0
    with pytest.raises(BudgetExceeded, match="max_wall_seconds"):
        budget.reserve(1)


def test_held_calls_are_not_available_until_released() -> None:
    budget = CallBudget(max_llm_calls=3)
    budget.hold_calls(2)
    budget.settle(budget.reserve(1), 1)
    with pytest.raises(BudgetExceeded):
        budget.reserve(1)
    budget.release_held_calls()
    assert budget.calls_available() == 2


async def test_fifty_concurrent_calls_never_exceed_the_call_cap() -> None:
    model = FakeChatModel(lambda r: "ok", delay=0.01)
    budget = CallBudget(max_llm_calls=20)
    gateway = LLMGateway(model, budget, cache=None, max_concurrency=50)
    outcomes = await asyncio.gather(
        *(gateway.complete(request(f"q{i}"), "task") for i in range(50)), return_exceptions=True
    )
    exceeded = [o for o in outcomes if isinstance(o, BudgetExceeded)]
    assert model.calls == 20 == budget.calls_used
    assert len(exceeded) == 30
    assert model.max_in_flight == 20


async def test_fifty_concurrent_calls_never_exceed_the_token_cap() -> None:
    model = FakeChatModel(lambda r: "ok", delay=0.01)
    budget = CallBudget(max_tokens=200)
    gateway = LLMGateway(model, budget, cache=None, max_concurrency=50)
    await asyncio.gather(
        *(gateway.complete(request(f"question {i}"), "task") for i in range(50)),
        return_exceptions=True,
    )
    assert budget.tokens_used <= 200
    assert 0 < model.calls < 50


async def test_semaphore_bounds_concurrency() -> None:
    model = FakeChatModel(lambda r: "ok", delay=0.01)
    gateway = LLMGateway(model, CallBudget(), max_concurrency=3)
    await asyncio.gather(*(gateway.complete(request(f"q{i}"), "task") for i in range(12)))
    assert model.max_in_flight == 3


async def test_cache_hit_makes_no_model_call_and_costs_nothing() -> None:
    model = FakeChatModel(lambda r: "answer")
    cache = InMemoryResponseCache()
    budget = CallBudget(max_llm_calls=1)
    gateway = LLMGateway(model, budget, cache)
    first = await gateway.complete(request(), "task")
    second = await gateway.complete(request(), "task")
    assert first == second and model.calls == 1 and budget.calls_used == 1
    usage = gateway.usage("task")
    assert (usage.llm_calls, usage.cache_hits, usage.cache_misses) == (1, 1, 1)
    other = LLMGateway(FakeChatModel(lambda r: "x", identity="other|m"), CallBudget(), cache)
    assert (await other.complete(request(), "task")).text == "x"  # identity is in the key


async def test_use_cache_false_always_calls() -> None:
    model = FakeChatModel(lambda r: "answer")
    cache = InMemoryResponseCache()
    gateway = LLMGateway(model, CallBudget(), cache, use_cache=False)
    await gateway.complete(request(), "task")
    await gateway.complete(request(), "task")
    assert model.calls == 2 and not cache.entries


async def test_failed_call_is_counted_per_role_and_not_cached() -> None:
    model = FakeChatModel(lambda r: "x", fail_if=lambda r: True)
    cache = InMemoryResponseCache()
    gateway = LLMGateway(model, CallBudget(max_llm_calls=5), cache)
    with pytest.raises(LLMCallFailed):
        await gateway.complete(request(), "proposer")
    assert gateway.usage("proposer").failed_calls == 1
    assert gateway.usage("task").llm_calls == 0
    assert not cache.entries
