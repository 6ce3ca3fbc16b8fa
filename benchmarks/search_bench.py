"""Search-quality benchmark v2: prompttune against honest baselines, on two embedded models.

Methods, on every (model, task): the seed instruction zero-shot (in the user message with an
answer cue, the engine's default baseline); a hand-written prompt per task (bench_tasks.py,
also the engine's `TaskSpec.baseline` for prompttune); prompttune with its defaults (scoring
AUTO); demo-only random search at the calls prompttune used; prompttune with
`SearchSpec.scoring=GENERATION` at prompttune's budget; and "scoring_cost", which scores
prompttune's winner and the zero-shot seed on the test split by label probabilities and by
generation side by side (alternating per example, one call at a time), for the time ratio the
report judges. DSPy methods still run when named.

Models: SmolLM2-135M-Instruct ("smollm2") and Gemma 3 270M ("gemma"), each on the managed
llama.cpp server the service itself runs. Results are stored per (model, task, method) in
``benchmarks/results/<run>/<model>/<task>/<method>.json``; a rerun skips finished triples whose
settings are unchanged (``--force`` redoes them). After every triple the report is rewritten:
``benchmarks/results/<run>-<date>.{json,md,png}``.

    .venv/bin/python benchmarks/search_bench.py                      # everything (hours)
    .venv/bin/python benchmarks/search_bench.py --tasks sst2 --methods zero_shot handwritten \\
        --models smollm2 gemma --train 10 --val 10 --test 20          # minutes
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
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from bench_methods import (
    TASK_MAX_TOKENS,
    DspySettings,
    PromptTuneRun,
    prompt_from_description,
    run_dspy,
    run_fixed_prompt,
    run_prompttune,
    run_random_demos,
    run_scoring_cost,
)
from bench_model import MODELS, ServerConfig, TaskModels
from bench_report import write_report
from bench_tasks import TASKS, BenchTask, SplitSizes, load_splits
from dspy_worker import error_summary

from prompttune.contract import Scoring, labels_distinguishable
from prompttune.search import DatasetSplits, SentenceTransformerEmbedder

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
CACHE_DIR = BENCH_DIR / ".cache"
RESULTS_DIR = BENCH_DIR / "results"

# Execution order within a (model, task); each method with the method whose calls set its
# budget ("" = the fixed budget, or none for unbudgeted methods).
METHODS: tuple[tuple[str, str], ...] = (
    ("zero_shot", ""),
    ("handwritten", ""),
    ("prompttune", ""),
    ("random_demos", "prompttune"),
    ("prompttune_generation", "prompttune"),
    ("scoring_cost", "prompttune"),
    ("dspy_bfsrs", ""),
    ("dspy_mipro", ""),
)
DEFAULT_METHODS = (
    "zero_shot",
    "handwritten",
    "prompttune",
    "random_demos",
    "prompttune_generation",
    "scoring_cost",
)
BUDGETED = ("prompttune", "random_demos", "prompttune_generation")
DEFAULT_TASKS = tuple(TASKS)

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
    models: tuple[str, ...]
    tasks: tuple[str, ...]
    methods: tuple[str, ...]
    config: BenchConfig
    force: bool
    command: str
    server_threads: int = 2

    @property
    def results_dir(self) -> Path:
        return RESULTS_DIR / self.run_name

    def result_path(self, model: str, task: str, method: str) -> Path:
        return self.results_dir / model / TASKS[task].slug / f"{method}.json"

    def triples(self) -> list[tuple[str, str, str]]:
        """Model by model, task by task, methods in METHODS order."""
        return [
            (model, task, method)
            for model in self.models
            for task in self.tasks
            for method, _ in METHODS
            if method in self.methods
        ]


def load_result(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def resolve_budget(plan: Plan, model: str, task: str, method: str) -> dict[str, Any] | None:
    """The call budget of a budgeted method: the calls its reference method used on this
    (model, task) when that finished, else the fixed budget (the reason is kept)."""
    if method not in BUDGETED:
        return None
    fixed = plan.config.fixed_budget
    reference = dict(METHODS)[method]
    if not reference:
        return {"max_llm_calls": fixed, "source": "fixed"}
    done = load_result(plan.result_path(model, task, reference))
    if done is None or done.get("status") != "ok":
        why = "has no result" if done is None else done.get("status")
        return {"max_llm_calls": fixed, "source": f"fixed ({reference} {why})"}
    calls = int(done["usage"]["calls"])
    if method == "prompttune_generation":
        # The same budget prompttune had, not the calls it happened to use.
        calls = int(done.get("budget", {}).get("max_llm_calls", fixed))
    return {"max_llm_calls": calls, "source": f"calls of {reference}"}


def settings_key(
    plan: Plan, model: str, task: str, method: str, budget: dict[str, Any] | None
) -> dict[str, Any]:
    """The settings a result depends on; a stored result with other ones is redone."""
    config = asdict(plan.config)
    if not method.startswith("dspy_"):
        config.pop("dspy_candidates")
        config.pop("dspy_timeout_seconds")
    config.pop("fixed_budget")  # it reaches a method only through `budget`
    key: dict[str, Any] = {"config": config, "budget": budget}
    if method == "scoring_cost":  # measures prompttune's winner: redone when that changes
        winner = load_result(plan.result_path(model, task, "prompttune")) or {}
        key["prompttune_finished_at"] = winner.get("finished_at")
    return key


class Session:
    """The lazily started model servers and embedder of one benchmark invocation."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.models = TaskModels(ServerConfig(n_threads=plan.server_threads))
        self._embedder: SentenceTransformerEmbedder | None = None

    @property
    def embedder(self) -> SentenceTransformerEmbedder:
        if self._embedder is None:
            self._embedder = SentenceTransformerEmbedder()
        return self._embedder

    def close(self) -> None:
        self.models.close()


def run_method(
    session: Session, model: str, method: str, task: BenchTask, data: DatasetSplits, budget: int
) -> dict[str, Any]:
    config = session.plan.config
    if method.startswith("dspy_"):
        settings = DspySettings(
            python=BENCH_DIR / ".venv-dspy" / "bin" / "python",
            worker=BENCH_DIR / "dspy_worker.py",
            cache_dir=CACHE_DIR / "dspy",
            timeout_seconds=config.dspy_timeout_seconds,
            num_candidate_programs=config.dspy_candidates,
        )
        log_path = CACHE_DIR / "logs" / session.plan.run_name / f"{model}-{task.slug}-{method}.log"
        base_url = session.models.base_url(model)
        return run_dspy(method, task, data, base_url, settings, log_path)
    chat = session.models.chat_model(model)
    if method == "scoring_cost":
        return asyncio.run(scoring_cost(session, model, chat, task, data))
    runners: dict[str, Callable[[], Any]] = {
        "zero_shot": lambda: run_fixed_prompt(chat, task, task.zero_shot_prompt(), data),
        "handwritten": lambda: run_fixed_prompt(chat, task, task.handwritten_prompt(), data),
        "random_demos": lambda: run_random_demos(chat, task, data, budget, config.seed),
        "prompttune": lambda: run_prompttune(
            chat, task, data, PromptTuneRun(budget, config.seed), session.embedder
        ),
        "prompttune_generation": lambda: run_prompttune(
            chat, task, data, PromptTuneRun(budget, config.seed, Scoring.GENERATION),
            session.embedder,
        ),
    }  # fmt: skip
    outcome: dict[str, Any] = asyncio.run(runners[method]())
    return outcome


async def scoring_cost(
    session: Session, model: str, chat: Any, task: BenchTask, data: DatasetSplits
) -> dict[str, Any]:
    """Label probabilities against generation, side by side, on prompttune's winner and on
    the zero-shot seed prompt (label tasks whose labels a first token tells apart)."""
    spec = task.spec()
    if not spec.labels or not labels_distinguishable(spec.labels):
        return {"status": "skipped", "reason": "no label set a first token tells apart"}
    winner = load_result(session.plan.result_path(model, task.name, "prompttune"))
    if winner is None or winner.get("status") != "ok":
        return {"status": "skipped", "reason": "prompttune has no result"}
    prompts = {
        "prompttune winner": prompt_from_description(task, winner["prompt"]),
        "zero-shot seed": task.zero_shot_prompt(),
    }
    return await run_scoring_cost(chat, task, prompts, data.test)


def run_triple(session: Session, model: str, task_name: str, method: str) -> None:
    plan = session.plan
    path = plan.result_path(model, task_name, method)
    budget = resolve_budget(plan, model, task_name, method)
    key = settings_key(plan, model, task_name, method, budget)
    stored = load_result(path)
    if stored is not None and not plan.force and stored.get("settings") == key:
        log.info("bench.triple.skipped", model=model, task=task_name, method=method)
        return
    task = TASKS[task_name]
    data = load_splits(task, plan.config.sizes, plan.config.seed)
    log.info("bench.triple.started", model=model, task=task_name, method=method, budget=budget)
    started = datetime.now(UTC)
    try:
        calls = budget["max_llm_calls"] if budget else 0
        outcome = run_method(session, model, method, task, data, calls)
    except Exception as error:  # a crash of any method is a result, not the end of the run
        outcome = {"status": "crashed", "error": error_summary(error)}
    record = {
        "model": model,
        "task": task_name,
        "method": method,
        "held_out": task.held_out,
        "settings": key,
        "budget": budget,
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": plan.command,
        **outcome,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, default=str))
    log.info(
        "bench.triple.done",
        model=model,
        task=task_name,
        method=method,
        status=outcome.get("status"),
        test=outcome.get("test", {}).get("mean"),
        calls=outcome.get("usage", {}).get("calls"),
    )


def parse_args(argv: list[str]) -> Plan:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS), choices=list(TASKS))
    parser.add_argument(
        "--methods", nargs="+", default=list(DEFAULT_METHODS), choices=[m for m, _ in METHODS]
    )
    parser.add_argument("--train", type=int, default=50)
    parser.add_argument("--val", type=int, default=60)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", type=int, default=400, help="prompttune's LLM calls")
    parser.add_argument("--dspy-candidates", type=int, default=4, help="BFSRS candidate sets")
    parser.add_argument("--dspy-timeout", type=float, default=3 * 3600.0, help="seconds per run")
    parser.add_argument("--server-threads", type=int, default=2, help="llama.cpp threads")
    parser.add_argument("--run-name", default="search-v2")
    parser.add_argument("--force", action="store_true", help="redo finished triples")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    config = BenchConfig(
        SplitSizes(args.train, args.val, args.test),
        args.seed,
        args.budget,
        args.dspy_candidates,
        args.dspy_timeout,
    )
    python = Path(sys.executable)
    shown = python.relative_to(REPO_ROOT) if python.is_relative_to(REPO_ROOT) else python
    script = Path(sys.argv[0]).resolve()
    shown_script = script.relative_to(REPO_ROOT) if script.is_relative_to(REPO_ROOT) else script
    producing = [arg for arg in argv if arg != "--report-only"]
    return Plan(
        args.run_name,
        tuple(args.models),
        tuple(args.tasks),
        tuple(args.methods),
        config,
        args.force,
        shlex.join([str(shown), str(shown_script), *producing]),
        args.server_threads,
    )


def report(plan: Plan) -> None:
    settings = {
        **asdict(plan.config),
        "models": list(plan.models),
        "tasks": list(plan.tasks),
        "held_out_tasks": [t for t in plan.tasks if TASKS[t].held_out],
        "methods": list(plan.methods),
        "server_threads": plan.server_threads,
    }
    write_report(
        plan.results_dir, RESULTS_DIR, plan.run_name, plan.command, plan.triples(), settings
    )


def main(argv: list[str]) -> int:
    plan = parse_args(argv)
    log.info("bench.plan", triples=len(plan.triples()), command=plan.command)
    if "--report-only" in argv:
        report(plan)
        return 0
    session = Session(plan)
    started = time.monotonic()
    # `kill PID` ends the run through the `finally` below, so the model servers stop too.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        for model, task, method in plan.triples():
            run_triple(session, model, task, method)
            report(plan)
    finally:
        session.close()
    log.info("bench.done", wall_seconds=round(time.monotonic() - started, 1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
