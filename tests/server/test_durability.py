"""Durable jobs with real processes: an API server, worker processes killed with SIGKILL, a
fake OpenAI-compatible endpoint on loopback. A killed job is reclaimed when its lease expires
and finishes with the same result as an uninterrupted run, paying no call twice. A job with
parallelism 2 runs its trials on two worker processes, and a cancel stops both."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import pytest
from tests.fakes import load_fake_openai
from tests.server.conftest import TASK, client_examples

from prompttune.client import Budget, Client, Dataset, Job, JobState, ModelSpec, SearchSpec
from prompttune.search._resume import OVER_CAP_ATTR, RUNNER_ATTR
from prompttune.server.healthcheck import probe

ROOT = Path(__file__).resolve().parents[2]
LEASE_SECONDS = 1.5


fake_openai = load_fake_openai()

SEARCH = SearchSpec(
    budget=Budget(max_trials=8, max_llm_calls=3000),
    num_instruction_candidates=3,
    max_demos=2,
    minibatch_size=6,
    seed=11,
)
DATASET = Dataset.from_splits(
    client_examples(16, "train"), client_examples(24, "val"), client_examples(64, "test")
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Cluster:
    """An API-only server plus worker processes sharing one database."""

    def __init__(self, tmp_path: Path, db_url: str) -> None:
        self.tmp_path = tmp_path
        self.db_url = db_url
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.processes: list[subprocess.Popen[bytes]] = []
        self.api = self._spawn("serve", "--workers", "0", "--port", str(self.port))
        deadline = time.monotonic() + 60
        while not probe(self.target, timeout=1):
            assert self.api.poll() is None, self.log("serve")
            assert time.monotonic() < deadline
            time.sleep(0.1)

    def _spawn(self, *args: str) -> subprocess.Popen[bytes]:
        name = args[0] if args[0] == "serve" else f"worker-{len(self.processes)}"
        log = (self.tmp_path / f"{name}.log").open("wb")
        command = [sys.executable, "-m", "prompttune.server.cli", *args, "--db", self.db_url]
        command.append("--allow-caller-endpoints")  # the fake endpoint is the caller's
        process = subprocess.Popen(command, stdout=log, stderr=log, env={**os.environ})
        self.processes.append(process)
        return process

    def worker(self, max_attempts: int = 3) -> subprocess.Popen[bytes]:
        return self._spawn(
            "worker", "--lease-seconds", str(LEASE_SECONDS), "--max-attempts", str(max_attempts)
        )

    def log(self, name: str) -> str:
        return (self.tmp_path / f"{name}.log").read_text(errors="replace")

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def cluster(tmp_path: Path, db_url: str) -> Iterator[Cluster]:
    running = Cluster(tmp_path, db_url)
    try:
        yield running
    finally:
        running.close()


@pytest.fixture(scope="module")
def endpoint() -> Iterator[Any]:
    with fake_openai.serve_in_thread(fake_openai.FakeConfig(latency=0.08)) as server:
        yield server


def model_for(endpoint: Any) -> ModelSpec:
    return ModelSpec.openai_compatible(f"http://127.0.0.1:{endpoint.port}/v1", "fake")


def run_to_end(client: Client, job_id: str, timeout: float = 180) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get_job(job_id)
        if job.done:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, endpoint: Any) -> tuple[Job, int]:
    """An uninterrupted run of the job, and the requests it sent to the endpoint."""
    before = endpoint.stats.requests
    directory = tmp_path_factory.mktemp("reference")
    with cluster(directory, f"sqlite:///{directory / 'ref.db'}") as ref, Client(ref.target) as sdk:
        ref.worker()
        job = sdk.create_job(TASK, DATASET, model_for(endpoint), SEARCH)
        finished = run_to_end(sdk, job.id)
    assert finished.state is JobState.SUCCEEDED, finished.error
    return finished, endpoint.stats.requests - before


def kill_point_reached(client: Client, job_id: str, point: str) -> None:
    """Returns once the job reached `point`: "proposing", "searching" (3 trials done) or
    "validating"."""
    trials = 0
    for event in client.watch_job(job_id):
        if event.phase_changed is not None and event.phase_changed.phase == point != "searching":
            return
        if event.trial_finished is not None and point == "searching":
            trials += 1
            if trials == 3:
                return
        if event.state_changed is not None and event.state_changed.state.terminal:
            raise AssertionError(f"job ended before {point}")


@pytest.mark.parametrize("point", ["proposing", "searching", "validating"])
def test_sigkill_during_a_phase_then_resume_gives_the_same_result(
    point: str, tmp_path: Path, endpoint: Any, reference: tuple[Job, int]
) -> None:
    expected, reference_requests = reference
    before = endpoint.stats.requests
    with cluster(tmp_path, f"sqlite:///{tmp_path / 'jobs.db'}") as nodes:
        first = nodes.worker()
        with Client(nodes.target) as sdk:
            job = sdk.create_job(TASK, DATASET, model_for(endpoint), SEARCH)
            kill_point_reached(sdk, job.id, point)
            first.send_signal(signal.SIGKILL)
            first.wait()
            assert sdk.get_job(job.id).state is JobState.RUNNING
            nodes.worker()  # reclaims the job once the dead worker's lease expires
            finished = run_to_end(sdk, job.id)
            states = [
                e.state_changed.state for e in sdk.watch_job(job.id) if e.state_changed is not None
            ]

    assert finished.state is JobState.SUCCEEDED, finished.error
    assert states.count(JobState.SUCCEEDED) == 1
    assert finished.result is not None and expected.result is not None
    assert finished.result.best.prompt == expected.result.best.prompt
    assert finished.result.best.validation == expected.result.best.validation
    assert finished.result.best.test == expected.result.best.test
    assert finished.result.baseline == expected.result.baseline
    assert finished.result.trials_completed == expected.result.trials_completed
    # Calls in flight at the kill (at most the endpoint's concurrency, 4) may be sent again;
    # everything answered before it came from the cache.
    assert endpoint.stats.requests - before <= reference_requests + 4


def test_twenty_jobs_survive_random_worker_kills(
    tmp_path: Path, endpoint: Any, postgres_url: str
) -> None:
    """Workers on PostgreSQL are killed at random while 20 jobs run: every job finishes,
    exactly once. Four kills may all land on the oldest job (a reclaimed job is the first a
    new worker claims), so the workers give a job more attempts than there are kills."""
    search = SearchSpec(
        budget=Budget(max_trials=3, max_llm_calls=2000),
        num_instruction_candidates=1,
        max_demos=1,
        minibatch_size=6,
    )
    chaos = random.Random(5)
    with cluster(tmp_path, postgres_url) as nodes, Client(nodes.target) as sdk:
        attempts = 6
        workers = [nodes.worker(attempts), nodes.worker(attempts)]
        ids = [
            sdk.create_job(TASK, DATASET, model_for(endpoint), replace(search, seed=i)).id
            for i in range(20)
        ]
        for _round in range(4):
            time.sleep(chaos.uniform(1.0, 3.0))
            victim = workers.pop(chaos.randrange(len(workers)))
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            workers.append(nodes.worker(attempts))
        finished = [run_to_end(sdk, job_id, timeout=300) for job_id in ids]
        for job in finished:
            assert job.state is JobState.SUCCEEDED, job.error
            states = [
                e.state_changed.state for e in sdk.watch_job(job.id) if e.state_changed is not None
            ]
            assert states.count(JobState.SUCCEEDED) == 1
            assert states[-1] is JobState.SUCCEEDED


PARALLEL_SEARCH = replace(SEARCH, budget=Budget(max_trials=12, max_llm_calls=3000), parallelism=2)


@pytest.fixture(scope="module")
def slow_endpoint() -> Iterator[Any]:
    """Slow enough that a job is still searching when the second worker polls."""
    with fake_openai.serve_in_thread(fake_openai.FakeConfig(latency=0.1)) as server:
        yield server


def study_trials(db_url: str, job_id: str) -> list[optuna.trial.FrozenTrial]:
    """The job's Optuna trials ([] before its worker created the study)."""
    storage = optuna.storages.RDBStorage(db_url)
    try:
        return optuna.load_study(study_name=job_id, storage=storage).get_trials(deepcopy=False)
    except KeyError:
        return []
    finally:
        storage.remove_session()
        storage.engine.dispose()


def test_two_workers_run_trials_of_one_job(
    tmp_path: Path, slow_endpoint: Any, postgres_url: str
) -> None:
    with cluster(tmp_path, postgres_url) as nodes, Client(nodes.target) as sdk:
        nodes.worker()
        nodes.worker()
        job = sdk.create_job(TASK, DATASET, model_for(slow_endpoint), PARALLEL_SEARCH)
        finished = run_to_end(sdk, job.id)
        logs = nodes.log("worker-1") + nodes.log("worker-2")

    assert finished.state is JobState.SUCCEEDED, finished.error
    trials = [t for t in study_trials(postgres_url, job.id) if not t.user_attrs.get(OVER_CAP_ATTR)]
    assert len([t for t in trials if t.state.is_finished()]) == 12
    assert {t.user_attrs.get(RUNNER_ATTR) for t in trials} == {0, 1}, "both workers ran trials"
    assert "job.helper.started" in logs and "job.succeeded" in logs
    assert finished.result is not None
    assert finished.result.trials_completed + finished.result.trials_pruned == 12


def test_cancel_stops_a_job_on_every_worker_within_seconds(
    tmp_path: Path, slow_endpoint: Any, postgres_url: str
) -> None:
    search = replace(PARALLEL_SEARCH, budget=Budget(max_trials=60, max_llm_calls=20_000))
    with cluster(tmp_path, postgres_url) as nodes, Client(nodes.target) as sdk:
        nodes.worker()
        nodes.worker()
        job = sdk.create_job(TASK, DATASET, model_for(slow_endpoint), search)
        deadline = time.monotonic() + 120
        while {t.user_attrs.get(RUNNER_ATTR) for t in study_trials(postgres_url, job.id)} != {
            0,
            1,
        }:
            assert time.monotonic() < deadline, "the helper never joined"
            time.sleep(0.2)
        asked = time.monotonic()
        sdk.cancel_job(job.id)
        while not (ended := sdk.get_job(job.id)).done:
            assert time.monotonic() - asked < 5, f"not cancelled within 5 s: {ended}"
            time.sleep(0.1)
        events = list(sdk.watch_job(job.id))
        time.sleep(3)  # nothing may follow the cancellation, from either worker
        after = list(sdk.watch_job(job.id))
        finished_then = {t.number for t in study_trials(postgres_url, job.id)}
        time.sleep(2)
        finished_later = {t.number for t in study_trials(postgres_url, job.id)}

    assert sdk_state(events) is JobState.CANCELLED, ended.error
    assert events[-1].state_changed is not None
    assert len(after) == len(events)
    assert finished_later == finished_then, "a worker asked new trials after the cancel"


def sdk_state(events: list[Any]) -> JobState:
    states = [e.state_changed.state for e in events if e.state_changed is not None]
    return states[-1]
