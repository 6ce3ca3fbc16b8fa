"""Label-probability scoring: which scoring a run uses, one example's label probabilities
from a 1-token call, and contextual calibration of a prompt.

A label task (metric label_choice with labels) can be scored from the first generated token's
top log probabilities instead of a generated answer: one call of one token per example, and a
probability per label that calibration can correct. It needs an endpoint that returns log
probabilities and labels whose first words differ; elsewhere generation scoring is used.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import structlog

from prompttune.contract import (
    CONTENT_FREE_INPUTS,
    JobResult,
    Metric,
    Prompt,
    PromptScores,
    Scoring,
    SearchSpec,
    TaskSpec,
    calibration_from,
    label_probabilities,
    labels_distinguishable,
    render,
)
from prompttune.search._errors import FailedPrecondition, LLMCallFailed
from prompttune.search._gateway import LLMGateway
from prompttune.search._protocols import ChatRequest, Embedder
from prompttune.search._scorers import calls_per_example

if TYPE_CHECKING:
    from prompttune.search._state import TrialRecord

log = structlog.get_logger(__name__)

# One token is enough: only the first generated position's alternatives are read.
LABEL_MAX_TOKENS = 1
# Alternatives asked for: the most OpenAI, vLLM and llama.cpp's server return.
TOP_LOGPROBS = 20
TASK_ROLE = "task"


@dataclass
class ScoringTally:
    """Examples scored by label probabilities, and those that fell back to generation
    because no label was among the top tokens. One event loop updates it."""

    label_scored: int = 0
    fallbacks: int = 0


@dataclass(frozen=True)
class ScoringChoice:
    """The scoring a run or an evaluation uses, and in plain words why, when it is not the
    one asked for."""

    scoring: Scoring
    note: str = ""


def label_task(task: TaskSpec) -> bool:
    """A task scored by choosing one of its labels."""
    return task.metric is Metric.LABEL_CHOICE and bool(task.labels)


def evaluation_calls(task: TaskSpec, examples: int) -> int:
    """Calls scoring `examples` examples may need: those of generation scoring, plus for a
    label task one probe and one generation fallback per example."""
    calls = calls_per_example(task) * examples
    return calls + examples + 1 if label_task(task) else calls


def scores_by_label_probabilities(task: TaskSpec, prompt: Prompt, scoring: Scoring) -> bool:
    """Whether `prompt`'s answers to `task` are scored by label probabilities under the
    resolved `scoring` (a reasoning prompt always generates)."""
    return (
        scoring is Scoring.LABEL_PROBABILITIES and label_task(task) and not prompt.format.reasoning
    )


def label_request(
    prompt: Prompt, inputs: Mapping[str, str], embedder: Embedder | None
) -> ChatRequest:
    """The 1-token call whose first token's alternatives give the label probabilities."""
    messages = render(prompt, inputs, embedder)
    return ChatRequest(messages, 0.0, LABEL_MAX_TOKENS, top_logprobs=TOP_LOGPROBS)


async def raw_label_probabilities(
    gateway: LLMGateway, prompt: Prompt, inputs: Mapping[str, str], embedder: Embedder | None
) -> dict[str, float] | None:
    """Label -> probability (uncalibrated) of `prompt` on `inputs`; None when no label is
    among the top tokens or the endpoint returned no log probabilities. Raises
    `LLMCallFailed` and `BudgetExceeded` like `LLMGateway.complete`."""
    response = await gateway.complete(label_request(prompt, inputs, embedder), TASK_ROLE)
    return label_probabilities(prompt.labels, response.top_logprobs)


async def resolve_scoring(
    gateway: LLMGateway, task: TaskSpec, probe: ChatRequest | None, asked: Scoring
) -> ScoringChoice:
    """The scoring to use for `task` when `asked` for: GENERATION as asked; otherwise label
    probabilities when the task is a label task with distinguishable labels and the `probe`
    call (a `label_request`) returns log probabilities.

    AUTO falls back to generation with a note. LABEL_PROBABILITIES that cannot be honoured
    raises `FailedPrecondition` naming search.scoring. A failed probe call counts as no log
    probabilities. Raises `BudgetExceeded` when the probe cannot be paid for.
    """
    if asked is Scoring.GENERATION:
        return ScoringChoice(Scoring.GENERATION)
    reason = _unusable_reason(task)
    if not reason and (probe is None or not await _returns_logprobs(gateway, probe)):
        reason = f"endpoint {gateway.identity} returned no log probabilities"
    if not reason:
        return ScoringChoice(Scoring.LABEL_PROBABILITIES)
    if asked is Scoring.LABEL_PROBABILITIES:
        raise FailedPrecondition(f"search.scoring label_probabilities is not possible: {reason}")
    log.info("search.scoring.generation", reason=reason)
    return ScoringChoice(Scoring.GENERATION, f"generation scoring: {reason}")


def _unusable_reason(task: TaskSpec) -> str:
    if not label_task(task):
        return "the task's metric is not label_choice with labels"
    if not labels_distinguishable(task.labels):
        return "the labels cannot be told apart by their first words"
    return ""


async def _returns_logprobs(gateway: LLMGateway, probe: ChatRequest) -> bool:
    try:
        response = await gateway.complete(probe, TASK_ROLE)
    except LLMCallFailed:
        return False
    return bool(response.top_logprobs)


async def calibrate(gateway: LLMGateway, prompt: Prompt, embedder: Embedder | None) -> Prompt:
    """`prompt` with the contextual calibration estimated from its label probabilities on the
    content-free inputs (each put in every input field): 3 calls, cached like any other.
    Unchanged when none of them put mass on a label. Raises `BudgetExceeded`."""

    async def one(text: str) -> dict[str, float] | None:
        inputs = {name: text for name in prompt.input_fields}
        try:
            return await raw_label_probabilities(gateway, prompt, inputs, embedder)
        except LLMCallFailed:
            return None

    found = await asyncio.gather(*(one(text) for text in CONTENT_FREE_INPUTS))
    usable = [probabilities for probabilities in found if probabilities is not None]
    if not usable:
        return prompt
    return replace(prompt, calibration=calibration_from(usable, CONTENT_FREE_INPUTS))


def calibrate_choices(spec: SearchSpec, scoring: Scoring) -> tuple[bool, ...]:
    """The values the search tries for "calibrate": none unless label probabilities are
    used; True or False when `spec.calibrate` says so; both when it is None."""
    if scoring is not Scoring.LABEL_PROBABILITIES or spec.calibrate is False:
        return (False,)
    return (True,) if spec.calibrate else (False, True)


def scoring_note(choice: ScoringChoice, tally: ScoringTally) -> str:
    """What the result says about scoring: why generation was used, or how many examples
    fell back to generation."""
    if choice.scoring is not Scoring.LABEL_PROBABILITIES or not tally.fallbacks:
        return choice.note
    total = tally.label_scored + tally.fallbacks
    return (
        f"label probabilities; {tally.fallbacks} of {total} scored examples fell back to "
        "generation (no label among the top tokens)"
    )


def with_scoring(result: JobResult, task: TaskSpec, choice: ScoringChoice, note: str) -> JobResult:
    """`result` with its scoring, note, and every score's scoring set (a reasoning prompt's
    scores say generation)."""

    def stamp(scores: PromptScores) -> PromptScores:
        scoring = (
            Scoring.LABEL_PROBABILITIES
            if scores_by_label_probabilities(task, scores.prompt, choice.scoring)
            else Scoring.GENERATION
        )
        return replace(
            scores,
            validation=replace(scores.validation, scoring=scoring),
            test=None if scores.test is None else replace(scores.test, scoring=scoring),
            selection=None
            if scores.selection is None
            else replace(scores.selection, scoring=scoring),
        )

    return replace(
        result,
        baseline=stamp(result.baseline),
        best=stamp(result.best),
        pareto=tuple(stamp(scores) for scores in result.pareto),
        scoring=choice.scoring,
        scoring_note=note,
    )


async def calibrate_records(
    gateway: LLMGateway, records: Iterable[TrialRecord], embedder: Embedder | None
) -> None:
    """Attaches their calibration to calibrated records whose prompt lacks it: records an
    earlier process or another runner scored (their calls are in the response cache)."""
    for record in records:
        if record.key[-1] and record.prompt.calibration is None:
            record.prompt = await calibrate(gateway, record.prompt, embedder)
