"""Scale-out benchmark: one latency-bound job on 1, 2 and 4 worker processes sharing PostgreSQL.

Each run gets a fresh PostgreSQL database (cold response cache), an API-only server and N
`prompttune worker` processes; the job's trials are spread over the workers through its
shared Optuna study (parallelism = N). The task model is the fake OpenAI-compatible endpoint
of `fake_openai.py` answering after 0.2 s, with max_concurrency 2 per worker, so one worker is
bound by latency, not CPU. Reports wall time from CreateJob to SUCCEEDED, the time per phase
and the speed-up over 1 worker (target: 2 workers >= 1.7x). Proposing, validating and testing
run on the primary alone, so they bound the speed-up.

    .venv/bin/python benchmarks/scaleout_bench.py [--workers 1 2 4] [--trials 24] [--minibatch 32]

Needs PostgreSQL at $PROMPTTUNE_TEST_POSTGRES (default postgresql://postgres@127.0.0.1:5432/).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ADMIN_URL = os.environ.get(
    "PROMPTTUNE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
LATENCY_SECONDS = 0.2
TASK_MAX_CONCURRENCY = 2


def load_fake() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fake_openai", ROOT / "benchmarks/fake_openai.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("fake_openai", module)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Database:
    """A PostgreSQL database created for one run and dropped afterwards."""

    def __init__(self) -> None:
        import psycopg

        self.name = f"prompttune_bench_{secrets.token_hex(4)}"
        with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'CREATE DATABASE "{self.name}"')
        host_part = ADMIN_URL.split("://", 1)[1].rsplit("/", 1)[0]
        self.url = f"postgresql+psycopg://{host_part}/{self.name}"

    def drop(self) -> None:
        import psycopg

        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def spawn(logs: Path, name: str, db_url: str, *args: str) -> subprocess.Popen[bytes]:
    log = (logs / f"{name}.log").open("wb")
    command = [sys.executable, "-m", "prompttune.server.cli", *args, "--db", db_url]
    return subprocess.Popen(command, stdout=log, stderr=log, cwd=ROOT)


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def search_spec(trials: int, workers: int, minibatch: int) -> Any:
    from prompttune.client import Budget, SearchSpec

    return SearchSpec(
        budget=Budget(max_trials=trials, max_llm_calls=20_000),
        num_instruction_candidates=3,
        max_demos=2,
        minibatch_size=minibatch,
        num_finalists=1,
        seed=3,
        parallelism=workers,
    )


def run_once(workers: int, args: argparse.Namespace, port: int, logs: Path) -> dict[str, Any]:
    """One job on an API server plus `workers` worker processes; returns its figures."""
    from tests.server.conftest import TASK, client_examples

    from prompttune.client import Client, Dataset, JobState, ModelSpec
    from prompttune.server.healthcheck import probe

    database = Database()
    api_port = free_port()
    target = f"127.0.0.1:{api_port}"
    processes = [
        spawn(
            logs,
            f"serve-{workers}",
            database.url,
            "serve",
            "--workers",
            "0",
            "--port",
            str(api_port),
        )
    ]
    try:
        deadline = time.monotonic() + 60
        while not probe(target, timeout=1):
            if time.monotonic() > deadline:
                raise RuntimeError("the API server did not start")
            time.sleep(0.1)
        processes += [
            spawn(logs, f"worker-{workers}-{i}", database.url, "worker") for i in range(workers)
        ]
        model = replace(
            ModelSpec.openai_compatible(f"http://127.0.0.1:{port}/v1", "fake"),
            max_concurrency=TASK_MAX_CONCURRENCY,
        )
        dataset = Dataset.from_splits(
            client_examples(16, "train"), client_examples(32, "val"), client_examples(8, "test")
        )
        # Steady state: every worker has loaded its embedding model and polls for work.
        deadline = time.monotonic() + 180
        names = [f"worker-{workers}-{i}.log" for i in range(workers)]
        while not all("worker.warmed_up" in (logs / name).read_text() for name in names):
            if time.monotonic() > deadline:
                raise RuntimeError("the workers did not warm up")
            time.sleep(0.2)
        with Client(target) as client:
            started = time.monotonic()
            job = client.create_job(
                TASK, dataset, model, search_spec(args.trials, workers, args.minibatch)
            )
            while not (job := client.get_job(job.id)).done:
                time.sleep(0.1)
            wall = time.monotonic() - started
            phases = phase_seconds(list(client.watch_job(job.id)))
        if job.state is not JobState.SUCCEEDED or job.result is None:
            raise RuntimeError(f"job {job.id} ended {job.state}: {job.error}")
        by_runner = trials_by_runner(database.url, job.id)
        return {
            "workers": workers,
            "wall_seconds": round(wall, 2),
            "trials": job.result.trials_completed + job.result.trials_pruned,
            "trials_by_worker": by_runner,
            "llm_calls": job.result.usage.llm_calls,
            "best_validation": round(job.result.best.validation.mean, 4),
            "phase_seconds": phases,
        }
    finally:
        stop(processes)
        database.drop()


def phase_seconds(events: list[Any]) -> dict[str, float]:
    """Seconds the job spent in each phase (reflecting counts as searching)."""
    spent: dict[str, float] = {}
    phase, since = "", None
    for event in events:
        name = event.phase_changed.phase if event.phase_changed is not None else None
        if event.state_changed is not None and event.state_changed.state.terminal:
            name = "done"
        if name is None or name == "reflecting":
            continue
        if since is not None and phase:
            spent[phase] = spent.get(phase, 0.0) + (event.time - since).total_seconds()
        phase, since = name, event.time
    return {name: round(seconds, 2) for name, seconds in spent.items()}


def trials_by_runner(db_url: str, job_id: str) -> dict[str, int]:
    import optuna

    from prompttune.search._resume import OVER_CAP_ATTR, RUNNER_ATTR

    storage = optuna.storages.RDBStorage(db_url)
    try:
        trials = optuna.load_study(study_name=job_id, storage=storage).get_trials(deepcopy=False)
        counts: dict[str, int] = {}
        for trial in trials:
            if trial.state.is_finished() and not trial.user_attrs.get(OVER_CAP_ATTR):
                runner = str(trial.user_attrs.get(RUNNER_ATTR, 0))
                counts[runner] = counts.get(runner, 0) + 1
        return dict(sorted(counts.items()))
    finally:
        storage.engine.dispose()


def write_report(report: dict[str, Any]) -> None:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"scaleout-{stamp}.json").write_text(json.dumps(report, indent=2) + "\n")
    rows = "\n".join(
        f"| {r['workers']} | {r['wall_seconds']} | {r['speedup']}x | {r['trials']} | "
        f"{r['trials_by_worker']} | {r['llm_calls']} | {r['best_validation']} |"
        for r in report["runs"]
    )
    (out / f"scaleout-{stamp}.md").write_text(
        f"# Scale-out benchmark {stamp}\n\n`{report['command']}` on {os.cpu_count()} CPUs "
        f"(shared machine). Fake OpenAI-compatible endpoint, {LATENCY_SECONDS} s per call, "
        f"task max_concurrency {TASK_MAX_CONCURRENCY} per worker; PostgreSQL database per run; "
        f"one job of {report['trials']} trials (minibatch {report['minibatch']}) with "
        f"parallelism = workers. Load average at the end: {report['load_average_1m_at_end']}."
        "\n\n"
        "| workers | wall s | speed-up | trials | trials by worker (0 = primary) | LLM calls "
        f"| best validation |\n|---|---|---|---|---|---|---|\n{rows}\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--trials", type=int, default=24)
    # 32 = the whole validation split: one rung per trial, so every new prompt costs the same
    # and the runs compare equal work. Smaller values add successive-halving pruning, which
    # prunes less when trials run concurrently (fewer finished rungs to compare against).
    parser.add_argument("--minibatch", type=int, default=32)
    args = parser.parse_args()
    fake_openai = load_fake()
    runs: list[dict[str, Any]] = []
    config = fake_openai.FakeConfig(latency=LATENCY_SECONDS)
    with fake_openai.serve_in_thread(config) as endpoint, tempfile.TemporaryDirectory() as logs:
        for workers in args.workers:
            figures = run_once(workers, args, endpoint.port, Path(logs))
            runs.append(figures)
            print(
                f"workers={workers} wall={figures['wall_seconds']}s "
                f"trials={figures['trials_by_worker']} calls={figures['llm_calls']} "
                f"phases={figures['phase_seconds']}",
                flush=True,
            )
    base = next((r["wall_seconds"] for r in runs if r["workers"] == 1), runs[0]["wall_seconds"])
    for figures in runs:
        figures["speedup"] = round(base / figures["wall_seconds"], 2)
    command = ".venv/bin/python benchmarks/scaleout_bench.py " + " ".join(sys.argv[1:])
    report = {
        "command": command.strip(),
        "trials": args.trials,
        "minibatch": args.minibatch,
        "cpus": os.cpu_count(),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "runs": runs,
    }
    for figures in runs:
        print(
            f"{figures['workers']} worker(s): {figures['wall_seconds']:7.2f} s  "
            f"speed-up {figures['speedup']:.2f}x"
        )
    write_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
