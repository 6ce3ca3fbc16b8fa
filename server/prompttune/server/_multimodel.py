"""Jobs with several target models: one search per model, then a frontier and a
recommendation.

The models run one after another in request order on the job's splits, response cache and
proposer (unset: the first model proposes for all, so every model's instruction proposals
after the first come from the cache). Each budget cap is split evenly between the models
still to run: what a model leaves unused (calls, tokens, cost, wall time) goes to the models
after it. A
model whose search fails keeps its entry, marked (stop_reason "failed", the cause in its
summary); the job fails only when every model failed. Cancelling stops them all.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import structlog

from prompttune.contract import (
    Budget,
    BudgetUsed,
    Evaluation,
    JobResult,
    JobSpec,
    ModelResult,
    ModelSpec,
    PhaseChanged,
    Prompt,
    PromptScores,
    Score,
    SearchEvent,
    SearchSpec,
    TaskSpec,
    Usage,
)
from prompttune.search import (
    ModelOutcome,
    PromptTuneError,
    SearchCancelled,
    SearchFailed,
    SearchObserver,
    TestListener,
    add_usage,
    on_frontier,
    recommend,
)

log = structlog.get_logger(__name__)

# (spec of one model's search, its observer, its test listener, its study name) -> result
RunModel = Callable[[JobSpec, SearchObserver, TestListener, str], Awaitable[JobResult]]


def share_budget(budget: Budget, count: int) -> Budget:
    """Each cap divided by `count` (0 = unlimited stays 0; a limited cap stays at least 1)."""
    return dataclasses.replace(
        budget,
        max_llm_calls=max(1, budget.max_llm_calls // count),
        max_tokens=max(1, budget.max_tokens // count) if budget.max_tokens else 0,
        max_cost_usd=budget.max_cost_usd / count,
        max_wall_seconds=budget.max_wall_seconds / count,
    )


def remaining_share(budget: Budget, used: Usage, wall_used: float, models_left: int) -> Budget:
    """The budget of the next of `models_left` models: what the models before it left of
    each cap (`used`, `wall_used` seconds), split evenly (unlimited caps stay unlimited)."""
    left = dataclasses.replace(
        budget,
        max_llm_calls=max(1, budget.max_llm_calls - used.llm_calls) if budget.max_llm_calls else 0,
        max_tokens=max(1, budget.max_tokens - used.tokens) if budget.max_tokens else 0,
        max_cost_usd=max(1e-9, budget.max_cost_usd - used.cost_usd) if budget.max_cost_usd else 0.0,
        max_wall_seconds=max(1.0, budget.max_wall_seconds - wall_used)
        if budget.max_wall_seconds
        else 0.0,
    )
    return share_budget(left, models_left)


def model_search(spec: JobSpec) -> SearchSpec:
    """The search settings of each model of a multi-model job: its budget share, the shared
    proposer, and no helpers (each model's search runs on the claiming worker)."""
    models = spec.target_models
    return dataclasses.replace(
        spec.search,
        budget=share_budget(spec.search.budget, len(models)),
        proposer=spec.search.proposer or models[0],
        parallelism=1,
    )


def study_name(job_id: str, index: int) -> str:
    """The Optuna study of model `index`; the first keeps the job's own, as single-model
    jobs do."""
    return job_id if index == 0 else f"{job_id}.model{index}"


class ModelObserver:
    """Passes one model's events on: phases name the model ("searching model 2/2 (gemma)")
    and usage includes the models before it."""

    def __init__(self, inner: SearchObserver, position: str, usage_before: Usage) -> None:
        self._inner = inner
        self._position = position
        self._usage_before = usage_before

    def on_event(self, event: SearchEvent) -> None:
        if isinstance(event, PhaseChanged):
            event = PhaseChanged(f"{event.phase} {self._position}")
        elif isinstance(event, BudgetUsed):
            event = BudgetUsed(add_usage(self._usage_before, event.usage))
        self._inner.on_event(event)

    def cancelled(self) -> bool:
        return self._inner.cancelled()


@dataclass
class ModelRun:
    """One model's search: its result (partial when it failed) or failure cause, and its test
    scorings (prompt, evaluation, wall seconds)."""

    model: ModelSpec
    result: JobResult | None = None
    error: str = ""
    tests: list[tuple[Prompt, Evaluation, float]] = field(default_factory=list)

    def on_test_scored(self, prompt: Prompt, evaluation: Evaluation, seconds: float) -> None:
        self.tests.append((prompt, evaluation, seconds))

    def best_test(self) -> tuple[Evaluation, float] | None:
        """The evaluation of the result's best prompt on the test split, and its seconds."""
        if self.result is None:
            return None
        matches = [(e, s) for p, e, s in self.tests if p == self.result.best.prompt]
        return matches[-1] if matches else None


async def run_models(
    spec: JobSpec, job_id: str, observer: SearchObserver, run_model: RunModel
) -> JobResult:
    """Searches every target model of `spec` and combines the results. Raises
    SearchCancelled (partial: what the models found so far) and SearchFailed when every
    model failed."""
    models, search = spec.target_models, model_search(spec)
    runs = [ModelRun(model) for model in models]
    started = time.monotonic()
    for index, run in enumerate(runs):
        position = f"model {index + 1}/{len(models)} ({run.model.label})"
        before = add_usage(*(r.result.usage for r in runs if r.result is not None))
        budget = remaining_share(
            spec.search.budget, before, time.monotonic() - started, len(models) - index
        )
        one = dataclasses.replace(
            spec, model=run.model, models=(), search=dataclasses.replace(search, budget=budget)
        )
        watcher = ModelObserver(observer, position, before)
        try:
            study = study_name(job_id, index)
            run.result = await run_model(one, watcher, run.on_test_scored, study)
        except SearchCancelled as cancelled:
            run.result = cancelled.partial
            raise SearchCancelled(partial=_partial(spec, runs)) from cancelled
        except SearchFailed as failed:
            _mark_failed(run, failed.cause, failed.partial)
        except PromptTuneError as error:  # e.g. not even the baseline fit the budget share
            _mark_failed(run, str(error), None)
    if all(run.error for run in runs):
        cause = "; ".join(f"{r.model.label}: {r.error}" for r in runs)
        raise SearchFailed(f"every model failed: {cause}", _partial(spec, runs))
    return combine(spec.task, runs, spec.search.seed)


def _mark_failed(run: ModelRun, cause: str, partial: JobResult | None) -> None:
    log.warning("job.model_failed", model=run.model.label, error=cause)
    run.error = cause
    run.result = partial


def _partial(spec: JobSpec, runs: Sequence[ModelRun]) -> JobResult | None:
    if not any(run.result is not None for run in runs):
        return None
    return dataclasses.replace(combine(spec.task, runs, spec.search.seed), partial=True)


def _failed_result(task: TaskSpec, run: ModelRun) -> JobResult:
    """A failed model's entry: its partial result, or an empty one, marked failed."""
    summary = f"failed: {run.error}"
    if run.result is not None:
        summary = f"{summary}; {run.result.summary}"
        return dataclasses.replace(run.result, partial=True, stop_reason="failed", summary=summary)
    nothing = PromptScores(Prompt(task.instruction), Score(0.0, 0.0, 0.0, 0))
    return JobResult(nothing, nothing, False, summary, Usage(), 0, 0, 0.0, "failed", partial=True)


def _outcome(run: ModelRun, job_tested: bool) -> ModelOutcome:
    name = run.model.label
    if run.error or run.result is None:
        return ModelOutcome(name, failed=True)
    best = run.result.best
    score = best.test.mean if best.test is not None else best.validation.mean
    scores: dict[str, float] = {}
    seconds = 0.0
    tested = run.best_test()
    if tested is not None:
        evaluation, wall = tested
        scores = {r.id: r.score for r in evaluation.results if not r.error}
        seconds = wall / len(evaluation.results) if evaluation.results else 0.0
    task_usage = run.result.usage_by_role.get("task", Usage())
    per_call = task_usage.cost_usd / task_usage.llm_calls if task_usage.llm_calls else 0.0
    untested = job_tested and best.test is None
    return ModelOutcome(name, score, scores, per_call, seconds, untested=untested)


def combine(task: TaskSpec, runs: Sequence[ModelRun], seed: int) -> JobResult:
    """The job's result: one entry per model, the frontier and the recommendation; baseline
    and best are the recommended model's, usage the whole job's."""
    job_tested = any(run.result is not None and run.result.best.test for run in runs)
    outcomes = [_outcome(run, job_tested) for run in runs]
    frontier = on_frontier(outcomes)
    recommendation = recommend(outcomes, seed)
    entries = tuple(
        ModelResult(
            model=run.model,
            result=_failed_result(task, run) if outcome.failed else _own(run),
            seconds_per_example=outcome.seconds_per_example,
            on_frontier=flag,
        )
        for run, outcome, flag in zip(runs, outcomes, frontier, strict=True)
    )
    chosen = entries[recommendation.model_index if recommendation else 0].result
    results = [entry.result for entry in entries]
    return dataclasses.replace(
        chosen,
        usage=add_usage(*(r.usage for r in results)),
        usage_by_role=_roles(results),
        wall_seconds=sum(r.wall_seconds for r in results),
        models=entries,
        recommendation=recommendation,
    )


def _own(run: ModelRun) -> JobResult:
    assert run.result is not None
    return run.result


def _roles(results: Sequence[JobResult]) -> dict[str, Usage]:
    roles: dict[str, Usage] = {}
    for result in results:
        for role, usage in result.usage_by_role.items():
            roles[role] = add_usage(roles.get(role, Usage()), usage)
    return dict(sorted(roles.items()))
