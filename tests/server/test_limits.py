"""Every input limit is enforced with INVALID_ARGUMENT naming the field, with
google.rpc.BadRequest details the SDK decodes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from tests.server.conftest import (
    CALLER_ENDPOINTS,
    FAKE_MODEL,
    TASK,
    FakeModels,
    client_examples,
    fake_adapters,
    small_dataset,
)

from prompttune.client import (
    Budget,
    Client,
    Dataset,
    Example,
    FieldViolation,
    InvalidArgumentError,
    Prompt,
    SearchSpec,
)
from prompttune.server import EmbeddedServer, Limits, ServerConfig
from prompttune.v1 import optimizer_pb2 as pb
from prompttune.v1 import optimizer_pb2_grpc as pb_grpc

LIMITS = Limits(
    max_examples=60,
    max_chars_per_field=200,
    max_labels=3,
    max_trials=5,
    max_request_bytes=10_000,
    max_tokens_per_call=64,
    max_concurrency=2,
)


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    db = tmp_path_factory.mktemp("limits") / "limits.db"
    config = ServerConfig(
        db_url=f"sqlite:///{db}", workers=0, limits=LIMITS, endpoint_config=CALLER_ENDPOINTS
    )
    adapters = fake_adapters(FakeModels())
    with EmbeddedServer(config, adapters) as server, Client(server.target, timeout=10) as client:
        yield client


def violation(call: Callable[[], object]) -> InvalidArgumentError:
    with pytest.raises(InvalidArgumentError) as raised:
        call()
    error = raised.value
    assert error.violations, "BadRequest details missing"
    assert error.violations[0].field == error.field
    return error


FITS = SearchSpec(budget=Budget(max_trials=5))


def test_each_limit_names_its_field(limited: Client) -> None:
    data = small_dataset()
    many = Dataset.from_splits(client_examples(40, "t"), client_examples(30, "v"))
    assert violation(lambda: limited.create_job(TASK, many, FAKE_MODEL, FITS)).field == "dataset"
    long_text = Dataset.from_splits(
        (Example("x" * 201, "positive"), *client_examples(3, "t")), client_examples(4, "v")
    )
    assert violation(lambda: limited.create_job(TASK, long_text, FAKE_MODEL, FITS)).field == (
        "dataset.train[0].inputs.input"
    )
    labels = dataclasses.replace(TASK, labels=("a", "b", "c", "d"))
    assert (
        violation(lambda: limited.create_job(labels, data, FAKE_MODEL, FITS)).field == "task.labels"
    )
    trials = SearchSpec(budget=Budget(max_trials=6))
    assert violation(lambda: limited.create_job(TASK, data, FAKE_MODEL, trials)).field == (
        "search.budget.max_trials"
    )
    busy = dataclasses.replace(FAKE_MODEL, max_concurrency=3)
    assert violation(lambda: limited.create_job(TASK, data, busy, FITS)).field == (
        "model.max_concurrency"
    )
    big = Dataset.from_splits(
        tuple(Example("y" * 190, "positive") for _ in range(30)),
        tuple(Example("z" * 190, "negative") for _ in range(29)),
    )
    error = violation(lambda: limited.create_job(TASK, big, FAKE_MODEL, FITS))
    assert error.field == "request"


def test_evaluate_and_render_limits(limited: Client) -> None:
    prompt = Prompt("Classify.", labels=TASK.labels)
    examples = client_examples(61, "e")
    assert violation(lambda: limited.evaluate_prompt(prompt, TASK, examples, FAKE_MODEL)).field == (
        "examples"
    )
    assert violation(lambda: limited.render_prompt(prompt, "w" * 201)).field == "inputs.input"
    assert violation(lambda: limited.render_prompt(Prompt("x" * 201), "hi")).field == (
        "prompt.instruction"
    )


def test_bad_request_details_on_the_wire(server: EmbeddedServer) -> None:
    """Any gRPC client (not only the SDK) can read the google.rpc.BadRequest details."""
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.OptimizerServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.CreateJob(
                pb.CreateJobRequest(task=pb.TaskSpec(description="d", metric=99)), timeout=5
            )  # type: ignore[arg-type]
    status = rpc_status.from_call(raised.value)
    assert status is not None and status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert [v.field for v in bad_request.field_violations] == ["task.metric"]
    metadata = dict(raised.value.trailing_metadata())
    assert metadata["prompttune-field"] == "task.metric"


def test_sdk_exposes_violations(client: Client) -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        client.create_job(TASK, Dataset(), FAKE_MODEL)
    assert raised.value.field == "dataset"
    assert raised.value.violations == (FieldViolation("dataset", "has no examples"),)


def test_limits_default_to_generous_values(tmp_path: Path) -> None:
    assert Limits().max_examples >= 10_000 and Limits().max_request_bytes >= 1 << 20
