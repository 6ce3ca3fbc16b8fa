"""Mutable state of one search run: our own trial records and the candidate tables.

Optuna only sees small integer and string parameters; the candidate texts, demo sets and
per-example results live here, owned by the `Runner` for the duration of one `run` call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import optuna

from prompttune.contract import (
    Evaluation,
    Example,
    ExampleResult,
    Prompt,
    Scoring,
    SearchSpec,
    TaskSpec,
    Usage,
)
from prompttune.search._budget import CallBudget
from prompttune.search._demos import DemoSet
from prompttune.search._evaluate import CallSettings
from prompttune.search._gateway import LLMGateway, UsageLedger, add_usage
from prompttune.search._guard import Pace, StopGuard
from prompttune.search._labelprobs import ScoringChoice, ScoringTally
from prompttune.search._proposer import InstructionProposer
from prompttune.search._space import PromptKey, SearchSpace, TrialConfig
from prompttune.search._stats import TrialObjective, mean_score
from prompttune.search._types import DatasetSplits

if TYPE_CHECKING:
    from prompttune.search._finalize import Finalist
    from prompttune.search._objective import Objective

COMPLETE, PRUNED, FAILED = "complete", "pruned", "failed"


@dataclass
class TrialRecord:
    """Our own record of one trial; `scored` is the rung reached (examples scored)."""

    number: int
    config: TrialConfig
    key: PromptKey
    prompt: Prompt
    results: list[ExampleResult] = field(default_factory=list)
    intermediate: list[tuple[int, float]] = field(default_factory=list)
    state: str = COMPLETE
    duplicate_of: int | None = None
    # How `score` is computed; None: the plain mean of the results.
    objective: TrialObjective | None = field(default=None, repr=False, compare=False)
    # (results scored, score) of the last `score` computed: results only ever grow.
    _cached: tuple[int, float] = field(default=(-1, 0.0), repr=False, compare=False)

    @property
    def scored(self) -> int:
        return len(self.results)

    @property
    def answered(self) -> int:
        """Examples whose calls succeeded (scored, not failed)."""
        return sum(1 for r in self.results if not r.error)

    @property
    def score(self) -> float:
        """The search objective's value over the results so far (what Optuna, pruning and
        finalist ranking see); computed once per number of results."""
        if self._cached[0] != len(self.results):
            value = self.objective.value if self.objective is not None else mean_score
            self._cached = (len(self.results), value(self.results))
        return self._cached[1]

    def failed_share(self) -> float:
        failed = sum(1 for r in self.results if r.error)
        return failed / len(self.results) if self.results else 0.0


@dataclass
class SearchState:
    """All mutable state of one `Runner.run` call."""

    task: TaskSpec
    splits: DatasetSplits
    spec: SearchSpec
    budget: CallBudget
    task_gateway: LLMGateway
    proposer_gateway: LLMGateway
    ledger: UsageLedger
    proposer: InstructionProposer
    settings: CallSettings
    # The validation examples the search scores (trials, rungs, promotion), in seeded order.
    val_order: tuple[Example, ...]
    rungs: tuple[int, ...]
    space: SearchSpace
    objective: Objective
    guard: StopGuard
    # The validation examples held back to pick the winner; no trial scores them.
    selection_order: tuple[Example, ...] = ()
    records: list[TrialRecord] = field(default_factory=list)
    by_key: dict[PromptKey, TrialRecord] = field(default_factory=dict)
    best: TrialRecord | None = None
    reflected: bool = False
    stop_reason: str = ""
    notes: list[str] = field(default_factory=list)
    # The baseline and finalists validated so far (promotion fills it).
    finalists: list[Finalist] = field(default_factory=list)
    # Usage checkpointed by an earlier process that ran this job before it died.
    prior_usage: Usage = field(default_factory=Usage)
    # The job's Optuna study, where usage is checkpointed after every scored rung.
    study: optuna.Study | None = None
    # Distributed trials: 0 = the primary (runs the whole job), 1.. = a helper (search only).
    runner_index: int = 0
    # What the helpers of a distributed search spent, as they checkpointed it.
    helper_usage: Usage = field(default_factory=Usage)
    # Told of each test scoring (see `RunnerDeps.test_listener`).
    test_listener: Callable[[Prompt, Evaluation, float], None] | None = None
    # How answers are scored, decided once at the start (`choose_scoring`); `settings.scoring`
    # holds the same value. The tally counts label-probability scoring and its fallbacks.
    scoring: ScoringChoice = field(default_factory=lambda: ScoringChoice(Scoring.GENERATION))
    tally: ScoringTally = field(default_factory=ScoringTally)
    # The task model's measured wall time per call, and the wall seconds the final phase
    # needs at that pace as the search stands (`stop_reason` updates it before each trial).
    pace: Pace = field(default_factory=Pace)
    final_seconds: float = 0.0

    @cached_property
    def trial_objective(self) -> TrialObjective:
        """How the trials of this run are scored: the objective over `val_order` examples."""
        return TrialObjective(self.task, self.spec, self.val_order)

    @property
    def instructions(self) -> tuple[str, ...]:
        return self.space.instructions

    @property
    def demo_sets(self) -> tuple[DemoSet, ...]:
        return self.space.demo_sets

    def own_usage(self) -> Usage:
        """This runner's usage of every role (task, proposer, judge), across restarts."""
        return add_usage(self.prior_usage, self.ledger.total())

    def usage(self) -> Usage:
        """Usage of the job: this runner's plus its helpers'."""
        return add_usage(self.own_usage(), self.helper_usage)


def minibatch_rungs(minibatch_size: int, total: int) -> tuple[int, ...]:
    """Example counts of the growing minibatches: m, 2m, 4m, ... capped at `total`."""
    rungs: list[int] = []
    size = max(1, minibatch_size)
    while size < total:
        rungs.append(size)
        size *= 2
    rungs.append(total)
    return tuple(rungs)
