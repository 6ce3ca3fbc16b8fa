"""`prompttune serve` as a real process: health SERVING, a Health.Watch stream that sees
NOT_SERVING first on SIGTERM, then a graceful exit with JSON log lines only."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from prompttune.server.healthcheck import probe


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_answers_health_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    command = [
        sys.executable, "-m", "prompttune.server.cli", "serve",
        "--port", str(port), "--db", f"sqlite:///{tmp_path / 'serve.db'}",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ}
    )
    target = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not probe(target, timeout=1):
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "server did not become healthy"
            time.sleep(0.2)
        with grpc.insecure_channel(target) as channel:
            request = health_pb2.HealthCheckRequest(service="prompttune.v1.OptimizerService")
            watch = health_pb2_grpc.HealthStub(channel).Watch(request, timeout=60)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            process.send_signal(signal.SIGTERM)
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    logs = process.stderr.read().decode() if process.stderr else ""
    events = [json.loads(line)["event"] for line in logs.splitlines()]
    assert events[0] == "server.started"
    assert events.index("server.draining") < events.index("server.stopped")
    assert not probe(target, timeout=1)
