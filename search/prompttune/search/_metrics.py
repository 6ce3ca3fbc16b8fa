"""Metric functions: how a model's free-text answer is scored against the expected output.

A small model rarely answers with the bare label ("The sentiment of this review is Positive."),
so every metric extracts the prediction from free text before comparing. All functions are
pure and thread-safe; scores are in [0, 1].
"""

from __future__ import annotations

import collections
import re
import string

from prompttune.contract import Metric, TaskSpec
from prompttune.search._errors import FailedPrecondition

_SURROUNDING = string.punctuation + string.whitespace + "“”‘’«»"
_NUMBER = re.compile(r"[-+]?(?:\d[\d,]*(?:\.\d+)?|\.\d+)")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NUMERIC_TOLERANCE = 1e-6


def normalize_answer(text: str) -> str:
    """Lower case, collapse whitespace, strip surrounding punctuation and quotes."""
    return " ".join(text.lower().split()).strip(_SURROUNDING)


def choose_label(answer: str, labels: tuple[str, ...]) -> str | None:
    """The label whose first whole-word, case-insensitive occurrence is earliest in `answer`.

    Ties (one label a prefix of another at the same position) go to the longest label.
    Returns None when no label occurs.
    """
    best: tuple[int, int] | None = None
    chosen: str | None = None
    for label in labels:
        if not label.strip():
            continue
        match = re.search(rf"(?<!\w){re.escape(label.strip())}(?!\w)", answer, re.IGNORECASE)
        if match is None:
            continue
        rank = (match.start(), -len(label))
        if best is None or rank < best:
            best, chosen = rank, label
    return chosen


def last_number(text: str) -> float | None:
    """The last number in `text` (thousands separators removed), or None."""
    for token in reversed(_NUMBER.findall(text)):
        try:
            return float(token.replace(",", ""))
        except ValueError:
            continue
    return None


def _f1_tokens(text: str) -> list[str]:
    lowered = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return _ARTICLES.sub(" ", lowered).split()


def token_f1(answer: str, expected: str) -> float:
    """SQuAD-style token F1 after lower-casing and removing punctuation and articles."""
    predicted, gold = _f1_tokens(answer), _f1_tokens(expected)
    if not predicted or not gold:
        return float(predicted == gold)
    common = collections.Counter(predicted) & collections.Counter(gold)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(predicted), overlap / len(gold)
    return 2 * precision * recall / (precision + recall)


def _numeric_match(answer: str, expected: str) -> float:
    predicted, gold = last_number(answer), last_number(expected)
    if predicted is None or gold is None:
        return 0.0
    return float(abs(predicted - gold) <= _NUMERIC_TOLERANCE)


def _label_match(answer: str, expected: str, labels: tuple[str, ...]) -> float:
    chosen = choose_label(answer, labels)
    return float(chosen is not None and normalize_answer(chosen) == normalize_answer(expected))


def score_answer(task: TaskSpec, answer: str, expected: str) -> float:
    """Score one answer with the task's text metric.

    Raises `FailedPrecondition` for metrics that need a model (LLM judge, embeddings); score
    those with `prompttune.search.build_scorer`.
    """
    metric = task.metric
    if metric in (Metric.LLM_JUDGE, Metric.EMBEDDING_SIMILARITY):
        raise FailedPrecondition(f"metric {metric.value} needs a model to score")
    if metric is Metric.LABEL_CHOICE:
        return _label_match(answer, expected, task.labels)
    if metric is Metric.NUMERIC:
        return _numeric_match(answer, expected)
    if metric is Metric.TOKEN_F1:
        return token_f1(answer, expected)
    if metric is Metric.CONTAINS:
        gold = normalize_answer(expected)
        return float(bool(gold) and gold in normalize_answer(answer))
    return float(normalize_answer(answer) == normalize_answer(expected))


def extract_prediction(task: TaskSpec, answer: str) -> str:
    """The prediction the metric reads from `answer` ("" when there is none).

    LABEL_CHOICE gives the chosen label as spelled in `task.labels`; NUMERIC the last number;
    other metrics the normalised answer.
    """
    if task.metric is Metric.LABEL_CHOICE:
        return choose_label(answer, task.labels) or ""
    if task.metric is Metric.NUMERIC:
        number = last_number(answer)
        return "" if number is None else f"{number:g}"
    return normalize_answer(answer)
