"""Paired comparison of two prompts' per-example scores."""

from __future__ import annotations

import pytest

from prompttune.contract import Evaluation, Example, ExampleResult, Score
from prompttune.search import compare_evaluations, paired_difference
from tests.fakes import SENTIMENT_TASK


def test_identical_scores_show_no_difference() -> None:
    scores = [1.0, 0.0, 1.0, 1.0, 0.0] * 8
    paired = paired_difference(scores, scores, seed=1)
    assert (paired.difference, paired.ci_low, paired.ci_high) == (0.0, 0.0, 0.0)
    assert paired.p_value == 1.0
    assert (paired.examples, paired.verdict) == (40, "no_difference")


def test_a_consistently_better_b_is_better_with_a_small_p_value() -> None:
    a = [0.0] * 30 + [1.0] * 10
    b = [1.0] * 30 + [1.0] * 10
    paired = paired_difference(a, b, seed=2)
    assert paired.difference == pytest.approx(0.75)
    assert 0 < paired.ci_low <= 0.75 <= paired.ci_high <= 1
    assert paired.p_value < 0.001
    assert paired.verdict == "b_better"
    worse = paired_difference(b, a, seed=2)
    assert worse.verdict == "b_worse" and worse.ci_high < 0


def test_noise_is_no_difference_and_results_repeat_for_a_seed() -> None:
    a = [1.0, 0.0] * 10
    b = [1.0, 0.0] * 9 + [0.0, 1.0]  # two examples swap: same mean, differing pairs
    first, again = paired_difference(a, b, seed=5), paired_difference(a, b, seed=5)
    assert first == again
    assert first.verdict == "no_difference" and first.ci_low < 0 < first.ci_high
    assert first.p_value > 0.5


def test_edge_cases() -> None:
    assert paired_difference([], [], seed=0).examples == 0
    with pytest.raises(ValueError, match="equal length"):
        paired_difference([1.0], [], seed=0)


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
