"""The search phase's trial loop, as a strategy: `LocalSearch` asks and runs every trial
itself; `SharedSearch` (in `_shared`) shares the study with helper workers."""

from __future__ import annotations

from typing import Protocol

import optuna

from prompttune.search._checkpoint import resume
from prompttune.search._finalize import finalist_records
from prompttune.search._reflect import Reflection
from prompttune.search._resume import startup_trials, taken_trials, trial_sampler
from prompttune.search._scorers import calls_per_example
from prompttune.search._state import SearchState
from prompttune.search._trials import SEARCH_WALL_SHARE, Trials


class SearchLoop(Protocol):
    async def search(self, state: SearchState, study: optuna.Study) -> None:
        """Runs trials until `stop_reason` gives one (stored in `state.stop_reason`)."""
        ...


def trials_taken(state: SearchState) -> int:
    if state.spec.parallelism > 1 and state.study is not None:
        return len(taken_trials(state.study))  # every worker's, running ones included
    return len(state.records)


def stop_reason(state: SearchState) -> str:
    """Why the search must stop now ("" = go on). Raises `SearchCancelled`."""
    state.guard.check()
    budget, spec = state.budget, state.spec
    if state.stop_reason:
        return state.stop_reason
    if trials_taken(state) >= spec.budget.max_trials:
        return "max_trials"
    state.final_seconds = state.pace.seconds_for(final_reserve(state))
    if state.guard.remaining(SEARCH_WALL_SHARE, state.final_seconds) == 0.0:
        return "max_wall_seconds"  # the final phase needs the rest
    available = budget.calls_available()
    if available is not None and available < calls_per_example(state.task) * state.rungs[0]:
        return "max_llm_calls"  # not even the first minibatch of another trial fits
    exhausted = len(state.by_key) >= state.space.size()
    if exhausted and (state.reflected or state.best is None):
        return "search_space_exhausted"
    return ""


def final_reserve(state: SearchState) -> int:
    """The calls promotion and testing still need as the search stands: the unscored
    search examples of the baseline and of the current finalists, a full pass for the next
    trial while finalist places are free, the selection examples of the baseline and every
    finalist place, and the test split twice.

    The next trial cannot raise it: finalists rank by examples scored first, so a new
    record only displaces one with fewer examples scored (more left to pay)."""
    n_val = len(state.val_order)
    baseline_key, _ = state.space.baseline_for(state.task)
    finalists = [r for r in finalist_records(state) if r.key != baseline_key]
    baseline = state.by_key.get(baseline_key)
    missing = n_val - (baseline.scored if baseline is not None else 0)
    missing += sum(n_val - record.scored for record in finalists)
    places = state.objective.finalist_count(state.spec.num_finalists)
    if len(finalists) < places:
        missing += n_val
    missing += (places + 1) * len(state.selection_order)  # every finalist and the baseline
    return calls_per_example(state.task) * (missing + 2 * len(state.splits.test))


class LocalSearch:
    """One worker asks and runs every trial; the sampler is reseeded before each ask from
    the seed and the trials finished, so a resumed search asks what an uninterrupted one
    would."""

    def __init__(self, trials: Trials, reflection: Reflection) -> None:
        self._trials = trials
        self._reflection = reflection

    async def search(self, state: SearchState, study: optuna.Study) -> None:
        await resume(state, study, self._trials, self._reflection)
        distributions = state.space.distributions()
        while True:
            if await self._reflection.maybe(state, study):
                distributions = state.space.distributions()
            state.budget.hold_calls(final_reserve(state))
            state.stop_reason = stop_reason(state)
            if state.stop_reason:
                return
            startup = startup_trials(state.spec.budget.max_trials)
            study.sampler = trial_sampler(state.spec.seed, len(state.records), startup)
            await self._trials.finish(state, study, study.ask(distributions))
