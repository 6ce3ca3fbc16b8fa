"""A run's Optuna study as its checkpoint: opened or reloaded, usage carried over, and the
trials of a process that died rebuilt (finished ones) or continued (running ones)."""

from __future__ import annotations

import optuna
import structlog
from optuna.trial import Trial, TrialState

from prompttune.search._reflect import Reflection
from prompttune.search._resume import (
    interrupted_trials,
    load_record,
    load_usage,
    startup_trials,
    trial_sampler,
    usage_attr,
)
from prompttune.search._state import SearchState, TrialRecord
from prompttune.search._trials import Trials

log = structlog.get_logger(__name__)


def open_study(state: SearchState, name: str, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """Creates the study (baseline queued first) or loads it, and counts what an earlier
    process of this runner spent against the budget and in the reported usage (its calls
    are in the cache, so none is paid again)."""
    sampler = trial_sampler(state.spec.seed, 0, startup_trials(state.spec.budget.max_trials))
    study = state.objective.create_study(name, storage, sampler, state.rungs[0])
    if not study.trials:
        study.enqueue_trial(state.space.params(state.space.baseline()))
    prior = load_usage(study, usage_attr(state.runner_index))
    state.prior_usage = prior
    state.budget.carry_over(prior.llm_calls, prior.tokens, prior.cost_usd)
    state.study = study
    return study


def frozen_trial(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> Trial:
    # Optuna's FrozenTrial keeps the storage id privately; Trial(study, id) is public.
    return Trial(study, frozen._trial_id)


async def resume(
    state: SearchState, study: optuna.Study, trials: Trials, reflection: Reflection
) -> None:
    """Rebuilds the records of trials an earlier process finished (no LLM calls), then
    continues the trials it left running. A fresh study returns at once."""
    by_number: dict[int, TrialRecord] = {}
    for frozen in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        await reflection.maybe(state, study, enqueue=False)
        record = load_record(frozen, state.space, state.task, by_number, state.trial_objective)
        if record is not None:
            by_number[record.number] = record
            state.by_key.setdefault(record.key, record)
            trials.remember(state, record)
    for frozen in interrupted_trials(study):
        await reflection.maybe(state, study, enqueue=False)
        if set(frozen.params) != set(state.space.distributions()):
            # Killed while Optuna was still storing its parameters: nothing ran yet.
            study.tell(frozen.number, state=TrialState.FAIL)
            continue
        log.info("search.trial.resumed", trial=frozen.number)
        await trials.finish(state, study, frozen_trial(study, frozen))
    if by_number:
        log.info("search.resumed", trials=len(by_number))
