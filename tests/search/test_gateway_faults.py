"""A real search job against the fake OpenAI-compatible HTTP endpoint (benchmarks/fake_openai.py)
on 127.0.0.1:0: with 20% 5xx and 10% 429 injected it ends with the fault-free run's result,
within budget, and a rerun makes no new calls."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from prompttune.contract import JobResult
from prompttune.search import (
    EndpointPolicy,
    GatewayRegistry,
    ModelEndpoint,
    OpenAIChatModel,
    OpenAIClientPool,
    Pricing,
    Runner,
    RunnerDeps,
)
from tests.fakes import (
    SENTIMENT_TASK,
    FakeEmbedder,
    InMemoryResponseCache,
    RecordingObserver,
    load_fake_openai,
    search_spec,
    sentiment_splits,
)

fake_openai = load_fake_openai()
CONFIG = search_spec(
    max_trials=6,
    max_llm_calls=900,
    max_tokens=400_000,
    max_cost_usd=1.0,
    num_instruction_candidates=2,
    max_demos=2,
    minibatch_size=8,
    seed=3,
)
PRICING = Pricing(usd_per_million_prompt_tokens=2.0, usd_per_million_completion_tokens=6.0)


@pytest.fixture
def endpoints() -> Iterator[tuple[Any, Any]]:
    clean = fake_openai.FakeConfig(latency=0.002)
    faulty = fake_openai.FakeConfig(
        latency=0.002, error_rate=0.2, rate_limit_rate=0.1, retry_after=0.01, seed=7
    )
    with fake_openai.serve_in_thread(clean) as a, fake_openai.serve_in_thread(faulty) as b:
        yield a, b


async def run_job(port: int, cache: InMemoryResponseCache, name: str) -> JobResult:
    endpoint = ModelEndpoint(
        f"http://127.0.0.1:{port}/v1",
        "fake",
        max_retries=12,
        retry_backoff_seconds=0.005,
        cache_identity="fake|sentiment",  # both fakes answer alike: results must be equal
    )
    model = OpenAIChatModel(endpoint, pool=OpenAIClientPool())
    policy = EndpointPolicy(pricing=PRICING)
    deps = RunnerDeps(
        task_model=model,
        proposer_model=model,
        embedder=FakeEmbedder(),
        observer=RecordingObserver(),
        cache=cache,
        task_max_concurrency=8,
        registry=GatewayRegistry(),
        task_policy=policy,
        proposer_policy=policy,
    )
    return await Runner(deps).run(SENTIMENT_TASK, sentiment_splits(16, 24, 12), CONFIG, name)


@pytest.mark.timeout(60)
async def test_faults_cost_nothing_and_rerun_makes_no_calls(endpoints: tuple[Any, Any]) -> None:
    clean_server, faulty_server = endpoints
    clean = await run_job(clean_server.port, InMemoryResponseCache(), "clean")
    cache = InMemoryResponseCache()
    faulty = await run_job(faulty_server.port, cache, "faulty")

    statuses = faulty_server.stats.statuses
    assert statuses[503] > 0.1 * faulty_server.stats.requests and statuses[429] > 0
    assert faulty.usage.failed_calls == 0
    assert faulty.best.prompt == clean.best.prompt
    assert faulty.best.validation == clean.best.validation
    assert faulty.best.test == clean.best.test and faulty.baseline == clean.baseline
    assert (faulty.trials_completed, faulty.trials_pruned) == (
        clean.trials_completed,
        clean.trials_pruned,
    )
    assert faulty.usage.llm_calls == clean.usage.llm_calls == statuses[200]
    for result in (clean, faulty):
        assert result.usage.llm_calls <= CONFIG.budget.max_llm_calls
        assert result.usage.tokens <= CONFIG.budget.max_tokens
        assert 0 < result.usage.cost_usd <= CONFIG.budget.max_cost_usd
        assert set(result.usage_by_role) >= {"task", "proposer"}

    requests = faulty_server.stats.requests
    rerun = await run_job(faulty_server.port, cache, "rerun")
    assert faulty_server.stats.requests == requests and rerun.usage.llm_calls == 0
    assert rerun.best == faulty.best
