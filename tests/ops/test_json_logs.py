"""A full job in a real `prompttune serve` process: every stderr line is one JSON object, and
CreateJob's request id links the RPC to its job's lines."""

from __future__ import annotations

import json
from typing import Any

import grpc
from tests.fakes import load_fake_openai
from tests.ops.conftest import ServeFactory
from tests.ops.jobs import small_job

from prompttune.v1 import optimizer_pb2 as pb
from prompttune.v1 import optimizer_pb2_grpc as pb_grpc

fake_openai = load_fake_openai()


def run_job(target: str, base_url: str, request_id: str) -> pb.Job:
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.OptimizerServiceStub(channel)
        created = stub.CreateJob(small_job(base_url, request_id), timeout=30)
        for _event in stub.WatchJob(pb.WatchJobRequest(job_id=created.job.id), timeout=240):
            pass
        job: pb.Job = stub.GetJob(pb.GetJobRequest(job_id=created.job.id), timeout=30)
        # A bad request and a warning-level path produce their lines too.
        try:
            stub.GetJob(pb.GetJobRequest(job_id="no-such-job"), timeout=30)
        except grpc.RpcError as error:
            assert error.code() is grpc.StatusCode.NOT_FOUND
    return job


def test_every_stderr_line_of_a_full_job_is_json(serve: ServeFactory) -> None:
    with fake_openai.serve_in_thread(fake_openai.FakeConfig(latency=0.0)) as endpoint:
        server = serve("--log-level", "INFO")
        job = run_job(server.target, f"http://127.0.0.1:{endpoint.port}/v1", "req-ops-1")
        stderr = server.stop()
    assert job.state == pb.JOB_STATE_SUCCEEDED, job.error
    lines = stderr.splitlines()
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        record = json.loads(line)  # raises, naming the line, if any line is not JSON
        assert isinstance(record, dict), f"line {number}: {line}"
        assert "event" in record and "level" in record and "timestamp" in record, line
        records.append(record)
    events = {record["event"] for record in records}
    assert {"server.started", "job.created", "job.started", "job.succeeded"} <= events
    assert "server.stopped" in events  # the last lines survive the stderr capture at exit
    assert not any(r["event"] == "stderr.line" and "%|" in r["text"] for r in records)

    created = next(r for r in records if r["event"] == "job.created")
    assert created["job_id"] == job.id and created["request_id"] == "req-ops-1"
    job_lines = [r for r in records if r.get("job_id") == job.id and r["event"] != "job.created"]
    assert len(job_lines) > 3
    assert all(r.get("request_id") == "req-ops-1" for r in job_lines)
