"""Tenants share nothing by default: one tenant's cached answers are never served to another
(unless the operator shares the cache), and a caller without a token is refused before the
server parses its request."""

from __future__ import annotations

import time
from typing import Any

import grpc

from prompttune.contract import ModelKind
from prompttune.server._endpoints import EndpointConfig, EndpointEntry
from prompttune.v1 import optimizer_pb2 as pb
from tests.hostile.conftest import Listener, create_request, evaluate_request, model

CREATE_JOB = "/prompttune.v1.OptimizerService/CreateJob"


def registry(listener: Listener, *, shared: bool) -> EndpointConfig:
    entry = EndpointEntry(base_url=listener.url, models=("m",))
    return EndpointConfig(endpoints={"gw": entry}, share_cache_across_tenants=shared)


def evaluate(stub: Any) -> pb.EvaluatePromptResponse:
    named = model(kind=ModelKind.OPENAI_COMPATIBLE, endpoint="gw")
    reply = stub.EvaluatePrompt(evaluate_request(named))
    assert isinstance(reply, pb.EvaluatePromptResponse), reply
    return reply


def test_no_cache_hit_crosses_tenants(hostile_factory: Any, listener: Listener) -> None:
    hostile = hostile_factory(registry(listener, shared=False), auth=True)
    alpha, beta = hostile.stub("token-alpha"), hostile.stub("token-beta")
    calls = 6 + 1  # six examples, and the probe for log probabilities of a label task
    first = evaluate(alpha)
    assert (first.usage.llm_calls, first.usage.cache_hits) == (calls, 0)
    again = evaluate(alpha)  # the cache works within a tenant
    assert (again.usage.llm_calls, again.usage.cache_hits) == (0, calls)
    other = evaluate(beta)
    assert (other.usage.llm_calls, other.usage.cache_hits) == (calls, 0)
    assert len(listener.received) == 2 * calls


def run_job(stub: Any) -> pb.Job:
    named = model(kind=ModelKind.OPENAI_COMPATIBLE, endpoint="gw")
    created = stub.CreateJob(create_request(named))
    assert isinstance(created, pb.CreateJobResponse), created
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = stub.GetJob(pb.GetJobRequest(job_id=created.job.id))
        if job.state in (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED):
            return job  # type: ignore[no-any-return]
        time.sleep(0.1)
    raise AssertionError("the job did not finish")


def test_a_job_of_another_tenant_gets_no_cache_hits(
    hostile_factory: Any, listener: Listener
) -> None:
    hostile = hostile_factory(registry(listener, shared=False), auth=True)
    first = run_job(hostile.stub("token-alpha"))
    assert first.state == pb.JOB_STATE_SUCCEEDED, first.error
    sent = listener.completions()
    assert sent == first.result.usage.llm_calls > 0
    other = run_job(hostile.stub("token-beta"))
    assert other.state == pb.JOB_STATE_SUCCEEDED, other.error
    assert other.result.usage.cache_hits == 0
    assert listener.completions() == sent + other.result.usage.llm_calls


def test_the_operator_may_share_the_cache(hostile_factory: Any, listener: Listener) -> None:
    hostile = hostile_factory(registry(listener, shared=True), auth=True)
    evaluate(hostile.stub("token-alpha"))
    shared = evaluate(hostile.stub("token-beta"))
    assert (shared.usage.llm_calls, shared.usage.cache_hits) == (0, 6 + 1)


def test_an_unauthenticated_30_mb_request_is_refused_unparsed(
    hostile_factory: Any, listener: Listener
) -> None:
    hostile = hostile_factory(registry(listener, shared=False), auth=True)
    options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    with grpc.insecure_channel(hostile.server.target, options=options) as channel:
        create = channel.unary_unary(
            CREATE_JOB, request_serializer=lambda raw: raw, response_deserializer=lambda raw: raw
        )
        # Not a valid message: had the server parsed it, it would answer INVALID_ARGUMENT.
        for metadata in ((), (("authorization", "Bearer forged"),)):
            try:
                create(b"\xff" * (30 * 1024 * 1024), metadata=metadata, timeout=60)
            except grpc.RpcError as error:
                assert error.code() is grpc.StatusCode.UNAUTHENTICATED
            else:
                raise AssertionError("an unauthenticated request was accepted")
