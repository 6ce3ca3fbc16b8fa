"""The search runner: the order of a job's phases, and how a job ends.

Phases: "proposing" (instruction candidates and demo sets, `_candidates`), "searching" (one
Optuna trial per prompt configuration, scored on growing minibatches of the validation
split; the loop is a strategy, `_loops` / `_shared`; the objective is another, `_objective`),
"reflecting" once after half the trials (`_reflect`), "validating" (the best few and the
baseline on the full validation split; the winner is chosen here) and "testing" (baseline
and winner on the test split), both in `_finalize`.

A job ends in one true state: a `JobResult`; `SearchCancelled` when the observer asked to
stop (in-flight calls are cancelled at once, in every phase; `partial` holds the best so
far); `SearchFailed` when nothing could be scored, e.g. an endpoint answering only errors
(announced by a `Notice("endpoint_failing")` event); `BudgetExceeded` when not even the
baseline could be validated. The wall budget is hard too: the search stops at 3/4 of it,
promotion and testing at all of it, and the result says stop_reason "max_wall_seconds".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import overload

import optuna
import structlog

from prompttune.contract import (
    BudgetUsed,
    Estimate,
    JobResult,
    Notice,
    PhaseChanged,
    SearchEvent,
    SearchSpec,
    TaskSpec,
    Usage,
)
from prompttune.search._budget import share_is_empty
from prompttune.search._candidates import propose, warm_start
from prompttune.search._checkpoint import open_study
from prompttune.search._errors import (
    BudgetExceeded,
    SearchCancelled,
    SearchFailed,
    UpstreamUnavailable,
)
from prompttune.search._estimate import estimate
from prompttune.search._finalize import conclude, partial_result, validate_finalists
from prompttune.search._labelprobs import calibrate_records, scoring_note, with_scoring
from prompttune.search._loops import LocalSearch, SearchLoop
from prompttune.search._reflect import Reflection
from prompttune.search._setup import (
    RunnerDeps,
    choose_scoring,
    new_state,
    runner_caps,
    total_caps,
)
from prompttune.search._shared import SharedSearch
from prompttune.search._state import SearchState
from prompttune.search._trials import SEARCH_WALL_SHARE, Trials, checkpoint
from prompttune.search._types import DatasetSplits
from prompttune.search._validate import validate_splits, validate_task

log = structlog.get_logger(__name__)

LoopFactory = Callable[[SearchSpec, Trials, Reflection], SearchLoop]


def default_loop(spec: SearchSpec, trials: Trials, reflection: Reflection) -> SearchLoop:
    """`SharedSearch` when helpers may join (parallelism > 1), else `LocalSearch`."""
    if spec.parallelism > 1:
        return SharedSearch(trials, reflection)
    return LocalSearch(trials, reflection)


class Runner:
    """Runs one search job. Not thread-safe; one `run` or `assist` at a time per instance.

    `storage` is an Optuna storage (object or URL); None keeps the study in memory.

    Distributed trials (`SearchSpec.parallelism` p > 1): the runner of `run` (the primary)
    runs the whole job; up to p - 1 other runners `assist` it during its search phase (see
    `_shared`). Each budget cap's search share is split into p parts (see `shared_caps`),
    so the workers together never exceed the job's budget.
    """

    def __init__(
        self,
        deps: RunnerDeps,
        storage: optuna.storages.BaseStorage | str | None = None,
        search_loop: LoopFactory = default_loop,
    ) -> None:
        self._deps = deps
        # A storage object, not None: the runner re-binds the study to a new sampler per ask.
        if storage is None:
            storage = optuna.storages.InMemoryStorage()
        self._storage = optuna.storages.get_storage(storage)
        self._search_loop = search_loop

    async def run(
        self, task: TaskSpec, splits: DatasetSplits, spec: SearchSpec, study_name: str
    ) -> JobResult:
        """Search for the best prompt. Raises `InvalidArgument`, `SearchCancelled`,
        `SearchFailed`, and `BudgetExceeded` only when not even the baseline can be
        validated."""
        validate_task(task)
        validate_splits(task, splits)
        state = new_state(self._deps, task, splits, spec, 0)
        try:
            return await state.guard.watch(self._phases(state, study_name))
        except SearchCancelled as error:
            partial = _with_scoring(state, partial_result(state, "cancelled"))
            raise SearchCancelled(partial=partial) from error
        except UpstreamUnavailable as error:
            cause = str(error)
            self._emit(Notice("endpoint_failing", cause))
            raise SearchFailed(
                cause, _with_scoring(state, partial_result(state, "failed"))
            ) from error

    async def _phases(self, state: SearchState, study_name: str) -> JobResult:
        await self._choose_scoring(state)
        study = open_study(state, study_name, self._storage)
        self._emit(PhaseChanged("proposing"))
        await self._propose(state)
        warm_start(state, study)
        checkpoint(state)
        self._emit(PhaseChanged("searching"))
        loop = self._search_loop(state.spec, Trials(self._emit), Reflection(self._emit))
        await loop.search(state, study)
        state.budget.release_held_calls()
        await calibrate_records(state.task_gateway, state.by_key.values(), self._deps.embedder)
        self._emit(PhaseChanged("validating"))
        await validate_finalists(state)
        self._emit(PhaseChanged("testing"))
        result = _with_scoring(state, await conclude(state))
        self._emit(BudgetUsed(result.usage))
        log.info("search.done", stop_reason=result.stop_reason, improved=result.improved)
        return result

    async def _choose_scoring(self, state: SearchState) -> None:
        """The scoring decision within the search's share of the wall time: an endpoint that
        hangs on the probe leaves generation scoring, and the search stops at once."""
        try:
            await state.guard.within(choose_scoring(state), SEARCH_WALL_SHARE)
        except BudgetExceeded as error:
            state.stop_reason = error.limit

    async def _propose(self, state: SearchState) -> None:
        """Proposing within the search's share of the wall time; when it runs out, the
        search stops at once with what was proposed (at least the seed instruction)."""
        try:
            await state.guard.within(propose(state, self._deps.embedder), SEARCH_WALL_SHARE)
        except BudgetExceeded as error:
            state.stop_reason = error.limit

    async def assist(
        self,
        task: TaskSpec,
        splits: DatasetSplits,
        spec: SearchSpec,
        study_name: str,
        helper_index: int,
        search_open: Callable[[], bool],
    ) -> Usage:
        """Runs trials of another runner's search (the primary's `run` on `study_name`) until
        the study holds max_trials taken trials, `search_open()` turns False or the primary
        closes its search, the search space is exhausted, or this helper's budget share
        (`helper_index` in 1..parallelism-1) runs out. Returns this helper's usage.

        The candidate space is rebuilt like the primary's, from the shared response cache
        (no paid calls); instructions the primary's reflection added are read from the study.
        Call only while the primary is searching. Raises `SearchCancelled`, `SearchFailed`
        and `InvalidArgument`.
        """
        validate_task(task)
        validate_splits(task, splits)
        state = new_state(self._deps, task, splits, spec, helper_index)
        if share_is_empty(total_caps(spec), runner_caps(task, splits, spec, helper_index)):
            return Usage()
        state.reflected = True  # only the primary reflects; helpers read its instructions
        try:
            return await state.guard.watch(self._assist(state, study_name, search_open))
        except UpstreamUnavailable as error:
            raise SearchFailed(str(error)) from error

    async def _assist(
        self, state: SearchState, study_name: str, search_open: Callable[[], bool]
    ) -> Usage:
        await self._choose_scoring(state)
        study = open_study(state, study_name, self._storage)
        await propose(state, self._deps.embedder)
        checkpoint(state)
        log.info("search.helper.started", helper=state.runner_index)
        shared = SharedSearch(Trials(self._emit), Reflection(self._emit))
        await shared.assist(state, study, search_open)
        checkpoint(state)
        log.info("search.helper.done", helper=state.runner_index, trials=len(state.records))
        return state.own_usage()

    def estimate(self, task: TaskSpec, splits: DatasetSplits, spec: SearchSpec) -> Estimate:
        """`estimate` with this runner's answer caps."""
        deps = self._deps
        return estimate(task, splits, spec, deps.task_max_tokens, deps.proposer_max_tokens)

    def _emit(self, event: SearchEvent) -> None:
        self._deps.observer.on_event(event)


@overload
def _with_scoring(state: SearchState, result: JobResult) -> JobResult: ...
@overload
def _with_scoring(state: SearchState, result: None) -> None: ...
def _with_scoring(state: SearchState, result: JobResult | None) -> JobResult | None:
    """The result with the run's scoring and its note, and each score's scoring."""
    if result is None:
        return None
    note = scoring_note(state.scoring, state.tally)
    log.info(
        "search.scoring.tally",
        scoring=state.scoring.scoring.value,
        label_scored=state.tally.label_scored,
        fallbacks=state.tally.fallbacks,
    )
    return with_scoring(result, state.task, state.scoring, note)
