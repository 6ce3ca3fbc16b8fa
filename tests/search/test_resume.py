"""A search interrupted mid-trial resumes from its Optuna study: finished trials are rebuilt,
not re-run, no LLM call is paid twice, and the result equals an uninterrupted run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import optuna
import pytest

from prompttune.contract import JobResult, Scoring, SearchEvent
from prompttune.search import Runner, RunnerDeps
from prompttune.search._resume import interrupted_trials
from tests.fakes import (
    SENTIMENT_TASK,
    FakeChatModel,
    FakeEmbedder,
    InMemoryResponseCache,
    biased_sentiment_logprobs,
    fixed_clock,
    routing_responder,
)
from tests.search.test_runner import CONFIG, DATA


class Killed(BaseException):
    """The process died: nothing in the runner handles it, like a SIGKILL."""


@dataclass
class DyingObserver:
    """Dies at its `die_at`-th cancellation check: mid-trial, like a killed process that
    leaves its current trial RUNNING in the study. (A cancelled run, unlike a killed one,
    ends its trials; see test_failures.)"""

    die_at: int = 0
    checks: int = 0
    events: list[SearchEvent] = field(default_factory=list)

    def on_event(self, event: SearchEvent) -> None:
        self.events.append(event)

    def cancelled(self) -> bool:
        self.checks += 1
        if 0 < self.die_at <= self.checks:
            raise Killed
        return False


def runner(
    model: FakeChatModel,
    cache: InMemoryResponseCache,
    storage: optuna.storages.BaseStorage,
    die_at: int = 0,
) -> Runner:
    observer = DyingObserver(die_at)
    # No watchdog: the process dies at a check between steps, deterministically.
    deps = RunnerDeps(
        model, model, FakeEmbedder(), observer, cache, clock=fixed_clock(), stop_poll_seconds=0
    )
    return Runner(deps, storage)


def generating() -> FakeChatModel:
    return FakeChatModel(routing_responder)


def label_scoring() -> FakeChatModel:
    """Scored by label probabilities and calibrated: predictions differ from answer texts."""
    return FakeChatModel(routing_responder, logprobs=biased_sentiment_logprobs)


async def uninterrupted(
    make_model: Callable[[], FakeChatModel] = generating,
) -> tuple[JobResult, int]:
    model = make_model()
    storage = optuna.storages.InMemoryStorage()
    result = await runner(model, InMemoryResponseCache(), storage).run(
        SENTIMENT_TASK, DATA, CONFIG, "job"
    )
    return result, model.calls


async def test_resumed_search_equals_an_uninterrupted_one() -> None:
    reference, reference_calls = await uninterrupted()
    mid_trial = 0
    for die_at in range(3, 43, 3):
        mid_trial += await interrupt_and_resume(die_at, reference, reference_calls)
    assert mid_trial >= 3, "some interruptions should land inside a trial"


async def test_a_resumed_label_probability_search_equals_an_uninterrupted_one() -> None:
    """Scored by calibrated label probabilities, a resumed run's scores (confusion matrices
    included) and calls equal an uninterrupted run's."""
    reference, reference_calls = await uninterrupted(label_scoring)
    assert reference.scoring is Scoring.LABEL_PROBABILITIES
    assert reference.best.prompt.calibration is not None
    for die_at in (9, 18, 27):
        await interrupt_and_resume(die_at, reference, reference_calls, label_scoring)


async def interrupt_and_resume(
    die_at: int,
    reference: JobResult,
    reference_calls: int,
    make_model: Callable[[], FakeChatModel] = generating,
) -> int:
    """Returns 1 when the interruption left a trial RUNNING (mid-trial), else 0."""
    model = make_model()
    cache = InMemoryResponseCache()
    storage = optuna.storages.InMemoryStorage()

    with pytest.raises(Killed):
        await runner(model, cache, storage, die_at).run(SENTIMENT_TASK, DATA, CONFIG, "job")
    study = optuna.load_study(study_name="job", storage=storage)
    running = len(interrupted_trials(study))

    resumed = await runner(model, cache, storage).run(SENTIMENT_TASK, DATA, CONFIG, "job")

    assert resumed.best == reference.best
    assert resumed.baseline == reference.baseline
    assert resumed.improved == reference.improved
    assert resumed.trials_completed == reference.trials_completed
    assert resumed.trials_pruned == reference.trials_pruned
    assert resumed.pareto == reference.pareto
    assert model.calls == reference_calls  # nothing paid twice across the two processes
    assert resumed.usage.llm_calls == reference.usage.llm_calls
    numbers = [t.number for t in optuna.load_study(study_name="job", storage=storage).trials]
    assert numbers == sorted(set(numbers))  # finished trials were not asked again
    return min(running, 1)
