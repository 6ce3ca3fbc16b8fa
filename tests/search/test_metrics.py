from __future__ import annotations

import pytest

from prompttune.contract import Metric, TaskSpec
from prompttune.search import choose_label, extract_prediction, score_answer

LABELS = ("positive", "negative", "neutral")


def task(metric: Metric, labels: tuple[str, ...] = ()) -> TaskSpec:
    return TaskSpec("d", seed_instruction="i", labels=labels, metric=metric)


@pytest.mark.parametrize(
    ("answer", "expected", "score"),
    [
        ('  "Paris." ', "paris", 1.0),
        ("The   Answer", "the answer", 1.0),
        ("Paris is the capital", "paris", 0.0),
    ],
)
def test_exact_match_normalises_case_space_and_quotes(
    answer: str, expected: str, score: float
) -> None:
    assert score_answer(task(Metric.EXACT_MATCH), answer, expected) == score


@pytest.mark.parametrize(
    ("answer", "prediction"),
    [
        ("The sentiment of this review is Positive.", "positive"),
        ("NEGATIVE", "negative"),
        ("It is not positive, it is negative", "positive"),  # first mention wins
        ("Hmm, hard to say.", ""),
        ("positively unclear", ""),  # whole words only
        ("neutral-ish? no: negative", "neutral"),
    ],
)
def test_label_choice_reads_first_whole_word_label(answer: str, prediction: str) -> None:
    label_task = task(Metric.LABEL_CHOICE, LABELS)
    assert extract_prediction(label_task, answer) == prediction
    assert score_answer(label_task, answer, "positive") == float(prediction == "positive")


def test_label_choice_tie_goes_to_longest_label() -> None:
    assert choose_label("Very positive review", ("very positive", "positive")) == "very positive"
    assert choose_label("very good", ("very", "very good")) == "very good"


def test_contains() -> None:
    contains = task(Metric.CONTAINS)
    assert score_answer(contains, "I believe it is Paris, France.", "paris") == 1.0
    assert score_answer(contains, "London", "paris") == 0.0


@pytest.mark.parametrize(
    ("answer", "expected", "score"),
    [
        ("She has 3 apples, then buys 1,200 more: 1,203", "1203", 1.0),
        ("The answer is 7.0.", "#### 7", 1.0),
        ("-2.5 degrees", "-2.5", 1.0),
        ("5 then 6", "5", 0.0),
        ("no number", "5", 0.0),
    ],
)
def test_numeric_uses_last_number(answer: str, expected: str, score: float) -> None:
    assert score_answer(task(Metric.NUMERIC), answer, expected) == score


def test_token_f1_squad_style() -> None:
    f1 = task(Metric.TOKEN_F1)
    assert score_answer(f1, "The Eiffel Tower!", "eiffel tower") == 1.0
    assert score_answer(f1, "eiffel tower in paris", "eiffel tower") == pytest.approx(2 / 3)
    assert score_answer(f1, "nothing", "eiffel tower") == 0.0
