"""Health Check and Watch per service, NOT_SERVING first on shutdown, reflection on v1 and
v1alpha, and per-RPC and process metrics: through a real server over real gRPC."""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tests.fakes import FakeEmbedder
from tests.server.conftest import FakeModels

from prompttune.server import Adapters, EmbeddedServer, ServerConfig
from prompttune.server._health import HealthReporter

SERVICE = "prompttune.v1.OptimizerService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def embedded(tmp_path: Path) -> EmbeddedServer:
    config = ServerConfig(
        db_url=f"sqlite:///{tmp_path / 'health.db'}", grace_seconds=1, metrics_port=0
    )
    return EmbeddedServer(config, Adapters(chat_models=FakeModels(), embedder_factory=FakeEmbedder))


@pytest.fixture
def channel(tmp_path: Path) -> Iterator[tuple[EmbeddedServer, grpc.Channel]]:
    with embedded(tmp_path) as server, grpc.insecure_channel(server.target) as chan:
        yield server, chan


def test_check_reports_each_service(channel: tuple[EmbeddedServer, grpc.Channel]) -> None:
    _server, chan = channel
    stub = health_pb2_grpc.HealthStub(chan)
    for name in ("", SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"):
        reply = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert reply.status == SERVING, name
    with pytest.raises(grpc.RpcError) as caught:
        stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND


def test_watch_streams_serving_then_not_serving_on_shutdown(tmp_path: Path) -> None:
    server = embedded(tmp_path).__enter__()
    stopper = threading.Thread(target=server.__exit__, args=(None, None, None))
    with grpc.insecure_channel(server.target) as chan:
        stream = health_pb2_grpc.HealthStub(chan).Watch(
            health_pb2.HealthCheckRequest(service=SERVICE), timeout=20
        )
        assert next(stream).status == SERVING
        stopper.start()
        assert next(stream).status == NOT_SERVING
        with pytest.raises(grpc.RpcError):
            next(stream)  # the stream ends once the grace period is over
    stopper.join(timeout=20)
    assert not stopper.is_alive()


def test_watch_of_unknown_service_says_so(channel: tuple[EmbeddedServer, grpc.Channel]) -> None:
    _server, chan = channel
    stream = health_pb2_grpc.HealthStub(chan).Watch(
        health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5
    )
    assert next(stream).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
    stream.cancel()


def _list_services(chan: grpc.Channel, service: str) -> set[str]:
    info = chan.stream_stream(
        f"/{service}/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (reply,) = list(info(iter([request]), timeout=5))
    return {entry.name for entry in reply.list_services_response.service}


def test_reflection_answers_v1_and_v1alpha(channel: tuple[EmbeddedServer, grpc.Channel]) -> None:
    _server, chan = channel
    for protocol in (
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ):
        names = _list_services(chan, protocol)
        assert {SERVICE, "grpc.health.v1.Health", protocol} <= names
    stub = reflection_pb2_grpc.ServerReflectionStub(chan)
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE)
    (reply,) = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
    assert reply.file_descriptor_response.file_descriptor_proto


def _scrape(server: EmbeddedServer) -> str:
    assert server.app is not None and server.app.metrics_port
    url = f"http://127.0.0.1:{server.app.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def test_rpc_and_process_metrics(channel: tuple[EmbeddedServer, grpc.Channel]) -> None:
    server, chan = channel
    health = health_pb2_grpc.HealthStub(chan)
    health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
    with pytest.raises(grpc.RpcError):
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
    _list_services(chan, "grpc.reflection.v1.ServerReflection")
    text = _scrape(server)
    check = 'grpc_method="Check",grpc_service="grpc.health.v1.Health"'
    assert f'prompttune_rpc_handled_total{{grpc_code="OK",{check}}} 1.0' in text
    assert f'prompttune_rpc_handled_total{{grpc_code="NOT_FOUND",{check}}} 1.0' in text
    assert f"prompttune_rpc_handling_seconds_count{{{check}}} 2.0" in text
    reflection = (
        'grpc_method="ServerReflectionInfo",grpc_service="grpc.reflection.v1.ServerReflection"'
    )
    assert f'prompttune_rpc_handled_total{{grpc_code="OK",{reflection}}} 1.0' in text
    assert "process_resident_memory_bytes " in text and "python_info{" in text


async def test_not_serving_then_serving_again() -> None:
    reporter = HealthReporter((SERVICE,))
    server = grpc.aio.server()
    reporter.attach(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as chan:
            stub = health_pb2_grpc.HealthStub(chan)

            async def status(name: str) -> int:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
                return int(reply.status)

            await reporter.serving()
            assert await status(SERVICE) == SERVING
            await reporter.not_serving(("", SERVICE))
            assert (await status(""), await status(SERVICE)) == (NOT_SERVING, NOT_SERVING)
            assert await status("grpc.health.v1.Health") == SERVING
            await reporter.serving()
            assert await status(SERVICE) == SERVING
            await reporter.draining()
            await reporter.serving()  # ignored once draining
            assert await status(SERVICE) == NOT_SERVING
    finally:
        await server.stop(0)
