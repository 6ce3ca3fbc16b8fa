"""WatchJob resumes across an API server restart: the SDK reconnects and continues after the
last sequence it saw, with no gap and no duplicate."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.server.conftest import TASK
from tests.server.test_durability import DATASET, SEARCH, cluster, endpoint, model_for

from prompttune.client import Client, JobState, RetryPolicy
from prompttune.server.healthcheck import probe

__all__ = ["endpoint"]  # the module-scoped fake endpoint fixture


def test_watch_survives_an_api_server_restart(tmp_path: Path, endpoint: Any) -> None:
    with cluster(tmp_path, f"sqlite:///{tmp_path / 'jobs.db'}") as nodes:
        nodes.worker()
        retry = RetryPolicy(max_retries=40, initial_backoff=0.25, max_backoff=0.5)
        with Client(nodes.target, retry=retry) as sdk:
            job = sdk.create_job(TASK, DATASET, model_for(endpoint), SEARCH)
            sequences: list[int] = []
            restarted = False
            for event in sdk.watch_job(job.id):
                sequences.append(event.sequence)
                if not restarted and event.trial_finished is not None:
                    restart_api(nodes)
                    restarted = True
            assert restarted
            assert sequences == list(range(1, len(sequences) + 1))
            assert sdk.get_job(job.id).state is JobState.SUCCEEDED


def restart_api(nodes: Any) -> None:
    nodes.api.send_signal(signal.SIGKILL)
    nodes.api.wait()
    time.sleep(0.5)
    log = (nodes.tmp_path / "serve-2.log").open("wb")
    command = [
        sys.executable, "-m", "prompttune.server.cli", "serve", "--workers", "0",
        "--port", str(nodes.port), "--db", nodes.db_url,
    ]  # fmt: skip
    nodes.api = subprocess.Popen(command, stdout=log, stderr=log)
    nodes.processes.append(nodes.api)
    deadline = time.monotonic() + 60
    while not probe(nodes.target, timeout=1):
        assert time.monotonic() < deadline, "the API server did not come back"
        time.sleep(0.1)
