"""Resuming a search from its Optuna study after the process running it died.

Every finished trial stores its per-example results in the trial's user attributes, so a
restarted runner rebuilds its records from the study instead of re-running those trials. The
job's usage so far is checkpointed in the study's user attributes, so the budget keeps counting
from where it stopped. The sampler is reseeded before every ask from the seed and the number of
finished trials, so a resumed search asks for exactly the trials an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from prompttune.search._space import SearchSpace, TrialConfig
from prompttune.search._state import COMPLETE, FAILED, PRUNED, TrialRecord
from prompttune.search._types import ExampleResult, TaskSpec, Usage

RESULTS_ATTR = "prompttune.results"
DUPLICATE_ATTR = "prompttune.duplicate_of"
STATE_ATTR = "prompttune.state"
USAGE_ATTR = "prompttune.usage"

_STATES = {COMPLETE: COMPLETE, PRUNED: PRUNED, FAILED: FAILED}


def save_record(trial: Trial, record: TrialRecord) -> None:
    """Stores what `load_record` needs; call it before the trial is told, so every finished
    trial carries its results."""
    if record.duplicate_of is not None:
        trial.set_user_attr(DUPLICATE_ATTR, record.duplicate_of)
    else:
        rows: list[list[Any]] = [[r.example_id, r.score, r.error, r.answer] for r in record.results]
        trial.set_user_attr(RESULTS_ATTR, rows)
    trial.set_user_attr(STATE_ATTR, record.state)


def load_record(
    frozen: FrozenTrial, space: SearchSpace, task: TaskSpec, by_number: dict[int, TrialRecord]
) -> TrialRecord | None:
    """The record of a finished trial, or None for a trial that never finished."""
    state = frozen.user_attrs.get(STATE_ATTR)
    if state not in _STATES or frozen.state not in (
        TrialState.COMPLETE,
        TrialState.PRUNED,
        TrialState.FAIL,
    ):
        return None
    config = TrialConfig.from_params(frozen.params)
    key, prompt = space.prompt_for(task, config)
    duplicate_of = frozen.user_attrs.get(DUPLICATE_ATTR)
    if duplicate_of is not None:
        original = by_number[int(duplicate_of)]
        results = list(original.results)
    else:
        results = [
            ExampleResult(str(i), str(answer), float(score), str(error))
            for i, score, error, answer in frozen.user_attrs.get(RESULTS_ATTR, [])
        ]
    intermediate = sorted((int(step), float(v)) for step, v in frozen.intermediate_values.items())
    return TrialRecord(
        frozen.number,
        config,
        key,
        prompt,
        results,
        intermediate,
        _STATES[state],
        duplicate_of=None if duplicate_of is None else int(duplicate_of),
    )


def save_usage(study: optuna.Study, usage: Usage) -> None:
    study.set_user_attr(USAGE_ATTR, asdict(usage))


def load_usage(study: optuna.Study) -> Usage:
    saved = study.user_attrs.get(USAGE_ATTR)
    return Usage(**saved) if isinstance(saved, dict) else Usage()


def interrupted_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Trials left RUNNING by a process that died; they are continued, not re-asked."""
    return [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]


def trial_sampler(seed: int, finished: int, startup_trials: int) -> optuna.samplers.BaseSampler:
    """A TPE sampler whose randomness depends only on the seed and the trials finished so far."""
    return optuna.samplers.TPESampler(
        seed=(seed * 1_000_003 + finished) % 2**32, n_startup_trials=startup_trials
    )
