"""Per-label and per-slice breakdowns of a score, and the values of the search objectives."""

from __future__ import annotations

import pytest

from prompttune.contract import (
    Example,
    ExampleResult,
    LabelMetrics,
    Metric,
    Objective,
    SearchSpec,
    TaskSpec,
)
from prompttune.search import make_score
from prompttune.search._state import TrialRecord
from prompttune.search._stats import TrialObjective, objective_value

TASK = TaskSpec(
    description="Tell the colour.", metric=Metric.LABEL_CHOICE, labels=("red", "green", "blue")
)


def _case(
    pairs: list[tuple[str, str]], tags: list[dict[str, str]] | None = None
) -> tuple[list[Example], list[ExampleResult]]:
    """Examples expecting the first of each pair, answered with the second."""
    examples, results = [], []
    for index, (expected, answer) in enumerate(pairs):
        example_tags = tags[index] if tags else {}
        examples.append(Example(f"x{index}", expected, id=f"e{index}", tags=example_tags))
        score = float(answer.lower() == expected)
        results.append(ExampleResult(f"e{index}", f"It is {answer}.", score))
    return examples, results


# expected red: 3 (2 right, 1 -> green); green: 2 (1 right, 1 -> no label); blue: 1 (-> red)
PAIRS = [
    ("red", "red"),
    ("red", "red"),
    ("red", "green"),
    ("green", "green"),
    ("green", "something else"),
    ("blue", "red"),
]


def test_confusion_counts_rows_expected_columns_predicted_with_none_column() -> None:
    examples, results = _case(PAIRS)
    score = make_score(TASK, examples, results)
    confusion = score.confusion
    assert confusion is not None
    assert confusion.labels == ("red", "green", "blue", "(none)")
    assert confusion.counts == (2, 1, 0, 0, 0, 1, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0)
    assert confusion.count("green", "(none)") == 1
    assert sum(confusion.counts) == 6


def test_no_none_column_when_every_answer_names_a_label() -> None:
    examples, results = _case([("red", "red"), ("green", "blue")])
    confusion = make_score(TASK, examples, results).confusion
    assert confusion is not None and confusion.labels == ("red", "green", "blue")
    assert len(confusion.counts) == 9


def test_precision_recall_f1_match_hand_computed_values() -> None:
    examples, results = _case(PAIRS)
    metrics = make_score(TASK, examples, results).label_metrics
    # red: predicted 3 times (2 right), expected 3 times
    assert metrics["red"] == LabelMetrics(2 / 3, 2 / 3, pytest.approx(2 / 3), 3)
    # green: predicted twice (1 right), expected twice
    assert metrics["green"] == LabelMetrics(0.5, 0.5, 0.5, 2)
    # blue: never predicted -> precision 0 by definition
    assert metrics["blue"] == LabelMetrics(0.0, 0.0, 0.0, 1)


def test_macro_f1_and_per_label_recall() -> None:
    examples, results = _case(PAIRS)
    score = make_score(TASK, examples, results)
    assert score.macro_f1 == pytest.approx((2 / 3 + 0.5 + 0.0) / 3)
    assert score.per_label == pytest.approx({"blue": 0.0, "green": 0.5, "red": 2 / 3})
    assert score.mean == pytest.approx(3 / 6)


def test_macro_f1_leaves_out_labels_neither_expected_nor_predicted() -> None:
    examples, results = _case([("red", "red"), ("green", "red")])
    score = make_score(TASK, examples, results)
    # red F1 = 2*0.5*1/1.5; green F1 = 0; blue absent from both sides: not averaged
    assert score.macro_f1 == pytest.approx((2 / 3 + 0.0) / 2)


def test_prediction_field_overrides_the_answer_text() -> None:
    examples = [Example("x", "blue", id="e0")]
    results = [ExampleResult("e0", "", 1.0, prediction="blue")]
    score = make_score(TASK, examples, results)
    assert score.confusion is not None and score.confusion.count("blue", "blue") == 1
    assert score.label_metrics["blue"].recall == 1.0


def test_failed_results_are_left_out_of_every_breakdown() -> None:
    examples, results = _case([("red", "red"), ("blue", "blue")], [{"g": "a"}, {"g": "a"}])
    results[1] = ExampleResult("e1", "", 0.0, error="timeout")
    score = make_score(TASK, examples, results)
    assert score.failed == 1 and score.examples == 1
    assert score.confusion is not None and sum(score.confusion.counts) == 1
    assert score.label_metrics["blue"].support == 0
    assert [(s.value, s.examples) for s in score.slices] == [("a", 1)]


def test_slices_by_tag_then_value_with_intervals() -> None:
    tags = [
        {"dialect": "us", "len": "short"},
        {"dialect": "us"},
        {"dialect": "gb", "len": "long"},
        {"dialect": "gb", "len": "short"},
        {},
        {"dialect": "au"},
    ]
    examples, results = _case(PAIRS, tags)
    score = make_score(TASK, examples, results)
    keys = [(s.tag, s.value, s.examples, s.mean) for s in score.slices]
    assert keys == [
        ("dialect", "au", 1, 0.0),
        ("dialect", "gb", 2, 0.5),
        ("dialect", "us", 2, 1.0),
        ("len", "long", 1, 0.0),
        ("len", "short", 2, 1.0),
    ]
    gb = score.slices[1]
    assert gb.ci_low == 0.0 and gb.ci_high == 1.0
    # au and len=long both score 0 on one example: the first in order wins the tie
    assert score.worst_slice == score.slices[0]


def test_worst_slice_tie_goes_to_the_larger_slice() -> None:
    right, wrong = ("red", "red"), ("red", "green")
    pairs = [right, right, wrong, right, wrong, right, wrong]
    tags = [{"t": "a"}, {"t": "b"}, {"t": "b"}, {"t": "c"}, {"t": "c"}, {"t": "c"}, {"t": "c"}]
    examples, results = _case(pairs, tags)
    score = make_score(TASK, examples, results)
    assert [(s.value, s.mean, s.examples) for s in score.slices] == [
        ("a", 1.0, 1),
        ("b", 0.5, 2),
        ("c", 0.5, 4),
    ]
    assert score.worst_slice == score.slices[2]


def test_untagged_examples_give_no_slices_and_text_tasks_no_label_breakdown() -> None:
    task = TaskSpec(description="Echo.")
    examples = [Example("a", "a", id="e0")]
    score = make_score(task, examples, [ExampleResult("e0", "a", 1.0)])
    assert score.slices == () and score.worst_slice is None
    assert score.confusion is None and score.label_metrics == {} and score.macro_f1 == 0.0


def test_intervals_can_be_skipped() -> None:
    examples, results = _case(PAIRS, [{"g": "x"}] * 6)
    score = make_score(TASK, examples, results, intervals=False)
    assert (score.ci_low, score.ci_high) == (0.0, 0.0)
    assert (score.slices[0].ci_low, score.slices[0].ci_high) == (0.0, 0.0)
    assert score.mean == 0.5 and score.macro_f1 > 0


@pytest.mark.parametrize(
    ("objective", "slice_tag", "expected"),
    [
        (Objective.MEAN, "", 0.5),
        (Objective.MACRO_F1, "", (2 / 3 + 0.5) / 3),
        (Objective.WORST_LABEL, "", 0.0),
        (Objective.WORST_SLICE, "dialect", 0.0),
        (Objective.WORST_SLICE, "len", 0.25),
        (Objective.WORST_SLICE, "missing", 0.5),
    ],
)
def test_objective_values(objective: Objective, slice_tag: str, expected: float) -> None:
    tags = [
        {"dialect": "us", "len": "s"},
        {"dialect": "us", "len": "s"},
        {"dialect": "gb", "len": "l"},
        {"dialect": "gb", "len": "l"},
        {"dialect": "gb", "len": "l"},
        {"dialect": "au", "len": "l"},
    ]
    examples, results = _case(PAIRS, tags)
    spec = SearchSpec(objective=objective, slice_tag=slice_tag)
    score = make_score(TASK, examples, results)
    assert objective_value(spec, score) == pytest.approx(expected)
    assert TrialObjective(TASK, spec, examples).value(results) == pytest.approx(expected)


def test_worst_label_ignores_labels_absent_from_the_examples() -> None:
    examples, results = _case([("red", "red"), ("green", "red"), ("green", "green")])
    spec = SearchSpec(objective=Objective.WORST_LABEL)
    assert TrialObjective(TASK, spec, examples).value(results) == 0.5


def test_trial_record_score_is_the_objective_value_recomputed_only_when_results_grow() -> None:
    examples, results = _case(PAIRS)
    calls: list[int] = []

    class CountingObjective(TrialObjective):
        def value(self, scored: object) -> float:  # type: ignore[override]
            calls.append(1)
            return super().value(scored)  # type: ignore[arg-type]

    spec = SearchSpec(objective=Objective.WORST_LABEL)
    record = TrialRecord(0, None, (), None, objective=CountingObjective(TASK, spec, examples))  # type: ignore[arg-type]
    record.results.extend(results[:2])
    assert record.score == 1.0  # only red so far, both right
    assert record.score == 1.0
    assert len(calls) == 1
    record.results.extend(results[2:])
    assert record.score == 0.0  # blue never recalled
    assert len(calls) == 2
    plain = TrialRecord(1, None, (), None, results=list(results))  # type: ignore[arg-type]
    assert plain.score == 0.5
