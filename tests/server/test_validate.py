"""Validation at the edge: a JobSpec is normalised once, and every bounded field is checked
with an error naming it."""

from __future__ import annotations

from dataclasses import replace

import pytest
from tests.fakes import sentiment_examples

from prompttune.contract import (
    Budget,
    Dataset,
    Example,
    InstructionPlacement,
    JobSpec,
    Metric,
    ModelSpec,
    Prompt,
    PromptFormat,
    SearchSpec,
    SplitRatio,
    TaskSpec,
    wire,
)
from prompttune.search import InvalidArgument
from prompttune.server._limits import Limits
from prompttune.server._service import RequestDecoder
from prompttune.server._validate import validate_job_spec
from prompttune.v1 import optimizer_pb2 as pb

TASK = TaskSpec(
    description="  Decide the sentiment.  ",
    metric=Metric.LABEL_CHOICE,
    labels=(" positive ", "negative"),
)
MODEL = ModelSpec.openai_compatible("http://fake.invalid/v1", "fake-model")


def pooled(count: int = 20, seed: int = 5) -> JobSpec:
    examples = tuple(replace(e, id="") for e in sentiment_examples(count, "p"))
    split = SplitRatio(train=0.5, validation=0.25, test=0.25, seed=seed)
    return JobSpec(TASK, Dataset.from_examples(examples, split), MODEL)


def test_a_spec_is_normalised_and_a_pooled_dataset_split_deterministically() -> None:
    spec = validate_job_spec(pooled(), Limits())
    assert spec.task.labels == ("positive", "negative")
    assert spec.task.description == "Decide the sentiment."
    assert spec.task.seed_instruction == "Decide the sentiment."
    dataset = spec.dataset
    assert not dataset.examples and dataset.split is None
    assert (len(dataset.train), len(dataset.validation), len(dataset.test)) == (10, 5, 5)
    ids = [e.id for e in (*dataset.train, *dataset.validation, *dataset.test)]
    assert len(set(ids)) == 20 and all(i.startswith("dataset.examples:") for i in ids)
    assert validate_job_spec(pooled(), Limits()) == spec
    assert validate_job_spec(pooled(seed=6), Limits()).dataset != dataset
    # Validating the validated spec changes nothing: workers could run it as it is.
    assert validate_job_spec(spec, Limits()) == spec


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("model.api_key_env", {"model": replace(MODEL, api_key_env="HOME; rm")}),
        ("model.endpoint", {"model": replace(MODEL, endpoint="no spaces please")}),
        ("model.base_url", {"model": replace(MODEL, base_url="file:///etc/passwd")}),
        ("model.model", {"model": replace(MODEL, model="m" * 300)}),
        ("model.max_tokens", {"model": replace(MODEL, max_tokens=0)}),
        (
            "model.usd_per_million_prompt_tokens",
            {"model": replace(MODEL, usd_per_million_prompt_tokens=float("nan"))},
        ),
        ("search.budget.max_trials", {"search": SearchSpec(budget=Budget(max_trials=0))}),
        (
            "search.budget.max_wall_seconds",
            {"search": SearchSpec(budget=Budget(max_wall_seconds=float("inf")))},
        ),
        ("search.max_demos", {"search": SearchSpec(max_demos=17)}),
        (
            "search.proposer.temperature",
            {"search": SearchSpec(proposer=replace(MODEL, temperature=3))},
        ),
        ("task.judge.model", {"task": replace(TASK, judge=replace(MODEL, model="j\x00"))}),
        ("task.labels", {"task": replace(TASK, labels=tuple(f"l{i}" for i in range(201)))}),
        ("task.input_fields[0]", {"task": replace(TASK, input_fields=("in\tput",))}),
        ("request_id", {"request_id": "r" * 129}),
        ("search.selection_fraction", {"search": SearchSpec(selection_fraction=0.95)}),
        ("search.selection_fraction", {"search": SearchSpec(selection_fraction=-0.1)}),
        ("search.selection_fraction", {"search": SearchSpec(selection_fraction=float("nan"))}),
        ("task.baseline.instruction", {"task": replace(TASK, baseline=Prompt(" "))}),
        (
            "task.baseline.labels",
            {"task": replace(TASK, baseline=Prompt("Say it.", labels=("yes", "no")))},
        ),
        (
            "task.baseline.input_fields",
            {"task": replace(TASK, baseline=Prompt("Say it.", input_fields=("question",)))},
        ),
        (
            "task.baseline.output_name",
            {"task": replace(TASK, baseline=Prompt("Say it.", output_name="verdict"))},
        ),
        (
            "task.baseline.demos",
            {"task": replace(TASK, baseline=Prompt("Say it.", demos=sentiment_examples(65)))},
        ),
        (
            "task.baseline.demos[0].inputs.input",
            {"task": replace(TASK, baseline=Prompt("Say it.", demos=(Example("x" * 10**6),)))},
        ),
    ],
)
def test_each_bounded_field_is_named(field: str, change: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_job_spec(replace(pooled(), **change), Limits())  # type: ignore[arg-type]
    assert raised.value.field == field
    assert len(str(raised.value)) < 300


def test_a_task_baseline_takes_the_tasks_fields_and_labels() -> None:
    written = Prompt(
        " Is this review positive or negative? ",
        demos=sentiment_examples(2),
        format=PromptFormat(InstructionPlacement.USER, answer_prefix="Sentiment:"),
        labels=("negative", "positive"),
    )
    task = replace(TASK, output_name="sentiment", baseline=written)
    spec = validate_job_spec(replace(pooled(), task=task), Limits())
    baseline = spec.task.baseline
    assert baseline is not None
    assert baseline.instruction == "Is this review positive or negative?"
    assert baseline.labels == ("positive", "negative") and baseline.output_name == "sentiment"
    assert baseline.input_fields == ("input",) and baseline.demos == written.demos
    assert validate_job_spec(spec, Limits()) == spec
    no_fraction = SearchSpec(selection_fraction=None)
    assert validate_job_spec(replace(pooled(), search=no_fraction), Limits()).search == no_fraction


def test_the_pooled_split_must_add_up() -> None:
    bad = replace(pooled(), dataset=replace(pooled().dataset, split=SplitRatio(0.5, 0.5, 0.5)))
    with pytest.raises(InvalidArgument, match=r"dataset\.split"):
        validate_job_spec(bad, Limits())


def test_oversized_requests_are_refused_before_decoding() -> None:
    decoded: list[type] = []

    def count(cls: type, message: object, path: str = "") -> object:
        decoded.append(cls)
        return wire.from_message(cls, message, path)

    decoder = RequestDecoder(Limits(max_request_bytes=1000), count)
    request = pb.CreateJobRequest(task=pb.TaskSpec(description="x" * 2000))
    with pytest.raises(InvalidArgument, match="request"):
        decoder(JobSpec, request)
    assert decoded == []
    small = pb.CreateJobRequest(task=pb.TaskSpec(description="x"))
    assert decoder(JobSpec, small).task.description == "x"
    assert decoded == [JobSpec]
