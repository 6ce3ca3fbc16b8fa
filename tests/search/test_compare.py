from __future__ import annotations

import pytest

from prompttune.search import ModelOutcome, on_frontier, paired_difference, recommend


def test_clearly_better_b_has_interval_above_zero_and_small_p_value() -> None:
    a = [1.0] * 50 + [0.0] * 50
    b = [1.0] * 85 + [0.0] * 15
    result = paired_difference(a, b, seed=3)
    assert result.difference == pytest.approx(0.35)
    assert 0 < result.ci_low < 0.35 < result.ci_high
    assert result.p_value < 0.01
    assert result.examples == 100
    assert result.verdict == "b_better"
    assert result.per_label_difference == {}


def test_worse_b_is_b_worse_and_swapping_mirrors_the_difference() -> None:
    a = [1.0] * 85 + [0.0] * 15
    b = [1.0] * 50 + [0.0] * 50
    worse = paired_difference(a, b)
    better = paired_difference(b, a)
    assert worse.verdict == "b_worse" and worse.ci_high < 0
    assert worse.difference == pytest.approx(-better.difference)


def test_noise_gives_no_difference_with_large_p_value() -> None:
    # b wins 6 examples and loses 5: a difference of 1/40, well within noise.
    a = [1.0] * 20 + [0.0] * 20
    b = [0.0] * 5 + [1.0] * 15 + [1.0] * 6 + [0.0] * 14
    result = paired_difference(a, b, seed=1)
    assert result.ci_low < 0 < result.ci_high
    assert result.p_value > 0.5
    assert result.verdict == "no_difference"


def test_identical_scores_have_p_value_one_and_a_zero_interval() -> None:
    same = [1.0, 0.0, 0.5] * 10
    result = paired_difference(same, same)
    assert (result.difference, result.ci_low, result.ci_high) == (0.0, 0.0, 0.0)
    assert result.p_value == 1.0
    assert result.verdict == "no_difference"


def test_same_seed_same_result_and_empty_input_is_neutral() -> None:
    a = [0.0, 1.0, 1.0, 0.0, 1.0] * 8
    b = [1.0, 1.0, 0.0, 1.0, 1.0] * 8
    assert paired_difference(a, b, seed=7) == paired_difference(a, b, seed=7)
    empty = paired_difference([], [])
    assert (empty.examples, empty.p_value, empty.verdict) == (0, 1.0, "no_difference")


def test_unequal_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="equal length"):
        paired_difference([1.0, 0.0], [1.0])


def outcome(name: str, right: int, usd: float = 0.0, seconds: float = 0.0) -> ModelOutcome:
    scores = {f"t{i}": float(i < right) for i in range(40)}
    return ModelOutcome(name, right / 40, scores, usd, seconds)


def test_frontier_uses_price_when_any_model_has_one_else_seconds() -> None:
    priced = [outcome("a", 30, usd=2.0, seconds=9.0), outcome("b", 20, usd=1.0, seconds=0.1)]
    assert on_frontier(priced) == (True, True)
    dominated = [outcome("a", 30, usd=2.0), outcome("b", 30, usd=1.0)]
    assert on_frontier(dominated) == (False, True)
    unpriced = [outcome("a", 30, seconds=0.5), outcome("b", 20, seconds=0.9)]
    assert on_frontier(unpriced) == (True, False)
    failed = [outcome("a", 30, usd=2.0), ModelOutcome("b", failed=True)]
    assert on_frontier(failed) == (True, False)


def test_recommendation_is_the_cheapest_model_within_noise_of_the_best() -> None:
    close = recommend([outcome("big", 31, usd=2.0), outcome("small", 29, usd=1.0)])
    assert close is not None and close.model_index == 1
    assert "small: test 0.72 is not worse than big's 0.78 beyond noise" in close.reason
    assert "costs 50% less" in close.reason
    far = recommend([outcome("big", 38, usd=2.0), outcome("small", 15, usd=1.0)])
    assert far is not None and far.model_index == 0
    assert far.reason.startswith("big: the best test score, 0.95; no cheaper model")
    assert recommend([ModelOutcome("a", failed=True)]) is None


def test_a_model_without_a_test_score_is_not_compared_on_validation() -> None:
    tested = outcome("local", 20, seconds=0.4)
    untested = ModelOutcome("gemma", 0.9, {}, 0.0, 0.0, untested=True)

    assert on_frontier([tested, untested]) == (True, False)
    chosen = recommend([tested, untested])
    assert chosen is not None and chosen.model_index == 0
    assert "not compared: gemma (test scoring did not finish" in chosen.reason
