from __future__ import annotations

import dataclasses

import pytest

from prompttune.contract import Example, Metric, TaskSpec
from prompttune.search import (
    DatasetSplits,
    InvalidArgument,
    split_examples,
    validate_splits,
    validate_task,
)
from tests.fakes import SENTIMENT_TASK, sentiment_examples, sentiment_splits


def field_of(error: pytest.ExceptionInfo[InvalidArgument]) -> str:
    return error.value.field


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"labels": ()}, "task.labels"),
        ({"labels": ("a", "A")}, "task.labels"),
        ({"metric": "accuracy"}, "task.metric"),
        ({"seed_instruction": " "}, "task.seed_instruction"),
        ({"seed_instruction": "", "description": " "}, "task.description"),
        ({"input_fields": ()}, "task.input_fields"),
    ],
)
def test_validate_task_names_the_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        validate_task(dataclasses.replace(SENTIMENT_TASK, **changes))  # type: ignore[arg-type]
    assert field_of(error) == field


def test_an_empty_seed_instruction_means_the_description() -> None:
    task = dataclasses.replace(SENTIMENT_TASK, seed_instruction="")
    validate_task(task)
    assert task.instruction == SENTIMENT_TASK.description


def test_validate_splits_names_the_field() -> None:
    good = sentiment_splits(4, 4, 2)
    validate_splits(SENTIMENT_TASK, good)
    bad_label = (*good.train[:3], Example({"input": "t"}, "meh", id="x"))
    cases = {
        "dataset.validation": DatasetSplits(good.train, ()),
        "dataset.train[3].output": DatasetSplits(bad_label, good.validation),
        "dataset.train[0].inputs": DatasetSplits(
            (Example({"text": "t"}, "positive", id="y"),), good.validation
        ),
        "dataset.validation[0].id": DatasetSplits(good.train, (good.train[0],)),
    }
    for field, splits in cases.items():
        with pytest.raises(InvalidArgument) as error:
            validate_splits(SENTIMENT_TASK, splits)
        assert field_of(error) == field


def test_free_form_tasks_accept_any_output() -> None:
    task = TaskSpec("d", seed_instruction="Answer.", metric=Metric.NUMERIC)
    validate_task(task)
    validate_splits(task, DatasetSplits((), (Example({"input": "1+1"}, "2", id="a"),)))


def test_split_is_deterministic_and_disjoint() -> None:
    examples = sentiment_examples(50)
    first = split_examples(examples, 0.5, 0.3, 0.2, seed=3)
    assert first == split_examples(examples, 0.5, 0.3, 0.2, seed=3)
    assert (len(first.train), len(first.validation), len(first.test)) == (25, 15, 10)
    ids = [e.id for e in first.train + first.validation + first.test]
    assert len(set(ids)) == 50
    assert first != split_examples(examples, 0.5, 0.3, 0.2, seed=4)
    with pytest.raises(InvalidArgument):
        split_examples(examples, 0.8, 0.3, 0.0)
