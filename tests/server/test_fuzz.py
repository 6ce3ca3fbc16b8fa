"""Random and malformed requests to every RPC of a live server: each reply is OK or a
client-error status (never INTERNAL or UNKNOWN), and the server keeps answering."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.server.conftest import CALLER_ENDPOINTS, FakeModels, fake_adapters

from prompttune.server import EmbeddedServer, ServerConfig
from prompttune.v1 import optimizer_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["OptimizerService"]
CLIENT_ERRORS = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE,  # an upstream model endpoint that is not there
    grpc.StatusCode.DEADLINE_EXCEEDED,  # a long but legal WatchJob
}
FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
WEIRD_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "{0}", "%s", "{{ x }}", "<|im_start|>", "\x00", "job-" + "f" * 16]),
)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    db: Path = tmp_path_factory.mktemp("fuzz") / "fuzz.db"
    config = ServerConfig(db_url=f"sqlite:///{db}", workers=0, endpoint_config=CALLER_ENDPOINTS)
    adapters = fake_adapters(FakeModels())
    with EmbeddedServer(config, adapters) as server:
        yield server.target


@pytest.fixture(scope="module")
def channel(target: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(target) as opened:
        yield opened


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[object]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return WEIRD_TEXT
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=32)
    if kind == FieldDescriptor.TYPE_ENUM:
        return st.integers(-(2**31), 2**31 - 1)
    if kind in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return st.integers(0, 2**32 - 1)
    if kind in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return st.integers(0, 2**64 - 1)
    if kind in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64):
        return st.integers(-(2**63), 2**63 - 1)
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=20)
    return st.integers(-(2**31), 2**31 - 1)


@st.composite
def messages(draw: st.DrawFn, descriptor: Descriptor, depth: int = 0) -> Message:
    """A message of `descriptor` with random values in a random subset of its fields."""
    message = _new(descriptor)
    for field in descriptor.fields:
        if depth > 4 or not draw(st.booleans()):
            continue
        _fill(draw, message, field, depth)
    return message


def _new(descriptor: Descriptor) -> Message:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(descriptor)()


def _fill(draw: st.DrawFn, message: Message, field: FieldDescriptor, depth: int) -> None:
    target = getattr(message, field.name)
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        value_field = field.message_type.fields_by_name["value"]
        for key in draw(st.lists(WEIRD_TEXT, max_size=3)):
            target[key] = draw(_scalar(value_field))
        return
    is_repeated = field.is_repeated
    count = draw(st.integers(0, 3)) if is_repeated else 1
    for _ in range(count):
        if field.message_type is not None:
            value = draw(messages(field.message_type, depth + 1))
            (target.add() if is_repeated else target).CopyFrom(value)
        elif is_repeated:
            target.append(draw(_scalar(field)))
        else:
            setattr(message, field.name, draw(_scalar(field)))


def _invoke(channel: grpc.Channel, method: str, payload: bytes, streaming: bool) -> None:
    path = f"/{SERVICE.full_name}/{method}"
    try:
        if streaming:
            call = channel.unary_stream(path)(payload, timeout=1.0)
            for _ in zip(range(5), call, strict=False):
                pass
            call.cancel()
        else:
            channel.unary_unary(path)(payload, timeout=5.0)
    except grpc.RpcError as error:
        assert error.code() in CLIENT_ERRORS, (method, error.code(), error.details())


def _still_serving(channel: grpc.Channel) -> None:
    list_jobs = channel.unary_unary(
        f"/{SERVICE.full_name}/ListJobs",
        request_serializer=pb.ListJobsRequest.SerializeToString,
        response_deserializer=pb.ListJobsResponse.FromString,
    )
    list_jobs(pb.ListJobsRequest(), timeout=5.0)


@pytest.mark.parametrize("method", [m.name for m in SERVICE.methods])
def test_random_bytes(channel: grpc.Channel, method: str) -> None:
    streaming = SERVICE.methods_by_name[method].server_streaming

    @FUZZ
    @given(payload=st.binary(max_size=200))
    def check(payload: bytes) -> None:
        _invoke(channel, method, payload, streaming)

    check()
    _still_serving(channel)


@pytest.mark.parametrize("method", [m.name for m in SERVICE.methods])
def test_random_messages(channel: grpc.Channel, method: str) -> None:
    descriptor = SERVICE.methods_by_name[method]

    @FUZZ
    @given(request=messages(descriptor.input_type))
    def check(request: Message) -> None:
        _invoke(channel, method, request.SerializeToString(), descriptor.server_streaming)

    check()
    _still_serving(channel)
