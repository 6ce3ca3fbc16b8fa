from __future__ import annotations

from prompttune.contract import SearchSpec
from prompttune.search import bootstrap_ci, build_demo_sets, paired_bootstrap_lower_bound
from tests.fakes import SENTIMENT_TASK, FakeEmbedder, sentiment_examples


def test_demo_sets_are_deterministic_distinct_and_stratified() -> None:
    train = sentiment_examples(30)
    sets = build_demo_sets(SENTIMENT_TASK, train, FakeEmbedder(), num_sets=4, max_demos=4, seed=1)
    again = build_demo_sets(SENTIMENT_TASK, train, FakeEmbedder(), num_sets=4, max_demos=4, seed=1)
    assert sets == again
    # num_sets per strategy, strategies interleaved
    assert [s.name.split("-")[0] for s in sets] == ["stratified", "diverse", "random"] * 4
    assert len({tuple(e.id for e in s.examples) for s in sets}) == 12
    assert all(len(s.examples) == 4 for s in sets)
    first_two = {e.output for e in sets[0].examples[:2]}
    assert first_two == {"positive", "negative"}  # a 2-demo prefix already covers both labels


def test_demo_sets_handle_small_or_empty_train() -> None:
    assert build_demo_sets(SENTIMENT_TASK, (), FakeEmbedder(), 3, 4) == ()
    small = build_demo_sets(SENTIMENT_TASK, sentiment_examples(2), FakeEmbedder(), 3, 4)
    assert all(len(s.examples) == 2 for s in small)


def test_bootstrap_ci_and_paired_test() -> None:
    low, high = bootstrap_ci([1.0, 0.0] * 50, seed=0)
    assert low < 0.5 < high and high - low < 0.3
    assert bootstrap_ci([1.0, 0.0] * 50, seed=0) == (low, high)
    better = [1.0] * 80 + [0.0] * 20
    worse = [1.0] * 50 + [0.0] * 50
    assert paired_bootstrap_lower_bound(better, worse) > 0
    assert paired_bootstrap_lower_bound(worse, worse) == 0.0
    assert SearchSpec().num_finalists == 3
