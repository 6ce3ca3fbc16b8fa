"""Validation of example tags and of the search objective, and tags read from data files."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from tests.fakes import sentiment_examples

from prompttune.contract import (
    Dataset,
    Example,
    JobSpec,
    Metric,
    ModelSpec,
    Objective,
    SearchSpec,
    TaskSpec,
)
from prompttune.search import InvalidArgument
from prompttune.server._limits import Limits
from prompttune.server._taskfile import TaskFileError, load_examples
from prompttune.server._validate import validate_job_spec

LABEL_TASK = TaskSpec(
    description="Decide the sentiment.",
    metric=Metric.LABEL_CHOICE,
    labels=("positive", "negative"),
)
TEXT_TASK = TaskSpec(description="Answer.")
MODEL = ModelSpec.openai_compatible("http://fake.invalid/v1", "fake-model")


def job(
    task: TaskSpec = LABEL_TASK,
    search: SearchSpec | None = None,
    tags: dict[int, dict[str, str]] | None = None,
) -> JobSpec:
    """Explicit splits; `tags` gives the tags of train examples by index."""
    train = [replace(e, tags=(tags or {}).get(i, {})) for i, e in enumerate(sentiment_examples(6))]
    validation = sentiment_examples(4, "va")
    dataset = Dataset.from_splits(train, validation)
    return JobSpec(task, dataset, MODEL, search or SearchSpec())


@pytest.mark.parametrize(
    ("tags", "field"),
    [
        ({f"t{i}": "x" for i in range(9)}, r"dataset\.train\[3\]\.tags: has 9 items"),
        ({"bad name": "x"}, r"dataset\.train\[3\]\.tags: must be"),
        ({"a" * 65: "x"}, r"dataset\.train\[3\]\.tags: must be"),
        ({"": "x"}, r"dataset\.train\[3\]\.tags: must be"),
        ({"dialect": "v" * 65}, r"dataset\.train\[3\]\.tags\.dialect: is 65 characters"),
        ({"dialect": " "}, r"dataset\.train\[3\]\.tags\.dialect: is required"),
        ({"dialect": "a\nb"}, r"dataset\.train\[3\]\.tags\.dialect: must not contain control"),
    ],
)
def test_bad_tags_are_refused_naming_the_example(tags: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidArgument, match=field):
        validate_job_spec(job(tags={3: tags}), Limits())


def test_good_tags_pass_and_survive_id_filling() -> None:
    tags = {f"t.{i}-x_y": "v" * 64 for i in range(8)}
    spec = validate_job_spec(job(tags={0: tags}), Limits())
    assert spec.dataset.train[0].tags == tags
    pooled = JobSpec(
        LABEL_TASK,
        Dataset.from_examples(
            [Example(f"t {i}", "positive", tags={"g": str(i % 2)}) for i in range(12)]
        ),
        MODEL,
    )
    examples = validate_job_spec(pooled, Limits()).dataset
    every = (*examples.train, *examples.validation, *examples.test)
    assert len(every) == 12
    assert all(e.id and e.tags == {"g": str(int(e.inputs["input"][2:]) % 2)} for e in every)


@pytest.mark.parametrize("objective", [Objective.MACRO_F1, Objective.WORST_LABEL])
def test_label_objectives_need_a_label_task(objective: Objective) -> None:
    with pytest.raises(InvalidArgument, match=r"search\.objective: .*needs a task with labels"):
        validate_job_spec(job(TEXT_TASK, SearchSpec(objective=objective)), Limits())
    assert validate_job_spec(job(search=SearchSpec(objective=objective)), Limits())


def test_worst_slice_needs_a_slice_tag_carried_by_a_validation_example() -> None:
    worst = SearchSpec(objective=Objective.WORST_SLICE)
    with pytest.raises(InvalidArgument, match=r"search\.slice_tag: is required"):
        validate_job_spec(job(search=worst), Limits())
    with pytest.raises(InvalidArgument, match=r"search\.slice_tag: must be"):
        validate_job_spec(job(search=replace(worst, slice_tag="no spaces")), Limits())
    # only a train example carries the tag: the validation split cannot be sliced by it
    tagged_train = job(search=replace(worst, slice_tag="dialect"), tags={0: {"dialect": "gb"}})
    with pytest.raises(InvalidArgument, match=r"search\.slice_tag: no validation example"):
        validate_job_spec(tagged_train, Limits())
    spec = tagged_train
    validation = (replace(spec.dataset.validation[0], tags={"dialect": "gb"}),)
    ok = replace(spec, dataset=replace(spec.dataset, validation=validation))
    assert validate_job_spec(ok, Limits()).search.slice_tag == "dialect"


def test_jsonl_data_carries_tags(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    rows = [
        {"id": "a", "input": "x", "output": "positive", "tags": {"dialect": "gb", "len": 3}},
        {"id": "b", "input": "y", "output": "negative"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    first, second = load_examples(path, ("input",))
    assert first.tags == {"dialect": "gb", "len": "3"}
    assert second.tags == {}


@pytest.mark.parametrize(
    ("tags", "message"),
    [
        (["gb"], "data.jsonl:1: tags: expected an object"),
        ({"d": ""}, "data.jsonl:1: tags.d: is empty"),
    ],
)
def test_malformed_tags_in_data_files_name_file_and_line(
    tmp_path: Path, tags: object, message: str
) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(
        json.dumps({"input": "x", "output": "o", "tags": tags}) + "\n", encoding="utf-8"
    )
    with pytest.raises(TaskFileError, match=message):
        load_examples(path, ("input",))
