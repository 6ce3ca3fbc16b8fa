from __future__ import annotations

import dataclasses
from collections.abc import Callable

import optuna
import pytest

from prompttune.contract import (
    BudgetUsed,
    DemoLayout,
    InstructionPlacement,
    JobResult,
    NewBest,
    PhaseChanged,
    SearchSpec,
    TrialFinished,
)
from prompttune.search import ChatRequest, Runner, RunnerDeps, SearchCancelled
from prompttune.search import estimate as search_estimate
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
    sentiment_splits,
)

CONFIG = search_spec(
    max_trials=16,
    max_llm_calls=5000,
    num_instruction_candidates=4,
    max_demos=3,
    minibatch_size=8,
    seed=7,
    num_demo_sets=2,
    num_finalists=2,
)
DATA = sentiment_splits(train=24, validation=40, test=24)


@dataclasses.dataclass
class Harness:
    model: FakeChatModel
    observer: RecordingObserver
    cache: InMemoryResponseCache
    runner: Runner


def harness(
    cache: InMemoryResponseCache | None = None,
    cancel_after: int = 0,
    storage: optuna.storages.BaseStorage | None = None,
    fail_if: Callable[[ChatRequest], bool] | None = None,
) -> Harness:
    model = FakeChatModel(routing_responder, fail_if=fail_if)
    observer = RecordingObserver(cancel_after_events=cancel_after)
    cache = cache or InMemoryResponseCache()
    deps = RunnerDeps(model, model, FakeEmbedder(), observer, cache, clock=fixed_clock())
    return Harness(model, observer, cache, Runner(deps, storage))


async def run(h: Harness, config: SearchSpec = CONFIG, data=DATA) -> JobResult:  # type: ignore[no-untyped-def]
    return await h.runner.run(SENTIMENT_TASK, data, config, study_name="job-1")


async def test_search_finds_a_better_prompt_and_reports_test_scores() -> None:
    h = harness()
    result = await run(h)
    print(result.summary, result.best.validation, result.baseline.validation, result.stop_reason)
    assert result.best.validation.mean >= result.baseline.validation.mean
    assert result.improved
    assert result.best.validation.mean > result.baseline.validation.mean + 0.2
    assert result.baseline.selection is not None
    searched, held_back = result.baseline.validation.examples, result.baseline.selection.examples
    assert (searched, held_back) == (len(DATA.validation) // 2, len(DATA.validation) // 2)
    assert result.best.test is not None and result.baseline.test is not None
    assert result.best.test.examples == len(DATA.test)
    assert result.stop_reason == "max_trials"
    assert result.trials_completed + result.trials_pruned <= CONFIG.budget.max_trials
    assert result.best in result.pareto
    means = [p.validation.mean for p in result.pareto]
    assert means == sorted(means) and len(set(means)) == len(means)
    assert result.usage.llm_calls == h.model.calls


async def test_baseline_is_the_first_trial_and_events_are_emitted() -> None:
    storage = optuna.storages.InMemoryStorage()
    h = harness(storage=storage)
    await run(h)
    study = optuna.load_study(study_name="job-1", storage=storage)
    assert study.trials[0].params == {
        "instruction": 0,
        "demo_set": 0,
        "n_demos": 0,
        "placement": "user",
        "layout": "chat_turns",
        "answer_prefix": "Sentiment:",
    }
    phases = [e.phase for e in h.observer.of_type(PhaseChanged)]
    assert phases == [
        "proposing",
        "searching",
        "reflecting",
        "searching",
        "validating",
        "testing",
    ]
    trials = h.observer.of_type(TrialFinished)
    assert [t.trial for t in trials] == list(range(CONFIG.budget.max_trials))
    assert any(t.pruned for t in trials)
    assert h.observer.of_type(NewBest)[0].trial == 0
    assert len(h.observer.of_type(BudgetUsed)) == CONFIG.budget.max_trials + 1


async def test_deterministic_and_second_run_is_free_with_shared_cache() -> None:
    first, second = await run(harness()), await run(harness())
    assert first == second
    cache = InMemoryResponseCache()
    await run(harness(cache))
    again = harness(cache)
    rerun = await run(again)
    assert again.model.calls == 0 and rerun.usage.llm_calls == 0
    assert rerun.best == first.best and rerun.usage.cache_hits > 0


async def test_max_llm_calls_is_never_exceeded_and_final_phases_still_run() -> None:
    config = search_spec(CONFIG, max_llm_calls=260, max_trials=50)
    h = harness()
    result = await run(h, config)
    assert h.model.calls <= 260
    assert result.stop_reason == "max_llm_calls"
    assert examples_scored(result.baseline) == len(DATA.validation)
    assert result.baseline.test is not None


async def test_failed_examples_are_counted_and_failing_trials_do_not_win() -> None:
    storage = optuna.storages.InMemoryStorage()
    answer_cue = "Sentiment:"
    h = harness(storage=storage, fail_if=lambda r: not r.messages[-1].content.endswith(answer_cue))
    result = await run(h)
    assert result.best.prompt.format.answer_prefix == answer_cue
    assert result.usage.failed_calls > 0
    states = {t.state for t in optuna.load_study(study_name="job-1", storage=storage).trials}
    assert optuna.trial.TrialState.FAIL in states
    finished = h.observer.of_type(TrialFinished)
    assert all(t.examples > 0 for t in finished)


async def test_cancellation_stops_the_search() -> None:
    with pytest.raises(SearchCancelled):
        await run(harness(cancel_after=5))


async def test_estimate_bounds_the_calls() -> None:
    h = harness()
    estimate = h.runner.estimate(SENTIMENT_TASK, DATA, CONFIG)
    result = await run(h)
    assert result.usage.llm_calls <= estimate.llm_calls <= CONFIG.budget.max_llm_calls
    assert result.usage.tokens <= estimate.tokens
    assert estimate == search_estimate(SENTIMENT_TASK, DATA, CONFIG)
    capped = h.runner.estimate(SENTIMENT_TASK, DATA, search_spec(CONFIG, max_llm_calls=10))
    assert capped.llm_calls == 10


async def test_small_space_is_exhausted() -> None:
    config = search_spec(CONFIG, num_instruction_candidates=1, max_demos=0, max_trials=200)
    result = await run(harness(), config, sentiment_splits(train=0, validation=8, test=0))
    assert result.stop_reason == "search_space_exhausted"
    assert result.best.prompt.format.instruction_placement in tuple(InstructionPlacement)
    assert result.best.prompt.format.demo_layout is DemoLayout.CHAT_TURNS
    assert result.baseline.test is None


async def test_the_search_spends_the_calls_promotion_does_not_need() -> None:
    """Only what promotion and testing still need is held back from the search, so a call
    budget is used up to less than one first-rung minibatch (8 calls) plus the test passes
    held for the end (the fake test split repeats validation texts: the cache pays them)."""
    held_for_testing = 2 * len(DATA.test)
    for budget in (260, 400):
        h = harness()
        result = await run(h, search_spec(CONFIG, max_llm_calls=budget, max_trials=50))
        assert result.stop_reason == "max_llm_calls"
        assert budget - CONFIG.minibatch_size - held_for_testing < h.model.calls <= budget
