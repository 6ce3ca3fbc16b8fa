"""Distributed trials (`SearchSpec.parallelism` p > 1): the primary and up to p - 1 helper
workers ask and tell trials on one study (constant-liar TPE), each storing its results in
the trials; every worker adopts the trials the others finished (no LLM calls)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import optuna
import structlog
from optuna.trial import TrialState

from prompttune.search._checkpoint import frozen_trial
from prompttune.search._gateway import add_usage
from prompttune.search._loops import stop_reason
from prompttune.search._reflect import Reflection, sync_instructions
from prompttune.search._resume import (
    DUPLICATE_ATTR,
    OVER_CAP_ATTR,
    RUNNER_ATTR,
    SEARCH_CLOSED_ATTR,
    helper_usages,
    interrupted_trials,
    load_record,
    over_cap,
    shared_sampler,
    startup_trials,
)
from prompttune.search._state import SearchState, TrialRecord
from prompttune.search._trials import Trials

log = structlog.get_logger(__name__)

# How long the primary waits for helpers' running trials before it leaves the search phase
# (twice the slowest trial so far, within these bounds), and how often it looks.
HELPER_WAIT_SECONDS = (1.0, 60.0)
HELPER_POLL_SECONDS = 0.2


class SharedSearch:
    def __init__(self, trials: Trials, reflection: Reflection) -> None:
        self._trials = trials
        self._reflection = reflection

    async def search(self, state: SearchState, study: optuna.Study) -> None:
        """The primary's search phase: adopt the trials helpers finished before every
        decision, close the search, wait (bounded) for their running trials."""
        sync_instructions(state, study, publish=True)
        self._adopt(state, study, emit=False)  # a restarted primary: every finished trial
        for frozen in interrupted_trials(study, state.runner_index):
            log.info("search.trial.resumed", trial=frozen.number)
            await self._trials.finish(state, study, frozen_trial(study, frozen))
        while True:
            self._adopt(state, study)
            await self._reflection.maybe(state, study)
            state.stop_reason = stop_reason(state)
            if state.stop_reason:
                break
            await self._one_trial(state, study)
        study.set_user_attr(SEARCH_CLOSED_ATTR, True)
        await self._await_helpers(state, study)

    async def assist(
        self, state: SearchState, study: optuna.Study, search_open: Callable[[], bool]
    ) -> None:
        """A helper's loop: trials until the primary closes the search or a stop applies."""
        for frozen in interrupted_trials(study, state.runner_index):
            sync_instructions(state, study, publish=False)
            self._adopt(state, study, emit=False)
            await self._trials.finish(state, study, frozen_trial(study, frozen))
        while self._helper_may_ask(state, study, search_open):
            await self._one_trial(state, study)

    async def _one_trial(self, state: SearchState, study: optuna.Study) -> None:
        spec = state.spec
        startup = startup_trials(spec.budget.max_trials)
        study.sampler = shared_sampler(spec.seed, state.runner_index, len(state.records), startup)
        trial = study.ask(state.space.distributions())
        trial.set_user_attr(RUNNER_ATTR, state.runner_index)
        if over_cap(study, trial, spec.budget.max_trials):
            trial.set_user_attr(OVER_CAP_ATTR, True)
            study.tell(trial, state=TrialState.FAIL)
            return
        await self._trials.finish(state, study, trial)

    def _adopt(self, state: SearchState, study: optuna.Study, emit: bool = True) -> None:
        """Adds the trials other runners finished, reporting them with `emit`, and
        refreshes the helpers' usage."""
        by_number = {record.number: record for record in state.records}
        # Originals before duplicates: a duplicate may name an original that finished later.
        trials = study.get_trials(deepcopy=False)
        for frozen in sorted(trials, key=lambda t: (DUPLICATE_ATTR in t.user_attrs, t.number)):
            if frozen.number in by_number:
                continue
            try:
                record = load_record(
                    frozen, state.space, state.task, by_number, state.trial_objective
                )
            except (KeyError, IndexError):
                continue  # its original or its instruction is not known here yet
            if record is None:
                continue
            by_number[record.number] = record
            state.by_key.setdefault(record.key, record)
            self._add(state, record, emit)
        if state.runner_index == 0:
            state.helper_usage = add_usage(*helper_usages(study))

    def _add(self, state: SearchState, record: TrialRecord, emit: bool) -> None:
        if emit:
            self._trials.report(state, record)
        else:
            self._trials.remember(state, record)

    def _helper_may_ask(
        self, state: SearchState, study: optuna.Study, search_open: Callable[[], bool]
    ) -> bool:
        state.guard.check()
        if not search_open() or study.user_attrs.get(SEARCH_CLOSED_ATTR):
            return False
        sync_instructions(state, study, publish=False)
        self._adopt(state, study, emit=False)
        state.stop_reason = stop_reason(state)
        return not state.stop_reason

    async def _await_helpers(self, state: SearchState, study: optuna.Study) -> None:
        """Waits for the helpers' running trials (at most twice the slowest trial so far,
        within HELPER_WAIT_SECONDS), then adopts what they finished. Uses wall time."""
        deadline = time.monotonic() + _helper_wait(study)
        running = (TrialState.RUNNING,)
        while study.get_trials(deepcopy=False, states=running) and time.monotonic() < deadline:
            state.guard.check()
            await asyncio.sleep(HELPER_POLL_SECONDS)
        self._adopt(state, study)


def _helper_wait(study: optuna.Study) -> float:
    finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    durations = [
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in study.get_trials(deepcopy=False, states=finished)
        if t.datetime_complete is not None and t.datetime_start is not None
    ]
    low, high = HELPER_WAIT_SECONDS
    return min(high, max(low, 2 * max(durations, default=high)))
