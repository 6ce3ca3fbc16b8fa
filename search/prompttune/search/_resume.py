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

from prompttune.contract import ExampleResult, TaskSpec, Usage
from prompttune.search._space import SearchSpace, TrialConfig
from prompttune.search._state import COMPLETE, FAILED, PRUNED, TrialRecord
from prompttune.search._stats import TrialObjective

RESULTS_ATTR = "prompttune.results"
DUPLICATE_ATTR = "prompttune.duplicate_of"
STATE_ATTR = "prompttune.state"
USAGE_ATTR = "prompttune.usage"
# Distributed trials (parallelism > 1): which runner asked a trial (0 = the primary, 1.. =
# helpers), trials asked beyond max_trials and given back, the instruction table (it grows
# in the primary's reflection round), and the primary's "no new trials" mark.
RUNNER_ATTR = "prompttune.runner"
OVER_CAP_ATTR = "prompttune.over_cap"
INSTRUCTIONS_ATTR = "prompttune.instructions"
SEARCH_CLOSED_ATTR = "prompttune.search_closed"

_STATES = {COMPLETE: COMPLETE, PRUNED: PRUNED, FAILED: FAILED}


def save_record(trial: Trial, record: TrialRecord) -> None:
    """Stores what `load_record` needs; call it before the trial is told, so every finished
    trial carries its results."""
    if record.duplicate_of is not None:
        trial.set_user_attr(DUPLICATE_ATTR, record.duplicate_of)
    else:
        rows: list[list[Any]] = [
            [r.id, r.score, r.error, r.answer, r.prediction] for r in record.results
        ]
        trial.set_user_attr(RESULTS_ATTR, rows)
    trial.set_user_attr(STATE_ATTR, record.state)


def _result(row: list[Any]) -> ExampleResult:
    """A stored row: id, score, error, answer and (stored since label-probability scoring)
    the prediction."""
    example_id, score, error, answer, *rest = row
    prediction = str(rest[0]) if rest else ""
    return ExampleResult(str(example_id), str(answer), float(score), str(error), prediction)


def load_record(
    frozen: FrozenTrial,
    space: SearchSpace,
    task: TaskSpec,
    by_number: dict[int, TrialRecord],
    objective: TrialObjective | None = None,
) -> TrialRecord | None:
    """The record of a finished trial, or None for a trial that never finished; `objective`
    scores it (None: the mean)."""
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
        results = [_result(row) for row in frozen.user_attrs.get(RESULTS_ATTR, [])]
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
        objective=objective,
    )


def usage_attr(runner_index: int) -> str:
    """The study attribute holding a runner's own usage (helpers' each under their index)."""
    return USAGE_ATTR if runner_index == 0 else f"{USAGE_ATTR}.helper.{runner_index}"


def save_usage(study: optuna.Study, usage: Usage, attr: str = USAGE_ATTR) -> None:
    study.set_user_attr(attr, asdict(usage))


def load_usage(study: optuna.Study, attr: str = USAGE_ATTR) -> Usage:
    saved = study.user_attrs.get(attr)
    return Usage(**saved) if isinstance(saved, dict) else Usage()


def helper_usages(study: optuna.Study) -> list[Usage]:
    """The usage every helper of a distributed search checkpointed."""
    prefix = f"{USAGE_ATTR}.helper."
    return [
        Usage(**saved)
        for name, saved in study.user_attrs.items()
        if name.startswith(prefix) and isinstance(saved, dict)
    ]


def interrupted_trials(study: optuna.Study, runner_index: int | None = None) -> list[FrozenTrial]:
    """Trials left RUNNING by a process that died; they are continued, not re-asked.

    With `runner_index` only that runner's trials: in a distributed search the others may
    belong to live helpers. Each index is held by one process at a time (job or slot lease),
    so a RUNNING trial of one's own index was left by a dead predecessor.
    """
    return [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state == TrialState.RUNNING
        and (runner_index is None or t.user_attrs.get(RUNNER_ATTR, 0) == runner_index)
    ]


def taken_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Trials counted against max_trials in a distributed search: asked (running or
    finished) and not given back as over the cap."""
    return [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state != TrialState.WAITING and not t.user_attrs.get(OVER_CAP_ATTR)
    ]


def over_cap(study: optuna.Study, trial: Trial, max_trials: int) -> bool:
    """True when `trial`, just asked, would exceed max_trials: the caller gives it back.

    Each asker counts the others' trials after its own ask is stored, so of two concurrent
    asks for the last place at least the later one sees the earlier and steps back (both
    may, and then ask again): the study never holds more than max_trials taken trials.
    """
    others = [t for t in taken_trials(study) if t.number != trial.number]
    return len(others) >= max_trials


def shared_sampler(
    seed: int, runner_index: int, finished: int, startup_trials: int
) -> optuna.samplers.BaseSampler:
    """The sampler of a distributed search: TPE with the constant liar (running trials of
    every worker count as bad, so concurrent asks spread out), seeded per runner and per
    number of finished trials."""
    mixed = (seed * 1_000_003 + runner_index * 7_919 + finished) % 2**32
    return optuna.samplers.TPESampler(
        seed=mixed, n_startup_trials=startup_trials, constant_liar=True
    )


def trial_sampler(seed: int, finished: int, startup_trials: int) -> optuna.samplers.BaseSampler:
    """A TPE sampler whose randomness depends only on the seed and the trials finished so far."""
    return optuna.samplers.TPESampler(
        seed=(seed * 1_000_003 + finished) % 2**32, n_startup_trials=startup_trials
    )


def startup_trials(max_trials: int) -> int:
    """Random trials before TPE models the space: a third of the trials, within 3..10."""
    return max(3, min(10, max_trials // 3))
