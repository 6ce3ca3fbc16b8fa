"""Ctrl-C in `prompttune optimize`: against a server the job goes on and the CLI says how to
re-attach; in embedded mode the CLI asks the server to cancel the job and says so."""

from __future__ import annotations

import _thread
import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from tests.fakes import FakeChatModel, FakeEmbedder, FakeResolver, routing_responder
from tests.server.conftest import CALLER_ENDPOINTS
from tests.server.test_cli_batch import write_batch

from prompttune.client import Client, Job, JobState
from prompttune.search import ChatModel, ModelEndpoint
from prompttune.server import Adapters, EmbeddedServer, ServerConfig, WorkerConfig, _commands
from prompttune.server._commands import run_optimization
from prompttune.server._logging import configure_logging
from prompttune.server._taskfile import load_task_file


def slow_model(endpoint: ModelEndpoint) -> ChatModel:
    # Slow enough that the job is still running when a loaded machine's poll first sees it.
    return FakeChatModel(routing_responder, identity=f"{endpoint.base_url}|slow", delay=0.2)


@pytest.fixture(autouse=True)
def python_handles_sigint() -> Iterator[None]:
    """Ctrl-C as a terminal delivers it: Python's own SIGINT handler in this process (an
    ignored SIGINT makes `_thread.interrupt_main` do nothing, and is inherited by the CLI
    processes these tests start), whatever earlier code in the session installed."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture
def slow_server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    configure_logging("WARNING")
    config = ServerConfig(
        db_url=f"sqlite:///{tmp_path / 'slow.db'}",
        workers=1,
        worker=WorkerConfig(poll_seconds=0.05, cancel_check_seconds=0.05),
        endpoint_config=CALLER_ENDPOINTS,
    )
    with EmbeddedServer(
        config, Adapters(slow_model, FakeEmbedder, host_resolver=FakeResolver())
    ) as embedded:
        yield embedded


def wait_until_running(target: str) -> str:
    with Client(target) as client:
        for _ in range(200):
            running = client.list_jobs(state=JobState.RUNNING).jobs
            if running:
                return running[0].id
            time.sleep(0.05)
    raise AssertionError("no job started")


def test_ctrl_c_against_a_server_leaves_the_job_running_and_says_how_to_reattach(
    tmp_path: Path, slow_server: EmbeddedServer
) -> None:
    write_batch(tmp_path)
    process = subprocess.Popen(
        [sys.executable, "-m", "prompttune.server.cli", "optimize", "task.yaml", "--quiet",
         "--server", slow_server.target],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    job_id = wait_until_running(slow_server.target)

    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)

    assert process.returncode == 130 and out == ""
    assert f"job {job_id} keeps running on {slow_server.target}" in err
    assert f"prompttune jobs watch {job_id} --server {slow_server.target}" in err
    assert "Traceback" not in err
    with Client(slow_server.target) as client:
        assert client.get_job(job_id).state in (JobState.RUNNING, JobState.SUCCEEDED)


def test_ctrl_c_in_embedded_mode_cancels_the_job(
    tmp_path: Path, slow_server: EmbeddedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    write_batch(tmp_path)
    request = load_task_file(tmp_path / "task.yaml")
    args = argparse.Namespace(server=None, request_id=None)

    def interrupt_once_running() -> None:
        wait_until_running(slow_server.target)
        _thread.interrupt_main()

    threading.Thread(target=interrupt_once_running, daemon=True).start()
    with Client(slow_server.target) as client:
        job = run_optimization(client, request, args, quiet=False)

    assert job.state is JobState.CANCELLED
    err = capsys.readouterr().err
    after = err.split(f"interrupted: cancelling job {job.id}")[1]
    assert err.count("[running") <= 1 and "[cancelled" in after  # followed on, not replayed


class InterruptedWhileCancelling(Client):
    """The user presses Ctrl-C again while the CLI waits for the cancel."""

    def cancel_job(self, job_id: str) -> Job:
        _thread.interrupt_main()
        job = super().cancel_job(job_id)
        time.sleep(2)  # the second interrupt lands here at the latest
        return job


def test_a_second_ctrl_c_leaves_at_once(
    tmp_path: Path, slow_server: EmbeddedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_batch(tmp_path)
    request = load_task_file(tmp_path / "task.yaml")
    left: list[str] = []

    def leave_now(message: str) -> NoReturn:
        left.append(message)
        raise SystemExit(130)

    monkeypatch.setattr(_commands, "leave_now", leave_now)
    threading.Thread(
        target=lambda: (wait_until_running(slow_server.target), _thread.interrupt_main()),
        daemon=True,
    ).start()
    with InterruptedWhileCancelling(slow_server.target) as client, pytest.raises(SystemExit):
        run_optimization(client, request, argparse.Namespace(server=None, request_id=None), True)

    assert len(left) == 1 and "was asked to cancel" in left[0]
