"""What a search optimises: the minibatch score alone, or score and prompt length together.

The one place that knows the difference (`objective_for`). Single-objective studies prune
weak trials between rungs with successive halving. Optuna cannot prune multi-objective
trials, so each is scored on the first rung only; its minibatch Pareto front (score up,
prompt tokens down) is promoted first, and twice as many finalists are validated.
"""

from __future__ import annotations

from typing import Protocol

import optuna
from optuna.trial import Trial, TrialState

from prompttune.contract import SearchSpec, prompt_token_count
from prompttune.search._state import COMPLETE, PRUNED, TrialRecord


class Objective(Protocol):
    """How trials are scored, reported to Optuna and ranked for promotion."""

    def create_study(
        self,
        name: str,
        storage: optuna.storages.BaseStorage,
        sampler: optuna.samplers.BaseSampler,
        first_rung: int,
    ) -> optuna.Study: ...

    def rungs(self, rungs: tuple[int, ...]) -> tuple[int, ...]:
        """The minibatch sizes a trial is scored on."""
        ...

    def stop_early(self, trial: Trial, record: TrialRecord, size: int, total: int) -> bool:
        """Reports the rung just scored; True when the trial stops here (pruned)."""
        ...

    def tell(self, study: optuna.Study, trial: Trial, record: TrialRecord) -> None: ...

    def finalist_count(self, num_finalists: int) -> int: ...

    def rank(self, records: list[TrialRecord]) -> list[TrialRecord]:
        """Usable records, best finalist candidates first."""
        ...


def _by_depth(records: list[TrialRecord]) -> list[TrialRecord]:
    return sorted(records, key=lambda r: (-r.scored, -r.score, r.number))


class SingleObjective:
    """Maximise the minibatch score; successive halving prunes between rungs."""

    def create_study(
        self,
        name: str,
        storage: optuna.storages.BaseStorage,
        sampler: optuna.samplers.BaseSampler,
        first_rung: int,
    ) -> optuna.Study:
        return optuna.create_study(
            study_name=name,
            storage=storage,
            load_if_exists=True,
            sampler=sampler,
            pruner=optuna.pruners.SuccessiveHalvingPruner(
                min_resource=first_rung, reduction_factor=2
            ),
            direction="maximize",
        )

    def rungs(self, rungs: tuple[int, ...]) -> tuple[int, ...]:
        return rungs

    def stop_early(self, trial: Trial, record: TrialRecord, size: int, total: int) -> bool:
        trial.report(record.score, size)
        if size < total and trial.should_prune():
            record.state = PRUNED
            return True
        return False

    def tell(self, study: optuna.Study, trial: Trial, record: TrialRecord) -> None:
        if record.duplicate_of is not None:
            for step, value in record.intermediate:
                trial.report(value, step)
        if record.state == COMPLETE:
            study.tell(trial, record.score)
        elif record.state == PRUNED:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, state=TrialState.FAIL)

    def finalist_count(self, num_finalists: int) -> int:
        return num_finalists

    def rank(self, records: list[TrialRecord]) -> list[TrialRecord]:
        return _by_depth(records)


class MultiObjective:
    """Maximise the minibatch score and minimise prompt tokens (no pruning)."""

    def create_study(
        self,
        name: str,
        storage: optuna.storages.BaseStorage,
        sampler: optuna.samplers.BaseSampler,
        first_rung: int,
    ) -> optuna.Study:
        return optuna.create_study(
            study_name=name,
            storage=storage,
            load_if_exists=True,
            sampler=sampler,
            directions=["maximize", "minimize"],
        )

    def rungs(self, rungs: tuple[int, ...]) -> tuple[int, ...]:
        return rungs[:1]

    def stop_early(self, trial: Trial, record: TrialRecord, size: int, total: int) -> bool:
        return False

    def tell(self, study: optuna.Study, trial: Trial, record: TrialRecord) -> None:
        if record.state == COMPLETE:
            study.tell(trial, [record.score, float(prompt_token_count(record.prompt))])
        else:
            study.tell(trial, state=TrialState.FAIL)

    def finalist_count(self, num_finalists: int) -> int:
        return 2 * num_finalists

    def rank(self, records: list[TrialRecord]) -> list[TrialRecord]:
        front = minibatch_front(records)
        return front + [r for r in _by_depth(records) if r not in front]


def minibatch_front(records: list[TrialRecord]) -> list[TrialRecord]:
    """Records not dominated on (minibatch score up, prompt tokens down)."""
    points = sorted(
        ((-r.score, prompt_token_count(r.prompt), r.number, r) for r in records),
        key=lambda p: p[:3],
    )
    front: list[TrialRecord] = []
    fewest_tokens: int | None = None
    for _, tokens, _, record in points:  # best score first: keep strictly shorter prompts
        if fewest_tokens is None or tokens < fewest_tokens:
            front.append(record)
            fewest_tokens = tokens
    return front


def objective_for(spec: SearchSpec) -> Objective:
    return MultiObjective() if spec.multi_objective else SingleObjective()
