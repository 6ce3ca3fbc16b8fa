"""Prometheus metrics, logs with tenant/job/trial context, and the Optuna storage of jobs
being readable by Optuna's public API (what optuna-dashboard uses)."""

from __future__ import annotations

import io
import json
import logging
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import structlog
from tests.server.conftest import (
    FAKE_REGISTRY,
    REGISTRY_MODEL,
    SMALL_SEARCH,
    TASK,
    FakeModels,
    fake_adapters,
    small_dataset,
)

from prompttune.client import Client, JobState
from prompttune.server import EmbeddedServer, ServerConfig, WorkerConfig
from prompttune.server._auth import TokenRegistry
from prompttune.server._logging import as_json_line, configure_logging


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("INFO", stream=stream)
    yield stream
    structlog.reset_defaults()
    logging.basicConfig(force=True)


def _metric(text: str, name: str, labels: str = "") -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and labels in line and not line.startswith("#"):
            head = line.split(" ")[0]
            if head.split("{")[0] == name:
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_logs_and_optuna_storage(tmp_path: Path, logs: io.StringIO) -> None:
    db_url = f"sqlite:///{tmp_path / 'obs.db'}"
    config = ServerConfig(
        db_url=db_url,
        worker=WorkerConfig(poll_seconds=0.05, cancel_check_seconds=0.05),
        metrics_port=0,
        auth=TokenRegistry.from_mapping({"obs-token": "acme"}),
        endpoint_config=FAKE_REGISTRY,
    )
    adapters = fake_adapters(FakeModels())
    with (
        EmbeddedServer(config, adapters) as server,
        Client(server.target, timeout=10, token="obs-token") as client,
    ):
        job = client.optimize(TASK, small_dataset(), REGISTRY_MODEL, SMALL_SEARCH)
        client.optimize(TASK, small_dataset(), REGISTRY_MODEL, SMALL_SEARCH)  # all cache hits
        assert server.app is not None and server.app.metrics_port
        url = f"http://127.0.0.1:{server.app.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    assert job.state is JobState.SUCCEEDED and job.result is not None
    assert _metric(text, "prompttune_jobs", 'state="succeeded"') == 2
    assert _metric(text, "prompttune_queue_depth") == 0
    assert _metric(text, "prompttune_trials_total") >= job.result.trials_completed
    calls = _metric(text, "prompttune_llm_calls_total", 'endpoint="http://fake.invalid/v1"')
    assert calls == job.result.usage.llm_calls > 0
    assert _metric(text, "prompttune_llm_tokens_total", 'kind="prompt"') > 0
    assert _metric(text, "prompttune_llm_latency_seconds_count") == calls
    assert _metric(text, "prompttune_cache_lookups_total", 'result="hit"') > 0
    assert _metric(text, "prompttune_cache_lookups_total", 'result="miss"') > 0
    create = 'grpc_method="CreateJob",grpc_service="prompttune.v1.OptimizerService"'
    assert _metric(text, "prompttune_rpc_handled_total", f'grpc_code="OK",{create}') == 2
    assert _metric(text, "prompttune_rpc_handling_seconds_count", create) == 2
    watch = 'grpc_method="WatchJob"'
    assert _metric(text, "prompttune_rpc_handled_total", watch) >= 2
    assert _metric(text, "process_resident_memory_bytes") > 0

    records = [json.loads(line) for line in logs.getvalue().splitlines() if line.startswith("{")]
    rpc = next(r for r in records if r["event"] == "rpc.done")
    assert rpc["tenant"] == "acme" and rpc["request_id"]
    created = next(r for r in records if r["event"] == "job.created")
    assert created["job_id"] == job.id and created["rpc"].endswith("/CreateJob")
    trial = next(r for r in records if r["event"] == "search.trial.completed")
    assert trial["job_id"] == job.id and trial["tenant"] == "acme" and "trial" in trial

    summaries = optuna.get_all_study_summaries(storage=db_url)
    assert job.id in {summary.study_name for summary in summaries}
    study = optuna.load_study(study_name=job.id, storage=db_url)
    assert len(study.trials) >= job.result.trials_completed > 0


def test_library_logs_and_warnings_are_json_lines(logs: io.StringIO) -> None:
    with structlog.contextvars.bound_contextvars(job_id="job-1"), warnings.catch_warnings():
        warnings.simplefilter("always")
        # pytest put its own warnings.showwarning back after the fixture; route them again.
        logging.captureWarnings(False)
        logging.captureWarnings(True)
        optuna.logging.get_logger("optuna.trial").warning("trial %d failed", 3)
        logging.getLogger("optuna").info("below the library level: dropped")
        warnings.warn("an old parameter", DeprecationWarning, stacklevel=1)
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("asyncio").exception("task failed")
    records = [json.loads(line) for line in logs.getvalue().splitlines()]
    assert records[0]["event"] == "trial 3 failed"
    assert records[0]["logger"] == "optuna.trial" and records[0]["job_id"] == "job-1"
    assert records[0]["level"] == "warning"
    assert any("an old parameter" in r["event"] and r["logger"] == "py.warnings" for r in records)
    failed = next(r for r in records if r["event"] == "task failed")
    assert "ValueError: boom" in failed["exception"]
    assert len(records) == 3


def test_non_json_output_is_wrapped() -> None:
    assert as_json_line('{"event": "x"}') == '{"event": "x"}'
    wrapped = json.loads(as_json_line("E1201 07:21:05 add_port.cc:83] Failed to add port"))
    assert wrapped["event"] == "stderr.line" and wrapped["text"].startswith("E1201")
    assert json.loads(as_json_line("[1, 2]"))["text"] == "[1, 2]"
