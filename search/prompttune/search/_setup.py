"""Everything a run starts from: its dependencies, its gateways and budget, its state."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import structlog

from prompttune.contract import Evaluation, Prompt, SearchSpec, TaskSpec
from prompttune.search._budget import BudgetCaps, CallBudget, shared_caps
from prompttune.search._estimate import (
    final_calls,
    reasoning_enabled,
    reasoning_max_tokens,
    selection_size,
)
from prompttune.search._evaluate import CallSettings
from prompttune.search._failures import FailureTally
from prompttune.search._flow import GatewayRegistry, JobRates
from prompttune.search._gateway import EndpointPolicy, LLMGateway, UsageLedger
from prompttune.search._guard import StopGuard
from prompttune.search._labelprobs import (
    ScoringTally,
    calibrate_choices,
    label_request,
    resolve_scoring,
)
from prompttune.search._objective import objective_for
from prompttune.search._proposer import InstructionProposer, ProposerSettings
from prompttune.search._protocols import ChatModel, Embedder, ResponseCache, SearchObserver
from prompttune.search._scorers import build_scorer
from prompttune.search._space import SearchSpace
from prompttune.search._state import SearchState, minibatch_rungs
from prompttune.search._types import DatasetSplits

log = structlog.get_logger(__name__)

# How often a running job asks its observer whether it was cancelled.
STOP_POLL_SECONDS = 0.2

TestListener = Callable[[Prompt, Evaluation, float], None]
"""Told of each prompt scored on the test split: the prompt, its per-example evaluation
and the wall seconds the scoring took. Called on the runner's event loop; must not block."""


@dataclass(frozen=True)
class RunnerDeps:
    """Everything a `Runner` talks to, passed in by the service (or the tests)."""

    task_model: ChatModel
    proposer_model: ChatModel
    embedder: Embedder
    observer: SearchObserver
    cache: ResponseCache | None = None
    task_temperature: float = 0.0
    task_max_tokens: int = 32
    proposer_max_tokens: int = 80
    task_max_concurrency: int = 4
    proposer_max_concurrency: int = 2
    clock: Callable[[], float] = time.monotonic
    # Process-wide flow control shared by all jobs, and per-endpoint limits and prices.
    registry: GatewayRegistry | None = None
    task_policy: EndpointPolicy | None = None
    proposer_policy: EndpointPolicy | None = None
    # Grades answers when the task's metric is llm_judge (role "judge").
    judge_model: ChatModel | None = None
    judge_policy: EndpointPolicy | None = None
    judge_max_concurrency: int = 4
    # Seconds between cancellation polls while calls are in flight; 0 = only between steps.
    stop_poll_seconds: float = STOP_POLL_SECONDS
    # Multi-model jobs compare models on the test examples each prompt was scored on.
    test_listener: TestListener | None = None


@dataclass(frozen=True)
class JobGateways:
    """The gateways of one job; they share its budget, usage ledger and failure tally."""

    task: LLMGateway
    proposer: LLMGateway
    judge: LLMGateway | None
    ledger: UsageLedger


def job_gateways(deps: RunnerDeps, budget: CallBudget, use_cache: bool) -> JobGateways:
    """Task, proposer and (for llm_judge) judge gateways sharing `budget`, one ledger, one
    failure tally and the job's own rate limits."""
    ledger, failures, rates = UsageLedger(), FailureTally(), JobRates(deps.clock)
    roles = [
        (deps.task_model, deps.task_max_concurrency, deps.task_policy),
        (deps.proposer_model, deps.proposer_max_concurrency, deps.proposer_policy),
        (deps.judge_model, deps.judge_max_concurrency, deps.judge_policy),
    ]
    task, proposer, judge = (
        None
        if model is None
        else LLMGateway(
            model,
            budget,
            deps.cache,
            concurrency,
            use_cache,
            policy=policy,
            registry=deps.registry,
            ledger=ledger,
            failures=failures,
            job_rates=rates,
        )
        for model, concurrency, policy in roles
    )
    assert task is not None and proposer is not None
    return JobGateways(task, proposer, judge, ledger)


def total_caps(spec: SearchSpec) -> BudgetCaps:
    budget = spec.budget
    return BudgetCaps(budget.max_llm_calls, budget.max_tokens, budget.max_cost_usd)


def runner_caps(
    task: TaskSpec, splits: DatasetSplits, spec: SearchSpec, runner_index: int
) -> BudgetCaps:
    """The job's caps (parallelism 1), or this runner's share of them."""
    held = final_calls(task, splits, spec)
    return shared_caps(total_caps(spec), held, spec.parallelism, runner_index)


def new_budget(
    deps: RunnerDeps, task: TaskSpec, splits: DatasetSplits, spec: SearchSpec, runner_index: int
) -> CallBudget:
    caps = runner_caps(task, splits, spec, runner_index)
    budget = CallBudget(
        caps.max_llm_calls,
        caps.max_tokens,
        spec.budget.max_wall_seconds,
        deps.clock,
        max_cost_usd=caps.max_cost_usd,
    )
    if runner_index == 0:
        # the search phase must not starve promotion and testing
        budget.hold_calls(final_calls(task, splits, spec))
    return budget


def new_state(
    deps: RunnerDeps, task: TaskSpec, splits: DatasetSplits, spec: SearchSpec, runner_index: int
) -> SearchState:
    budget = new_budget(deps, task, splits, spec, runner_index)
    val_order = sorted(splits.validation, key=lambda ex: ex.id)
    random.Random(f"{spec.seed}:validation").shuffle(val_order)
    # the tail of the seeded order picks the winner; the search never sees it
    searched = len(val_order) - selection_size(spec, len(val_order))
    gateways = job_gateways(deps, budget, not spec.disable_cache)
    proposer_settings = ProposerSettings(max_tokens=deps.proposer_max_tokens)
    scorer = build_scorer(task, gateways.judge, deps.embedder)
    guard = StopGuard(
        deps.observer, budget.elapsed, spec.budget.max_wall_seconds, deps.stop_poll_seconds
    )
    tally = ScoringTally()
    return SearchState(
        task=task,
        splits=splits,
        spec=spec,
        budget=budget,
        task_gateway=gateways.task,
        proposer_gateway=gateways.proposer,
        ledger=gateways.ledger,
        proposer=InstructionProposer(gateways.proposer, proposer_settings, deps.embedder),
        settings=CallSettings(
            deps.task_temperature,
            deps.task_max_tokens,
            spec.seed,
            deps.embedder,
            scorer,
            tally=tally,
        ),
        val_order=tuple(val_order[:searched]),
        selection_order=tuple(val_order[searched:]),
        runner_index=runner_index,
        rungs=minibatch_rungs(spec.minibatch_size, searched),
        reflected=spec.num_reflection_candidates <= 0,  # no round to wait for
        space=SearchSpace(
            instructions=(task.instruction,),
            demo_sets=(),
            max_demos=0,
            answer_prefix=f"{task.output_name.capitalize()}:",
            reasoning=reasoning_enabled(task, spec),
            reasoning_max_tokens=reasoning_max_tokens(spec, deps.task_max_tokens, len(val_order)),
        ),
        objective=objective_for(spec),
        guard=guard,
        test_listener=deps.test_listener,
        tally=tally,
    )


async def choose_scoring(state: SearchState) -> None:
    """Decides once how the run scores answers (`SearchSpec.scoring`; AUTO probes the
    baseline prompt on the first validation example) and records it on `state`: the call
    settings, and the "calibrate" choices of the search space. Raises `FailedPrecondition`
    when label probabilities were asked for and cannot be used."""
    _, baseline = state.space.baseline_for(state.task)
    embedder = state.settings.embedder
    probe = (
        label_request(baseline, state.val_order[0].inputs, embedder) if state.val_order else None
    )
    choice = await resolve_scoring(state.task_gateway, state.task, probe, state.spec.scoring)
    state.scoring = choice
    state.settings = replace(state.settings, scoring=choice.scoring)
    state.space.calibrate_choices = calibrate_choices(state.spec, choice.scoring)
    log.info("search.scoring", scoring=choice.scoring.value, note=choice.note)
