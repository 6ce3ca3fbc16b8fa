"""Malformed requests get INVALID_ARGUMENT naming the field, and the server keeps serving."""

from __future__ import annotations

import dataclasses

import grpc
import pytest
from tests.server.conftest import FAKE_MODEL, TASK, client_examples, small_dataset

from prompttune.client import (
    Client,
    Dataset,
    Example,
    InvalidArgumentError,
    ModelKind,
    ModelSpec,
    SearchSpec,
)
from prompttune.server import EmbeddedServer
from prompttune.v1 import optimizer_pb2 as pb
from prompttune.v1 import optimizer_pb2_grpc as pb_grpc


def expect_field(field: str, call: object) -> None:
    assert callable(call)
    with pytest.raises(InvalidArgumentError) as raised:
        call()
    assert raised.value.field == field, raised.value


def test_empty_dataset(client: Client) -> None:
    expect_field("dataset", lambda: client.create_job(TASK, Dataset(), FAKE_MODEL))


def test_empty_validation_split(client: Client) -> None:
    dataset = Dataset.from_splits(client_examples(4, "t"), ())
    expect_field("dataset.validation", lambda: client.create_job(TASK, dataset, FAKE_MODEL))


def test_output_missing_from_label_set(client: Client) -> None:
    train = (*client_examples(3, "t"), Example("fine film", "neutral"))
    dataset = Dataset.from_splits(train, client_examples(4, "v"))
    expect_field("dataset.train[3].output", lambda: client.create_job(TASK, dataset, FAKE_MODEL))


def test_oversize_example(client: Client) -> None:
    train = (Example("x" * 20_001, "positive"), *client_examples(3, "t"))
    dataset = Dataset.from_splits(train, client_examples(4, "v"))
    expect_field(
        "dataset.train[0].inputs.input", lambda: client.create_job(TASK, dataset, FAKE_MODEL)
    )


def test_malformed_model_spec(client: Client) -> None:
    no_url = ModelSpec(kind=ModelKind.OPENAI_COMPATIBLE, base_url="not a url", model="m")
    expect_field("model.base_url", lambda: client.create_job(TASK, small_dataset(), no_url))
    hot = dataclasses.replace(FAKE_MODEL, temperature=7.0)
    expect_field("model.temperature", lambda: client.create_job(TASK, small_dataset(), hot))
    greedy = dataclasses.replace(FAKE_MODEL, max_tokens=100_000)
    expect_field("model.max_tokens", lambda: client.create_job(TASK, small_dataset(), greedy))


def test_search_out_of_range(client: Client) -> None:
    search = SearchSpec(max_demos=100)
    expect_field(
        "search.max_demos", lambda: client.create_job(TASK, small_dataset(), FAKE_MODEL, search)
    )


def test_unknown_metric_and_missing_description_on_the_wire(server: EmbeddedServer) -> None:
    """Enum values the SDK cannot produce still arrive from other clients."""
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.OptimizerServiceStub(channel)
        request = pb.CreateJobRequest(
            task=pb.TaskSpec(description="d", metric=99),  # type: ignore[arg-type]
            dataset=pb.Dataset(
                train=[pb.Example(inputs={"input": "a"}, output="b")],
                validation=[pb.Example(inputs={"input": "a"}, output="b")],
            ),
        )
        with pytest.raises(grpc.RpcError) as raised:
            stub.CreateJob(request, timeout=5)
        assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert raised.value.details().startswith("task.metric")
        # Unspecified takes the contract's default (exact match): the next problem is named.
        request.task.metric = pb.METRIC_UNSPECIFIED
        request.task.description = ""
        with pytest.raises(grpc.RpcError) as raised:
            stub.CreateJob(request, timeout=5)
        assert raised.value.details().startswith("task.description")
        # The server still answers.
        assert stub.ListJobs(pb.ListJobsRequest(), timeout=5).jobs is not None
