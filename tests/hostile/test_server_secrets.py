"""A hostile caller points model specs at its own listener and names server environment
variables as the key: the listener never receives a server variable, through the task model,
search.proposer, task.judge or EvaluatePrompt, and no error tells which variables exist."""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest

from prompttune.contract import ModelKind
from prompttune.server._endpoints import EndpointConfig, EndpointEntry
from prompttune.v1 import optimizer_pb2 as pb
from tests.hostile.conftest import (
    SECRETS,
    Listener,
    create_request,
    evaluate_request,
    model,
)

REFUSED = {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT}
SERVER_VARIABLES = (*SECRETS, "HOME", "PATH")


def attacks(listener: Listener) -> list[tuple[str, Any]]:
    """Every way a request can carry a caller URL and a key variable, named for failures."""
    operator = model(kind=ModelKind.OPENAI_COMPATIBLE, endpoint="operator")
    cases: list[tuple[str, Any]] = []
    for name in SERVER_VARIABLES:
        evil = model(
            kind=ModelKind.OPENAI_COMPATIBLE, base_url=listener.url, model="m", api_key_env=name
        )
        mixed = model(
            kind=ModelKind.OPENAI_COMPATIBLE,
            endpoint="operator",
            base_url=listener.url,
            api_key_env=name,
        )
        cases += [
            (f"CreateJob model {name}", ("CreateJob", create_request(evil))),
            (f"CreateJob model+endpoint {name}", ("CreateJob", create_request(mixed))),
            (f"proposer {name}", ("CreateJob", create_request(operator, proposer=evil))),
            (f"judge {name}", ("CreateJob", create_request(operator, judge=evil))),
            (f"EvaluatePrompt model {name}", ("EvaluatePrompt", evaluate_request(evil))),
            (f"Evaluate judge {name}", ("EvaluatePrompt", evaluate_request(operator, judge=evil))),
        ]  # fmt: skip
    return cases


def registry(operator: Listener, **settings: Any) -> EndpointConfig:
    entry = EndpointEntry(
        base_url=operator.url, models=("op-model",), api_key_env="OPERATOR_API_KEY"
    )
    return EndpointConfig(endpoints={"operator": entry}, **settings)  # fmt: skip


def assert_no_secret_reached(listener: Listener) -> None:
    for item in listener.received:
        for value in SECRETS.values():
            assert value not in item.authorization and value.encode() not in item.body


def test_under_authentication_no_request_reaches_a_caller_listener(
    hostile_factory: Any, listener_factory: Any, server_secrets: dict[str, str]
) -> None:
    attacker, operator = listener_factory(), listener_factory()
    hostile = hostile_factory(registry(operator), auth=True)
    stub = hostile.stub("token-alpha")
    for label, (rpc, request) in attacks(attacker):
        reply = getattr(stub, rpc)(request)
        assert isinstance(reply, grpc.RpcError), label
        assert reply.code() in REFUSED, (label, reply.code(), reply.details())
    # The operator's own endpoint still works, with the operator's key.
    named = model(kind=ModelKind.OPENAI_COMPATIBLE, endpoint="operator")
    evaluation = stub.EvaluatePrompt(evaluate_request(named))
    assert isinstance(evaluation, pb.EvaluatePromptResponse), evaluation
    assert operator.authorizations() == {f"Bearer {SECRETS['OPERATOR_API_KEY']}"}
    time.sleep(1.0)  # a worker would have claimed any queued job by now
    assert attacker.received == []
    assert stub.ListJobs(pb.ListJobsRequest()).jobs == []


def test_single_tenant_callers_reach_only_the_key_the_operator_allows(
    hostile_factory: Any, listener_factory: Any, server_secrets: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("CALLER_KEY", "sk-caller-allowed")
    monkeypatch.delenv("UNSET_VARIABLE_X", raising=False)
    attacker, operator = listener_factory(), listener_factory()
    settings = {"allow_caller_endpoints": True, "caller_api_key_envs": ("CALLER_KEY",)}
    stub = hostile_factory(registry(operator, **settings), auth=False).stub()
    errors = set()
    for name in (*SERVER_VARIABLES, "UNSET_VARIABLE_X", "CALLER_KEY_NOT_LISTED"):
        spec = model(
            kind=ModelKind.OPENAI_COMPATIBLE, base_url=attacker.url, model="m", api_key_env=name
        )
        reply = stub.EvaluatePrompt(evaluate_request(spec))
        assert isinstance(reply, grpc.RpcError), name
        errors.add((reply.code(), reply.details()))
    assert errors == {
        (
            grpc.StatusCode.INVALID_ARGUMENT,
            "model.api_key_env: is not a key variable this server lets callers use",
        )
    }
    assert attacker.received == []
    allowed = model(
        kind=ModelKind.OPENAI_COMPATIBLE, base_url=attacker.url, model="m", api_key_env="CALLER_KEY"
    )
    assert isinstance(stub.EvaluatePrompt(evaluate_request(allowed)), pb.EvaluatePromptResponse)
    assert attacker.authorizations() == {"Bearer sk-caller-allowed"}
    assert_no_secret_reached(attacker)
