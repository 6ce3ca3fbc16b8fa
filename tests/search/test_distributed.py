"""Distributed trials: a primary and helpers run trials of one search at once on a shared
Optuna study. Every trial is distinct, the study holds exactly max_trials, the primary adopts
the helpers' trials, and the workers together stay within every budget cap."""

from __future__ import annotations

import asyncio
import dataclasses

import optuna
import pytest
from optuna.trial import TrialState

from prompttune.contract import JobResult, PhaseChanged, SearchSpec, TrialFinished, Usage
from prompttune.search import Runner, RunnerDeps
from prompttune.search._budget import BudgetCaps, shared_caps
from prompttune.search._resume import OVER_CAP_ATTR, RUNNER_ATTR, STATE_ATTR
from tests.fakes import (
    SENTIMENT_TASK,
    FakeChatModel,
    FakeEmbedder,
    InMemoryResponseCache,
    RecordingObserver,
    examples_scored,
    fixed_clock,
    routing_responder,
    search_spec,
)
from tests.search.test_runner import CONFIG, DATA

SEARCHING = ("searching", "reflecting")


@dataclasses.dataclass
class Worker:
    model: FakeChatModel
    observer: RecordingObserver
    runner: Runner

    def phase(self) -> str:
        phases = self.observer.of_type(PhaseChanged)
        return phases[-1].phase if phases else ""


def worker(cache: InMemoryResponseCache, storage: optuna.storages.BaseStorage) -> Worker:
    model = FakeChatModel(routing_responder, delay=0.001)
    observer = RecordingObserver()
    deps = RunnerDeps(model, model, FakeEmbedder(), observer, cache, clock=fixed_clock())
    return Worker(model, observer, Runner(deps, storage))


async def run_distributed(
    config: SearchSpec, helpers: int
) -> tuple[JobResult, list[Usage], list[Worker], optuna.Study]:
    cache, storage = InMemoryResponseCache(), optuna.storages.InMemoryStorage()
    primary = worker(cache, storage)
    others = [worker(cache, storage) for _ in range(helpers)]

    async def assist(index: int) -> Usage:
        while primary.phase() not in SEARCHING:  # what the store's claim_helper waits for
            await asyncio.sleep(0.001)
        return await others[index - 1].runner.assist(
            SENTIMENT_TASK, DATA, config, "job", index, lambda: primary.phase() in SEARCHING
        )

    result, *usages = await asyncio.gather(
        primary.runner.run(SENTIMENT_TASK, DATA, config, "job"),
        *(assist(i) for i in range(1, helpers + 1)),
    )
    study = optuna.load_study(study_name="job", storage=storage)
    return result, usages, [primary, *others], study


async def test_primary_and_helpers_share_one_study() -> None:
    config = search_spec(CONFIG, max_trials=20, parallelism=3)
    result, usages, workers, study = await run_distributed(config, helpers=2)

    counted = [t for t in study.trials if not t.user_attrs.get(OVER_CAP_ATTR)]
    finished = [t for t in counted if t.state.is_finished()]
    assert len(finished) == config.budget.max_trials
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    runners = {t.user_attrs[RUNNER_ATTR] for t in finished}
    assert runners == {0, 1, 2}, "every worker ran trials"
    # Each trial ran once; the primary adopted and reported the helpers' trials too.
    reported = [e.trial for e in workers[0].observer.of_type(TrialFinished)]
    assert sorted(reported) == sorted(t.number for t in finished if STATE_ATTR in t.user_attrs)
    assert result.trials_completed + result.trials_pruned == len(reported)
    assert examples_scored(result.best) == len(DATA.validation)
    assert result.best.validation.mean >= result.baseline.validation.mean
    # The job's usage counts every worker's calls, and the fakes saw exactly those calls.
    paid = sum(w.model.calls for w in workers)
    assert result.usage.llm_calls == paid
    assert sum(u.llm_calls for u in usages) == paid - workers[0].model.calls


@pytest.mark.parametrize("max_llm_calls", [900, 1300])
async def test_workers_together_never_exceed_the_call_cap(max_llm_calls: int) -> None:
    config = search_spec(
        CONFIG, max_trials=40, max_llm_calls=max_llm_calls, parallelism=2, max_tokens=400_000
    )
    result, usages, workers, _ = await run_distributed(config, helpers=1)

    assert sum(w.model.calls for w in workers) <= max_llm_calls
    assert result.usage.llm_calls <= max_llm_calls
    assert result.usage.tokens <= config.budget.max_tokens
    assert examples_scored(result.best) == len(DATA.validation)
    # The helper stopped at its share of the search calls.
    held = (config.num_finalists + 1) * len(DATA.validation) + 2 * len(DATA.test)
    assert usages[0].llm_calls <= (max_llm_calls - held) // 2


def test_shares_sum_to_the_caps() -> None:
    total = BudgetCaps(max_llm_calls=1001, max_tokens=50_003, max_cost_usd=1.0)
    for parts in (1, 2, 3, 7, 16):
        shares = [shared_caps(total, 300, parts, i) for i in range(parts)]
        assert sum(s.max_llm_calls for s in shares) == total.max_llm_calls
        assert sum(s.max_tokens for s in shares) == total.max_tokens
        assert sum(s.max_cost_usd for s in shares) <= total.max_cost_usd + 1e-12
        assert shares[0].max_llm_calls >= 300 + (shares[1].max_llm_calls if parts > 1 else 0)
        assert len({s.max_llm_calls for s in shares[1:]}) <= 1  # equal helper shares
    unlimited = shared_caps(BudgetCaps(0, 0, 0.0), 300, 4, 2)
    assert unlimited == BudgetCaps(0, 0, 0.0)
