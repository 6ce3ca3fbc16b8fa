"""Request validation: every error names the offending field by its dotted path."""

from __future__ import annotations

from collections.abc import Sequence

from prompttune.contract import Example, Metric, TaskSpec
from prompttune.search._errors import InvalidArgument
from prompttune.search._metrics import normalize_answer
from prompttune.search._types import DatasetSplits


def validate_task(task: TaskSpec) -> None:
    """Raise `InvalidArgument` (field ``task.*``) when the task cannot be optimised."""
    if task.seed_instruction and not task.seed_instruction.strip():
        raise InvalidArgument("task.seed_instruction", "must not be blank")
    if not task.instruction:
        raise InvalidArgument("task.description", "must not be empty without a seed instruction")
    if not isinstance(task.metric, Metric):
        raise InvalidArgument("task.metric", "unknown metric")
    if not task.input_fields:
        raise InvalidArgument("task.input_fields", "at least one input field is required")
    for index, name in enumerate(task.input_fields):
        if not name.strip():
            raise InvalidArgument(f"task.input_fields[{index}]", "must not be empty")
    if len(set(task.input_fields)) != len(task.input_fields):
        raise InvalidArgument("task.input_fields", "field names must be unique")
    if not task.output_name.strip():
        raise InvalidArgument("task.output_name", "must not be empty")
    _validate_labels(task)


def _validate_labels(task: TaskSpec) -> None:
    if task.metric is Metric.LLM_JUDGE and not task.rubric.strip():
        raise InvalidArgument("task.rubric", "llm_judge needs a rubric")
    if task.metric is Metric.LABEL_CHOICE and len(task.labels) < 2:
        raise InvalidArgument("task.labels", "label_choice needs at least two labels")
    keys = [normalize_answer(label) for label in task.labels]
    for index, key in enumerate(keys):
        if not key:
            raise InvalidArgument(f"task.labels[{index}]", "must not be empty")
    if len(set(keys)) != len(keys):
        raise InvalidArgument("task.labels", "labels must be distinct")


def _validate_example(task: TaskSpec, example: Example, path: str) -> None:
    if not example.id:
        raise InvalidArgument(f"{path}.id", "must not be empty")
    missing = [name for name in task.input_fields if name not in example.inputs]
    if missing:
        raise InvalidArgument(f"{path}.inputs", f"missing input field {missing[0]!r}")
    if not example.output.strip():
        raise InvalidArgument(f"{path}.output", "must not be empty")
    labels = {normalize_answer(label) for label in task.labels}
    if labels and normalize_answer(example.output) not in labels:
        raise InvalidArgument(f"{path}.output", f"{example.output!r} is not one of task.labels")


def _validate_split(task: TaskSpec, name: str, examples: Sequence[Example], seen: set[str]) -> None:
    for index, example in enumerate(examples):
        path = f"dataset.{name}[{index}]"
        _validate_example(task, example, path)
        if example.id in seen:
            raise InvalidArgument(f"{path}.id", f"duplicate example id {example.id!r}")
        seen.add(example.id)


def validate_splits(task: TaskSpec, splits: DatasetSplits) -> None:
    """Raise `InvalidArgument` (field ``dataset.*``) for empty validation or bad examples."""
    if not splits.validation:
        raise InvalidArgument("dataset.validation", "must not be empty")
    seen: set[str] = set()
    for name in ("train", "validation", "test"):
        _validate_split(task, name, getattr(splits, name), seen)
