"""A hostile caller probes the network and the registry: caller URLs aimed at link-local,
metadata, the service's database or its own ports get one generic error (no port scanner),
an unknown endpoint and another tenant's endpoint answer identically (no existence oracle),
and redirects from an endpoint are not followed."""

from __future__ import annotations

import ipaddress
from typing import Any

import grpc

from prompttune.contract import ModelKind
from prompttune.server._endpoints import EndpointConfig, EndpointEntry
from prompttune.v1 import optimizer_pb2 as pb
from tests.fakes import FakeResolver
from tests.hostile.conftest import Listener, create_request, evaluate_request, model

GENERIC = (
    grpc.StatusCode.INVALID_ARGUMENT,
    "model.base_url: is not an address this server may call",
)


def caller(url: str) -> pb.ModelSpec:
    return model(kind=ModelKind.OPENAI_COMPATIBLE, base_url=url, model="m")


def test_caller_urls_to_forbidden_addresses_get_one_generic_error(
    hostile_factory: Any, listener: Listener, postgres_url: str
) -> None:
    config = EndpointConfig(allow_caller_endpoints=True)
    hostile = hostile_factory(config, auth=False, db_url=postgres_url, metrics_port=0)
    app = hostile.server.app
    grpc_port = int(hostile.server.target.rsplit(":", 1)[1])
    targets = [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://[fe80::1]:80/v1",
        "http://[::ffff:169.254.169.254]/v1",
        "http://2852039166/v1",  # 169.254.169.254 as one decimal number
        "http://0251.0376.0251.0376/v1",  # ... and in octal
        "http://127.0.0.1:5432/v1",  # the service's PostgreSQL
        "http://localhost:5432/v1",
        f"http://127.0.0.1:{grpc_port}/v1",  # its own gRPC port
        f"http://0.0.0.0:{grpc_port}/v1",
        f"http://127.0.0.1:{app.metrics_port}/v1",  # its metrics port
        "http://no-such-host.invalid/v1",
    ]
    stub = hostile.stub()
    for url in targets:
        for rpc, request in (
            ("CreateJob", create_request(caller(url))),
            ("EvaluatePrompt", evaluate_request(caller(url))),
        ):
            reply = getattr(stub, rpc)(request)
            assert isinstance(reply, grpc.RpcError), (rpc, url)
            assert (reply.code(), reply.details()) == GENERIC, (rpc, url)
    # A permitted address is called: the refusals above are the guard's, not the network's.
    allowed = stub.EvaluatePrompt(evaluate_request(caller(listener.url)))
    assert isinstance(allowed, pb.EvaluatePromptResponse)
    assert len(listener.received) == 6 + 1  # six examples and the log-probability probe


class Rebinding:
    """DNS for `rebind.example` that answers the listener's address to the first `honest`
    lookups (the job's checks), then the cloud metadata address; other hosts as FakeResolver
    answers them."""

    def __init__(self, honest: int) -> None:
        self.honest = honest
        self.lookups = 0
        self._others = FakeResolver()

    def addresses(self, host: str, port: int) -> tuple[Any, ...]:
        if host != "rebind.example":
            return self._others.addresses(host, port)
        self.lookups += 1
        answer = "127.0.0.1" if self.lookups <= self.honest else "169.254.169.254"
        return (ipaddress.ip_address(answer),)


def test_a_name_rebound_after_the_check_is_not_called(
    hostile_factory: Any, listener: Listener
) -> None:
    """The name passes EvaluatePrompt's check, then resolves to the metadata address: every
    connection resolves it again through the guard and is refused, so nothing is sent (the
    listener on the honest address proves where calls would have gone otherwise)."""
    port = listener.url.rsplit(":", 1)[1].split("/")[0]
    url = f"http://rebind.example:{port}/v1"
    honest = Rebinding(honest=10_000)
    config = EndpointConfig(allow_caller_endpoints=True)
    hostile = hostile_factory(config, auth=False, host_resolver=honest)
    reply = hostile.stub().EvaluatePrompt(evaluate_request(caller(url)))
    assert isinstance(reply, pb.EvaluatePromptResponse) and listener.completions() == 7
    sent = listener.completions()
    rebinding = Rebinding(honest=1)  # the check; every connection after it is rebound
    hostile = hostile_factory(config, auth=False, host_resolver=rebinding)
    reply = hostile.stub().EvaluatePrompt(evaluate_request(caller(url)))
    assert listener.completions() == sent  # nothing reached the honest address either
    assert rebinding.lookups > 1
    if isinstance(reply, pb.EvaluatePromptResponse):  # every call failed, none was answered
        assert reply.results and all(result.error for result in reply.results)
        assert reply.usage.failed_calls == reply.usage.llm_calls > 0
    else:
        assert isinstance(reply, grpc.RpcError)
        assert "169.254" not in (reply.details() or "")


def test_unknown_and_forbidden_endpoints_answer_identically(
    hostile_factory: Any, listener: Listener
) -> None:
    private = EndpointEntry(base_url=listener.url, models=("m",), tenants=("alpha",))
    hostile = hostile_factory(EndpointConfig(endpoints={"alpha-only": private}), auth=True)
    beta = hostile.stub("token-beta")
    answers = set()
    for name in ("alpha-only", "no-such-endpoint"):
        named = model(kind=ModelKind.OPENAI_COMPATIBLE, endpoint=name)
        for rpc, request in (
            ("CreateJob", create_request(named)),
            ("EvaluatePrompt", evaluate_request(named)),
        ):
            reply = getattr(beta, rpc)(request)
            assert isinstance(reply, grpc.RpcError)
            answers.add((reply.code(), reply.details(), tuple(reply.trailing_metadata() or ())))
    assert len(answers) == 1
    assert listener.received == []
    alpha = hostile.stub("token-alpha")
    named = model(kind=ModelKind.OPENAI_COMPATIBLE, endpoint="alpha-only")
    assert isinstance(alpha.EvaluatePrompt(evaluate_request(named)), pb.EvaluatePromptResponse)


def test_redirects_from_an_endpoint_are_not_followed(
    hostile_factory: Any, listener_factory: Any
) -> None:
    redirecting, target = listener_factory(), listener_factory()
    redirecting.redirect_to = target.url
    entry = EndpointEntry(base_url=redirecting.url, models=("m",))
    stub = hostile_factory(EndpointConfig(endpoints={"gw": entry}), auth=False).stub()
    named = model(kind=ModelKind.OPENAI_COMPATIBLE, endpoint="gw")
    stub.EvaluatePrompt(evaluate_request(named, count=1))
    assert redirecting.received
    assert target.received == []
