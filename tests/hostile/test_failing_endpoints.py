"""Endpoints that hang, drip, refuse, answer 401 or malformed JSON, send 5 MB answers or absurd
usage, against a real server with the real OpenAI client: every job ends in a true state, in
seconds, with the cause, and health keeps answering."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from prompttune.contract import Budget, SearchSpec, wire
from prompttune.server._endpoints import EndpointConfig, EndpointEntry
from prompttune.v1 import optimizer_pb2 as pb
from prompttune.v1 import optimizer_pb2_grpc as pb_grpc
from tests.hostile.conftest import Hostile, create_request, model

TERMINAL = {pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED}


@dataclass
class Behaviour:
    """How the scripted endpoint answers: `mode` is one of "hang", "drip", "401",
    "malformed", "huge", "absurd_usage" or "ok"."""

    mode: str
    requests: int = 0


def _completion(text: str, usage: Any) -> bytes:
    choice = {"index": 0, "message": {"role": "assistant", "content": text}}
    body = {"id": "x", "object": "chat.completion", "created": 0, "model": "m"}
    return json.dumps({**body, "choices": [choice], "usage": usage}).encode()


def _handler(behaviour: Behaviour) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            behaviour.requests += 1
            mode = behaviour.mode
            if mode == "hang":
                time.sleep(120)
                return
            if mode == "401":
                self._send(401, b'{"error": {"message": "bad key"}}')
            elif mode == "malformed":
                self._send(200, b'{"choices": [ not json')
            elif mode == "huge":
                self._send(200, _completion("positive " * 600_000, {"prompt_tokens": 5}))
            elif mode == "absurd_usage":
                usage = {"prompt_tokens": -5, "completion_tokens": 1e20, "total_tokens": "x"}
                self._send(200, _completion("positive", usage))
            elif mode == "drip":
                self._drip(_completion("positive", {"prompt_tokens": 5}))
            else:
                self._send(200, _completion("positive", {"prompt_tokens": 5}))

        def do_GET(self) -> None:
            if behaviour.mode == "401":
                self._send(401, b'{"error": {"message": "bad key"}}')
            else:
                self._send(200, b'{"object": "list", "data": []}')

        def _send(self, status: int, data: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _drip(self, data: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            for byte in data:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(1.0)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def scripted() -> Iterator[Callable[[str], tuple[Behaviour, str]]]:
    servers: list[ThreadingHTTPServer] = []

    def start(mode: str) -> tuple[Behaviour, str]:
        behaviour = Behaviour(mode)
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(behaviour))
        httpd.daemon_threads = True
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return behaviour, f"http://127.0.0.1:{httpd.server_address[1]}/v1"

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def _registry(base_url: str, timeout: float = 60.0) -> EndpointConfig:
    entry = EndpointEntry(base_url=base_url, models=("m",), timeout_seconds=timeout)
    return EndpointConfig(endpoints={"scripted": entry})


def _job_request(max_wall_seconds: float = 600.0) -> pb.CreateJobRequest:
    request = create_request(model(endpoint="scripted"))
    search = SearchSpec(
        budget=Budget(max_trials=3, max_wall_seconds=max_wall_seconds),
        max_demos=1,
        num_instruction_candidates=1,
    )
    request.search.CopyFrom(wire.to_message(search))
    return request


def _wait_terminal(hostile: Hostile, job_id: str, seconds: float) -> tuple[pb.Job, float]:
    stub, started = hostile.stub(), time.monotonic()
    while time.monotonic() - started < seconds:
        job = stub.GetJob(pb.GetJobRequest(job_id=job_id))
        if job.state in TERMINAL:
            return job, time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still {job.state} after {seconds} s")


def _events(hostile: Hostile, job_id: str) -> list[pb.JobEvent]:
    channel = grpc.insecure_channel(hostile.server.target)
    stream = pb_grpc.OptimizerServiceStub(channel).WatchJob(
        pb.WatchJobRequest(job_id=job_id), timeout=10
    )
    return list(stream)


def _health_latency(hostile: Hostile) -> float:
    with grpc.insecure_channel(hostile.server.target) as channel:
        started = time.monotonic()
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        return time.monotonic() - started


def _running(hostile: Hostile, job_id: str, behaviour: Behaviour) -> None:
    stub, deadline = hostile.stub(), time.monotonic() + 20
    while behaviour.requests == 0 and time.monotonic() < deadline:
        assert stub.GetJob(pb.GetJobRequest(job_id=job_id)).state not in TERMINAL
        time.sleep(0.05)
    assert behaviour.requests > 0


@pytest.mark.parametrize("mode", ["hang", "drip"])
def test_cancel_ends_a_job_against_a_stuck_endpoint_within_five_seconds(
    hostile_factory: Any, scripted: Any, mode: str
) -> None:
    behaviour, url = scripted(mode)
    hostile = hostile_factory(_registry(url), auth=False)
    job = hostile.stub().CreateJob(_job_request()).job
    _running(hostile, job.id, behaviour)

    assert _health_latency(hostile) < 1.0
    hostile.stub().CancelJob(pb.CancelJobRequest(job_id=job.id))
    finished, seconds = _wait_terminal(hostile, job.id, 5.0)

    assert finished.state == pb.JOB_STATE_CANCELLED
    assert seconds < 5.0


def test_the_wall_budget_ends_a_job_against_a_hanging_endpoint(
    hostile_factory: Any, scripted: Any
) -> None:
    behaviour, url = scripted("hang")
    hostile = hostile_factory(_registry(url), auth=False)
    job = hostile.stub().CreateJob(_job_request(max_wall_seconds=3.0)).job
    _running(hostile, job.id, behaviour)

    finished, _seconds = _wait_terminal(hostile, job.id, 3.0 + 5.0)

    assert finished.state == pb.JOB_STATE_FAILED
    assert finished.error


@pytest.mark.parametrize(("mode", "cause"), [("401", "401"), ("malformed", "")])
def test_a_job_whose_every_call_fails_ends_failed_with_the_cause(
    hostile_factory: Any, scripted: Any, mode: str, cause: str
) -> None:
    _behaviour, url = scripted(mode)
    hostile = hostile_factory(_registry(url), auth=False)
    job = hostile.stub().CreateJob(_job_request()).job

    finished, seconds = _wait_terminal(hostile, job.id, 10.0)

    assert finished.state == pb.JOB_STATE_FAILED
    assert "scripted" in finished.error and cause in finished.error
    assert seconds < 10.0
    kinds = [event.WhichOneof("kind") for event in _events(hostile, job.id)]
    assert "notice" in kinds


def test_an_endpoint_that_refuses_connections_fails_the_job_within_ten_seconds(
    hostile_factory: Any,
) -> None:
    hostile = hostile_factory(_registry("http://127.0.0.1:9/v1"), auth=False)
    job = hostile.stub().CreateJob(_job_request()).job

    finished, seconds = _wait_terminal(hostile, job.id, 10.0)

    assert finished.state == pb.JOB_STATE_FAILED
    assert "scripted" in finished.error
    assert seconds < 10.0


def test_huge_answers_are_stored_cut(hostile_factory: Any, scripted: Any, tmp_path: Path) -> None:
    _behaviour, url = scripted("huge")
    hostile = hostile_factory(_registry(url), auth=False)
    job = hostile.stub().CreateJob(_job_request()).job

    finished, _seconds = _wait_terminal(hostile, job.id, 120.0)

    assert finished.state in TERMINAL
    database = next(tmp_path.rglob("hostile.db"))
    assert database.stat().st_size < 20 * 1024 * 1024  # 5 MB per answer would be far more


def test_absurd_usage_is_clamped_never_fatal(hostile_factory: Any, scripted: Any) -> None:
    _behaviour, url = scripted("absurd_usage")
    hostile = hostile_factory(_registry(url), auth=False)
    job = hostile.stub().CreateJob(_job_request()).job

    finished, _seconds = _wait_terminal(hostile, job.id, 120.0)

    assert finished.state == pb.JOB_STATE_SUCCEEDED, finished.error
    usage = finished.result.usage
    assert usage.prompt_tokens >= 0 and usage.completion_tokens < 10**9


@pytest.mark.parametrize(
    ("mode", "reachable", "error"),
    [("ok", True, ""), ("401", False, "HTTP 401"), ("closed", False, "connection refused")],
)
def test_dry_run_reports_whether_each_endpoint_answers(
    hostile_factory: Any, scripted: Any, mode: str, reachable: bool, error: str
) -> None:
    url = "http://127.0.0.1:9/v1" if mode == "closed" else scripted(mode)[1]
    hostile = hostile_factory(_registry(url), auth=False)
    request = _job_request()
    request.dry_run = True

    reply = hostile.stub().CreateJob(request)

    (check,) = reply.estimate.endpoints
    assert (check.endpoint, check.field) == ("scripted", "model")
    assert (check.reachable, check.error) == (reachable, error)
    assert not reply.HasField("job")
