"""Answer scorers: the task's metric applied to one answer, including metrics that need a
model (an LLM judge through the gateway, role "judge") or sentence embeddings.

A scorer raises `LLMCallFailed` when it cannot score (judge call failed after retries, or its
verdict has no readable score); the example then counts as failed, never as a 0 score.
"""

from __future__ import annotations

import asyncio
import re
from typing import Protocol

import numpy as np

from prompttune.contract import ChatMessage, Example, Metric, TaskSpec, format_inputs
from prompttune.search._errors import FailedPrecondition, LLMCallFailed
from prompttune.search._gateway import LLMGateway
from prompttune.search._metrics import score_answer
from prompttune.search._protocols import ChatRequest, Embedder

JUDGE_ROLE = "judge"
JUDGE_MAX_TOKENS = 64
MODEL_METRICS = frozenset({Metric.LLM_JUDGE, Metric.EMBEDDING_SIMILARITY})

_NUM = r"(\d+(?:\.\d+)?)"
_SCORE = re.compile(rf"\b(?:score|rating|grade)\b\W{{0,3}}(?:is\s+|of\s+)?{_NUM}", re.IGNORECASE)
_FRACTION = re.compile(rf"{_NUM}\s*(?:/|out\s+of)\s*{_NUM}", re.IGNORECASE)
_PERCENT = re.compile(rf"{_NUM}\s*%")
_VERDICT = re.compile(r"\b(yes|correct|pass|true|no|incorrect|wrong|fail|false)\b", re.IGNORECASE)
_POSITIVE = frozenset({"yes", "correct", "pass", "true"})


class AnswerScorer(Protocol):
    """Scores one answer to one example in [0, 1]; raises `LLMCallFailed` when it cannot."""

    async def score(self, example: Example, answer: str) -> float: ...


def _unit(value: float) -> float:
    return min(1.0, max(0.0, value))


def _scaled(value: float) -> float:
    """A bare grade on the scale the number suggests: [0, 1], 0-5, 0-10 or 0-100."""
    for scale in (1.0, 5.0, 10.0, 100.0):
        if value <= scale:
            return value / scale
    return 1.0


def parse_judge_score(text: str) -> float | None:
    """The grade in a judge's free-text verdict, in [0, 1], or None when there is none.

    Reads, in this order: a fraction ("Score: 4/5", "7 out of 10"; the last one wins), a
    labelled grade ("Score: 4" on a 0-5 scale, "Rating: 0.8"), a percentage, and finally the
    first verdict word ("yes"/"correct"/"pass" -> 1, "no"/"incorrect"/"wrong"/"fail" -> 0).
    """
    fractions = [m for m in _FRACTION.finditer(text) if float(m.group(2)) > 0]
    if fractions:
        top, bottom = fractions[-1].groups()
        return _unit(float(top) / float(bottom))
    labelled = _SCORE.findall(text)
    if labelled:
        return _unit(_scaled(float(labelled[-1])))
    percent = _PERCENT.search(text)
    if percent:
        return _unit(float(percent.group(1)) / 100.0)
    verdict = _VERDICT.search(text)
    if verdict:
        return float(verdict.group(1).lower() in _POSITIVE)
    return None


class MetricScorer:
    """The task's text metric (exact match, label choice, ...): pure, no calls."""

    def __init__(self, task: TaskSpec) -> None:
        if task.metric in MODEL_METRICS:
            raise FailedPrecondition(f"metric {task.metric.value} needs a model to score")
        self._task = task

    async def score(self, example: Example, answer: str) -> float:
        return score_answer(self._task, answer, example.output)


class EmbeddingScorer:
    """Cosine similarity of answer and expected output embeddings, clipped to [0, 1]."""

    def __init__(self, embedder: Embedder) -> None:
        self._embedder = embedder

    async def score(self, example: Example, answer: str) -> float:
        if not answer.strip():
            return 0.0
        vectors = await asyncio.to_thread(self._embedder.embed, [answer, example.output])
        return _unit(float(np.dot(vectors[0], vectors[1])))


class JudgeScorer:
    """Asks a judge model to grade the answer against the rubric and the reference answer.

    Judge calls go through `gateway` with role "judge" at temperature 0, so they share the
    job's budget and are cached like any other call.
    """

    def __init__(self, task: TaskSpec, gateway: LLMGateway) -> None:
        if not task.rubric.strip():
            raise FailedPrecondition("metric llm_judge needs a rubric")
        self._task = task
        self._gateway = gateway

    def request(self, example: Example, answer: str) -> ChatRequest:
        task = self._task
        system = (
            "You grade answers strictly and fairly.\n"
            f"Task: {task.description}\nRubric: {task.rubric}\n"
            "Give a one-sentence reason, then end with exactly 'Score: N/5', where 0 means "
            "wrong or useless and 5 means fully correct."
        )
        user = (
            f"Input:\n{format_inputs(example.inputs, task.input_fields)}\n\n"
            f"Reference answer:\n{example.output}\n\nAnswer to grade:\n{answer}"
        )
        messages = (ChatMessage("system", system), ChatMessage("user", user))
        return ChatRequest(messages, temperature=0.0, max_tokens=JUDGE_MAX_TOKENS)

    async def score(self, example: Example, answer: str) -> float:
        response = await self._gateway.complete(self.request(example, answer), JUDGE_ROLE)
        grade = parse_judge_score(response.text)
        if grade is None:
            raise LLMCallFailed(
                f"judge verdict has no score: {response.text[:80]!r}", transient=False
            )
        return grade


def build_scorer(
    task: TaskSpec, judge: LLMGateway | None = None, embedder: Embedder | None = None
) -> AnswerScorer:
    """The scorer of `task.metric`; raises `FailedPrecondition` when its model is missing."""
    if task.metric is Metric.LLM_JUDGE:
        if judge is None:
            raise FailedPrecondition("metric llm_judge needs a judge model")
        return JudgeScorer(task, judge)
    if task.metric is Metric.EMBEDDING_SIMILARITY:
        if embedder is None:
            raise FailedPrecondition("metric embedding_similarity needs an embedder")
        return EmbeddingScorer(embedder)
    return MetricScorer(task)


def calls_per_example(task: TaskSpec) -> int:
    """LLM calls needed to score one example: the task call, plus the judge's."""
    return 2 if task.metric is Metric.LLM_JUDGE else 1
