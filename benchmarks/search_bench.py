"""Search-quality benchmark: prompttune vs zero-shot, demo-only random search and DSPy.

Every method uses the same task model (SmolLM2-135M-Instruct behind one llama.cpp server that
this script starts), the same fixed splits of ``../shared/datasets`` and the same test metric
(label choice on the free-text answer). Results are stored per (task, method) in
``benchmarks/results/<run>/<task>/<method>.json``; a rerun skips finished pairs whose settings
are unchanged (``--force`` redoes them), so the benchmark resumes task by task. After every
pair the report is rewritten: ``benchmarks/results/<run>-<date>.{json,md,png}``.

Order: task by task, because a task's budgets depend on its earlier results: demo-only random
search and prompttune get the LLM calls DSPy's BootstrapFewShotWithRandomSearch used on that
task, `prompttune_mipro_budget` the calls MIPROv2 used (a fixed budget, stated in the result,
where DSPy did not complete or did not run). DSPy MIPROv2 and its budget-matched prompttune run
last, after every task's cheaper comparisons.

    .venv/bin/python benchmarks/search_bench.py            # the full benchmark (hours)
    .venv/bin/python benchmarks/search_bench.py --tiny     # sst2 10/10/20, minutes
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from bench_methods import (
    TASK_MAX_TOKENS,
    DspySettings,
    run_dspy,
    run_prompttune,
    run_random_demos,
    run_zero_shot,
)
from bench_model import LlamaServer, PersistentChatModel, ServerConfig, task_model
from bench_report import write_report
from bench_tasks import TASKS, BenchTask, SplitSizes, load_splits
from dspy_worker import error_summary

from prompttune.search import DatasetSplits, SentenceTransformerEmbedder

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
CACHE_DIR = BENCH_DIR / ".cache"
RESULTS_DIR = BENCH_DIR / "results"

# Execution order; each entry is (method, the DSPy optimiser whose calls set its budget).
METHODS: tuple[tuple[str, str], ...] = (
    ("zero_shot", ""),
    ("dspy_bfsrs", ""),
    ("random_demos", "dspy_bfsrs"),
    ("prompttune", "dspy_bfsrs"),
    ("dspy_mipro", ""),
    ("prompttune_mipro_budget", "dspy_mipro"),
)
# A task's pairs run in METHODS order; MIPROv2 (slow, and known to crash with this model)
# waits until every task has its cheaper comparisons.
STAGES = (
    ("zero_shot", "dspy_bfsrs", "random_demos", "prompttune"),
    ("dspy_mipro", "prompttune_mipro_budget"),
)
DSPY_METHODS = ("dspy_bfsrs", "dspy_mipro", "prompttune_mipro_budget")
DEFAULT_TASKS = tuple(TASKS)
DEFAULT_DSPY_TASKS = ("sst2", "sms_spam", "bbh/sports_understanding")

log = structlog.get_logger("bench.search")


@dataclass(frozen=True)
class BenchConfig:
    """Settings that define a result; a stored result with other settings is redone."""

    sizes: SplitSizes
    seed: int
    fixed_budget: int
    dspy_candidates: int
    dspy_timeout_seconds: float
    task_max_tokens: int = TASK_MAX_TOKENS


@dataclass(frozen=True)
class Plan:
    run_name: str
    tasks: tuple[str, ...]
    dspy_tasks: tuple[str, ...]
    methods: tuple[str, ...]
    config: BenchConfig
    force: bool
    command: str
    server_threads: int = 2

    @property
    def results_dir(self) -> Path:
        return RESULTS_DIR / self.run_name

    def result_path(self, task: str, method: str) -> Path:
        return self.results_dir / TASKS[task].slug / f"{method}.json"

    def pairs(self) -> list[tuple[str, str]]:
        """Task by task through the first stage, then task by task through the second."""
        return [
            (method, task)
            for stage in STAGES
            for task in self.tasks
            for method in stage
            if method in self.methods and (method not in DSPY_METHODS or task in self.dspy_tasks)
        ]


def load_result(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def resolve_budget(plan: Plan, task: str, reference: str) -> dict[str, Any]:
    """The call budget of a budgeted method: the reference DSPy optimiser's distinct calls when
    it completed on this task, else the fixed budget (the reason is kept in the result)."""
    fixed = plan.config.fixed_budget
    if task not in plan.dspy_tasks:
        return {"max_llm_calls": fixed, "source": "fixed (DSPy not run on this task)"}
    done = load_result(plan.result_path(task, reference))
    if done is None:
        return {"max_llm_calls": fixed, "source": f"fixed ({reference} has no result yet)"}
    if done.get("status") != "ok":
        return {"max_llm_calls": fixed, "source": f"fixed ({reference} {done.get('status')})"}
    return {"max_llm_calls": int(done["usage"]["calls"]), "source": f"calls used by {reference}"}


def settings_key(plan: Plan, method: str, budget: dict[str, Any] | None) -> dict[str, Any]:
    """The settings a (task, method) result depends on; a stored result with other ones is
    redone. DSPy's options only matter to DSPy runs, the budget only to budgeted methods."""
    config = asdict(plan.config)
    if not method.startswith("dspy_"):
        config.pop("dspy_candidates")
        config.pop("dspy_timeout_seconds")
    config.pop("fixed_budget")  # it reaches a method only through `budget`
    return {"config": config, "budget": budget}


class Session:
    """The lazily started model server and embedder of one benchmark invocation."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.server: LlamaServer | None = None
        self.embedder = SentenceTransformerEmbedder()

    def ensure_server(self) -> LlamaServer:
        if self.server is None:
            config = ServerConfig(n_threads=self.plan.server_threads)
            self.server = LlamaServer(CACHE_DIR / "llama-server.log", config).__enter__()
            log.info("bench.server.ready", base_url=self.server.base_url)
        return self.server

    def new_model(self) -> PersistentChatModel:
        """A fresh client per method run: each run has its own event loop (`asyncio.run`)."""
        return task_model(self.ensure_server(), CACHE_DIR / "prompttune-responses.sqlite")

    def close(self) -> None:
        if self.server is not None:
            self.server.__exit__(None, None, None)


def run_method(
    session: Session, method: str, task: BenchTask, data: DatasetSplits, budget: int
) -> dict[str, Any]:
    plan, config = session.plan, session.plan.config
    if method.startswith("dspy_"):
        settings = DspySettings(
            python=BENCH_DIR / ".venv-dspy" / "bin" / "python",
            worker=BENCH_DIR / "dspy_worker.py",
            cache_dir=CACHE_DIR / "dspy",
            timeout_seconds=config.dspy_timeout_seconds,
            num_candidate_programs=config.dspy_candidates,
        )
        log_path = CACHE_DIR / "logs" / plan.run_name / f"{task.slug}-{method}.log"
        base_url = session.ensure_server().base_url
        return run_dspy(method, task, data, base_url, settings, log_path)
    model = session.new_model()
    runners: dict[str, Callable[[], Any]] = {
        "zero_shot": lambda: run_zero_shot(model, task, data),
        "random_demos": lambda: run_random_demos(model, task, data, budget, config.seed),
        "prompttune": lambda: run_prompttune(
            model, task, data, budget, config.seed, session.embedder
        ),
    }
    runners["prompttune_mipro_budget"] = runners["prompttune"]
    try:
        outcome: dict[str, Any] = asyncio.run(runners[method]())
    finally:
        model.close()
    return outcome


def run_pair(session: Session, method: str, task_name: str) -> None:
    plan, reference = session.plan, dict(METHODS)[method]
    path = plan.result_path(task_name, method)
    budget = resolve_budget(plan, task_name, reference) if reference else None
    key = settings_key(plan, method, budget)
    stored = load_result(path)
    if stored is not None and not plan.force and stored.get("settings") == key:
        log.info("bench.pair.skipped", task=task_name, method=method, reason="finished")
        return
    task = TASKS[task_name]
    data = load_splits(task, plan.config.sizes, plan.config.seed)
    log.info("bench.pair.started", task=task_name, method=method, budget=budget)
    started = datetime.now(UTC)
    try:
        calls = budget["max_llm_calls"] if budget else 0
        outcome = run_method(session, method, task, data, calls)
    except Exception as error:  # a crash of any method is a result, not the end of the run
        outcome = {"status": "crashed", "error": error_summary(error)}
    record = {
        "task": task_name,
        "method": method,
        "settings": key,
        "budget": budget,
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": plan.command,
        **outcome,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, default=str))
    test = outcome.get("test", {}).get("mean")
    calls_used = outcome.get("usage", {}).get("calls")
    log.info(
        "bench.pair.done",
        task=task_name,
        method=method,
        status=outcome.get("status"),
        test=test,
        calls=calls_used,
    )


def parse_args(argv: list[str]) -> Plan:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS), choices=list(TASKS))
    parser.add_argument("--dspy-tasks", nargs="+", default=list(DEFAULT_DSPY_TASKS))
    parser.add_argument("--methods", nargs="+", default=[m for m, _ in METHODS])
    parser.add_argument("--train", type=int, default=50)
    parser.add_argument("--val", type=int, default=50)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fixed-budget", type=int, default=600, help="LLM calls without DSPy")
    parser.add_argument("--dspy-candidates", type=int, default=4, help="BFSRS candidate sets")
    parser.add_argument("--dspy-timeout", type=float, default=3 * 3600.0, help="seconds per run")
    parser.add_argument(
        "--server-threads",
        type=int,
        default=2,
        help="llama.cpp threads; 1 decodes far faster while another server shares the 2 cores",
    )
    parser.add_argument("--run-name", default="search")
    parser.add_argument("--force", action="store_true", help="redo finished pairs")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument(
        "--tiny", action="store_true", help="sst2 only, 10/10/20 examples, 1 BFSRS candidate set"
    )
    args = parser.parse_args(argv)
    config = BenchConfig(
        SplitSizes(args.train, args.val, args.test),
        args.seed,
        args.fixed_budget,
        args.dspy_candidates,
        args.dspy_timeout,
    )
    tasks, dspy_tasks, methods, run_name = args.tasks, args.dspy_tasks, args.methods, args.run_name
    if args.tiny:
        config = replace(config, sizes=SplitSizes(10, 10, 20), fixed_budget=80, dspy_candidates=1)
        tasks, dspy_tasks, run_name = ["sst2"], ["sst2"], "search-tiny"
        if args.methods == parser.get_default("methods"):
            methods = [m for m, _ in METHODS if m not in ("dspy_mipro", "prompttune_mipro_budget")]
    unknown = sorted(set(methods) - {m for m, _ in METHODS})
    if unknown:
        parser.error(f"unknown methods: {unknown}")
    python = Path(sys.executable)
    shown = python.relative_to(REPO_ROOT) if python.is_relative_to(REPO_ROOT) else python
    script = Path(sys.argv[0]).resolve()
    shown_script = script.relative_to(REPO_ROOT) if script.is_relative_to(REPO_ROOT) else script
    producing = [arg for arg in argv if arg != "--report-only"]
    command = shlex.join([str(shown), str(shown_script), *producing])
    return Plan(
        run_name,
        tuple(tasks),
        tuple(t for t in dspy_tasks if t in tasks),
        tuple(methods),
        config,
        args.force,
        command,
        args.server_threads,
    )


def report(plan: Plan) -> None:
    settings = {
        **asdict(plan.config),
        "tasks": list(plan.tasks),
        "dspy_tasks": list(plan.dspy_tasks),
        "methods": list(plan.methods),
        "server_threads": plan.server_threads,
        "dspy": {
            "task_max_tokens": DspySettings.task_max_tokens,
            "prompt_max_tokens": DspySettings.prompt_max_tokens,
            "max_demos": DspySettings.max_demos,
        },
    }
    write_report(plan.results_dir, RESULTS_DIR, plan.run_name, plan.command, plan.pairs(), settings)


def main(argv: list[str]) -> int:
    plan = parse_args(argv)
    log.info("bench.plan", pairs=len(plan.pairs()), command=plan.command)
    if not plan.methods or "--report-only" in argv:
        report(plan)
        return 0
    session = Session(plan)
    started = time.monotonic()
    # `kill PID` ends the run through the `finally` below, so the model server stops too.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        for method, task in plan.pairs():
            run_pair(session, method, task)
            report(plan)
    finally:
        session.close()
    log.info("bench.done", wall_seconds=round(time.monotonic() - started, 1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
