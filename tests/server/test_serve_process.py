"""`prompttune serve` as a real process: health SERVING, then a graceful exit on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

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
    try:
        deadline = time.monotonic() + 60
        while not probe(f"127.0.0.1:{port}", timeout=1):
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "server did not become healthy"
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    logs = process.stderr.read().decode() if process.stderr else ""
    assert '"event": "server.started"' in logs
    assert '"event": "server.stopped"' in logs
    assert not probe(f"127.0.0.1:{port}", timeout=1)
