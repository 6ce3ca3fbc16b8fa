"""Scoring one prompt on a list of examples through the task gateway."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, replace

from prompttune.contract import (
    Evaluation,
    Example,
    ExampleResult,
    Metric,
    Prompt,
    Scoring,
    TaskSpec,
    apply_calibration,
    calibrated_prediction,
    final_answer,
    render,
)
from prompttune.search._errors import LLMCallFailed
from prompttune.search._gateway import LLMGateway, usage_since
from prompttune.search._labelprobs import (
    ScoringTally,
    raw_label_probabilities,
    scores_by_label_probabilities,
)
from prompttune.search._metrics import extract_prediction
from prompttune.search._protocols import ChatRequest, Embedder
from prompttune.search._scorers import AnswerScorer, MetricScorer
from prompttune.search._stats import make_score

TASK_ROLE = "task"


@dataclass(frozen=True)
class CallSettings:
    """Sampling settings of task-model calls and the bootstrap seed of the scores."""

    temperature: float = 0.0
    max_tokens: int = 32
    seed: int = 0
    # Retrieves the demonstrations of kNN prompts (`Prompt.knn_k`); required for them.
    embedder: Embedder | None = None
    # Scores answers; None: the task's text metric (metrics that need a model must pass one).
    scorer: AnswerScorer | None = None
    # Resolved scoring (never AUTO): LABEL_PROBABILITIES scores label tasks from 1-token calls.
    scoring: Scoring = Scoring.GENERATION
    # Counts label-probability scoring and its fallbacks to generation; None: not counted.
    tally: ScoringTally | None = None


async def score_example(
    gateway: LLMGateway, task: TaskSpec, prompt: Prompt, example: Example, settings: CallSettings
) -> ExampleResult:
    """One example's result; a failed call (task or judge) gives a result with `error` set,
    never a 0 score. Under label-probability scoring the answer is the calibrated argmax
    label; an example with no label among the top tokens is generated instead."""
    if scores_by_label_probabilities(task, prompt, settings.scoring):
        try:
            found = await _label_result(gateway, task, prompt, example, settings)
        except LLMCallFailed as error:
            return ExampleResult(example.id, "", 0.0, error=str(error) or "llm call failed")
        if found is not None:
            return found
        if settings.tally is not None:
            settings.tally.fallbacks += 1
    return await _generated_result(gateway, task, prompt, example, settings)


async def _label_result(
    gateway: LLMGateway, task: TaskSpec, prompt: Prompt, example: Example, settings: CallSettings
) -> ExampleResult | None:
    raw = await raw_label_probabilities(gateway, prompt, example.inputs, settings.embedder)
    if raw is None:
        return None
    if settings.tally is not None:
        settings.tally.label_scored += 1
    probabilities = apply_calibration(prompt.calibration, raw)
    predicted = calibrated_prediction(prompt.calibration, raw)
    score = await (settings.scorer or MetricScorer(task)).score(example, predicted)
    return ExampleResult(
        example.id, predicted, score, prediction=predicted, label_probabilities=probabilities
    )


async def _generated_result(
    gateway: LLMGateway, task: TaskSpec, prompt: Prompt, example: Example, settings: CallSettings
) -> ExampleResult:
    request = ChatRequest(
        render(prompt, example.inputs, settings.embedder),
        settings.temperature,
        settings.max_tokens,
    )
    scorer = settings.scorer or MetricScorer(task)
    answer = ""
    try:
        answer = (await gateway.complete(request, TASK_ROLE)).text
        score = await scorer.score(example, final_answer(prompt, answer))
    except LLMCallFailed as error:
        return ExampleResult(example.id, answer, 0.0, error=str(error) or "llm call failed")
    prediction = ""
    if task.metric is Metric.LABEL_CHOICE:
        prediction = extract_prediction(task, final_answer(prompt, answer))
    return ExampleResult(example.id, answer, score, prediction=prediction)


async def score_examples(
    gateway: LLMGateway,
    task: TaskSpec,
    prompt: Prompt,
    examples: Sequence[Example],
    settings: CallSettings,
) -> tuple[ExampleResult, ...]:
    """Results in example order; concurrency is bounded by the gateway.

    Raises `BudgetExceeded` (after the in-flight calls finish) when any call hit a cap.
    """
    outcomes = await asyncio.gather(
        *(score_example(gateway, task, prompt, ex, settings) for ex in examples),
        return_exceptions=True,
    )
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return tuple(o for o in outcomes if isinstance(o, ExampleResult))


async def evaluate_prompt(
    gateway: LLMGateway,
    task: TaskSpec,
    prompt: Prompt,
    examples: Sequence[Example],
    settings: CallSettings | None = None,
) -> Evaluation:
    """Score `prompt` on `examples`: failed calls are excluded from the mean and counted.
    The evaluation's usage is what the gateway's ledger (task and, when shared, judge
    calls) spent meanwhile.

    Raises `BudgetExceeded` when the job's budget cannot pay for the remaining calls.
    """
    settings = settings or CallSettings()
    before = gateway.usage()
    results = await score_examples(gateway, task, prompt, examples, settings)
    usage = usage_since(before, gateway.usage())
    scoring = (
        Scoring.LABEL_PROBABILITIES
        if scores_by_label_probabilities(task, prompt, settings.scoring)
        else Scoring.GENERATION
    )
    score = replace(make_score(task, examples, results, settings.seed), scoring=scoring)
    return Evaluation(score, results, usage)
