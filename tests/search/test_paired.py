"""Pairing two evaluations on the examples both scored."""

from __future__ import annotations

import pytest

from prompttune.contract import Evaluation, Example, ExampleResult, Score
from prompttune.search import compare_evaluations
from tests.fakes import SENTIMENT_TASK


def _evaluation(scores: dict[str, float], failed: tuple[str, ...] = ()) -> Evaluation:
    results = tuple(
        ExampleResult(id, "", score, error="down" if id in failed else "")
        for id, score in scores.items()
    )
    return Evaluation(Score(0.0, 0.0, 0.0, len(results)), results)


def test_evaluations_pair_on_examples_both_scored_with_per_label_recall() -> None:
    examples = (
        Example("good", "positive", id="p1"),
        Example("fine", "positive", id="p2"),
        Example("bad", "negative", id="n1"),
        Example("awful", "Negative", id="n2"),
        Example("meh", "negative", id="n3"),
    )
    a = _evaluation({"p1": 1.0, "p2": 0.0, "n1": 1.0, "n2": 1.0, "n3": 0.0}, failed=("n3",))
    b = _evaluation({"p1": 1.0, "p2": 1.0, "n1": 0.0, "n2": 1.0, "n3": 1.0})
    paired = compare_evaluations(SENTIMENT_TASK, examples, a, b, seed=0)
    assert paired.examples == 4  # n3 failed for a
    assert paired.difference == pytest.approx(0.0)
    assert paired.per_label_difference == {"negative": -0.5, "positive": 0.5}
