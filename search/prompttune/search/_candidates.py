"""The proposing phase: instruction candidates, demonstration sets (a bootstrapped set paid
through the task gateway among them) and the trials queued first."""

from __future__ import annotations

from dataclasses import replace

import optuna
import structlog

from prompttune.search._demos import (
    DemoSet,
    bootstrap_candidates,
    bootstrapped_demo_set,
    build_demo_sets,
    knn_demo_set,
)
from prompttune.search._errors import BudgetExceeded
from prompttune.search._evaluate import score_examples
from prompttune.search._protocols import Embedder
from prompttune.search._resume import startup_trials
from prompttune.search._state import SearchState

log = structlog.get_logger(__name__)


async def propose(state: SearchState, embedder: Embedder) -> None:
    """Fills the search space: proposed instructions, static, bootstrapped and kNN demo sets."""
    spec, train, space = state.spec, state.splits.train, state.space
    space.instructions = await state.proposer.propose(
        state.task, train, spec.num_instruction_candidates, spec.seed
    )
    sets = list(
        build_demo_sets(state.task, train, embedder, spec.num_demo_sets, spec.max_demos, spec.seed)
    )
    if spec.max_demos > 0:
        bootstrapped = await _bootstrap(state)
        knn = knn_demo_set(train, spec.seed)
        sets.extend(s for s in (bootstrapped, knn) if s is not None)
    space.demo_sets = tuple(sets)
    space.max_demos = max((min(len(s.examples), spec.max_demos) for s in sets), default=0)
    log.info(
        "search.candidates",
        instructions=len(space.instructions),
        demo_sets=[s.name for s in sets],
    )


async def _bootstrap(state: SearchState) -> DemoSet | None:
    """Train examples the task model answers correctly under the baseline prompt."""
    tried = bootstrap_candidates(state.splits.train, state.spec.max_demos, state.spec.seed)
    _, prompt = state.space.prompt_for(state.task, state.space.baseline())
    try:
        results = await score_examples(
            state.task_gateway, state.task, prompt, tried, state.settings
        )
    except BudgetExceeded:
        return None
    correct = {r.id for r in results if not r.error and r.score >= 1.0}
    return bootstrapped_demo_set(state.task, tried, correct, state.spec.max_demos)


def warm_start(state: SearchState, study: optuna.Study) -> None:
    """Queues the seed prompt with each demo set (all its demos) right after the baseline:
    demo-only candidates, the strongest lever for small models, are measured first and
    the sampler learns from them. At most all but one of the startup trials' demo sets, so
    random exploration remains. When calibration is searched, each is followed by its
    calibrated twin: the same label calls, which the response cache answers, plus three
    content-free calls; a small model's label bias is often what holds a demo set back.
    Idempotent: a resumed run finds them in the study."""
    space = state.space
    count = len(space.demo_sets) if space.max_demos else 0
    seed = space.baseline()
    configs = [replace(seed, demo_set=i, n_demos=space.max_demos) for i in range(count)]
    twins = True in space.calibrate_choices and False in space.calibrate_choices
    for config in configs[: startup_trials(state.spec.budget.max_trials) - 1]:
        study.enqueue_trial(space.params(config), skip_if_exists=True)
        if twins:
            study.enqueue_trial(space.params(replace(config, calibrate=True)), skip_if_exists=True)
