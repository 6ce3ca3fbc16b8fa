from __future__ import annotations

import pytest

from prompttune.search import paired_difference


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
