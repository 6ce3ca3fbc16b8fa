"""The methods compared by the search benchmark, each returning one JSON-ready outcome.

All methods share the task model, the splits and the final scoring: the chosen prompt (or the
compiled DSPy program's output field) is scored on the test split with prompttune's metric.
Optimisation calls ("calls") never include that test scoring, which is reported apart.

Call accounting, the same for every method: `calls` are the distinct requests of one run (what
a cold cache pays; repeats inside the run are free, as they are for DSPy's own cache),
`calls_incl_cache_hits` every request made, `upstream_calls` those that reached the server in
this run (0 on a rerun served from the persistent cache).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench_model import PersistentChatModel
from bench_tasks import BenchTask

from prompttune.search import (
    Budget,
    BudgetUsed,
    ChatResponse,
    DatasetSplits,
    Evaluation,
    Example,
    ExampleResult,
    LLMGateway,
    Prompt,
    Runner,
    RunnerDeps,
    SearchConfig,
    SearchEvent,
    SentenceTransformerEmbedder,
    TrialFinished,
    Usage,
    evaluate_prompt,
    make_score,
    score_answer,
)

TASK_MAX_TOKENS = 32


class RunCache:
    """In-memory `ResponseCache` of one method run: repeated requests inside it are free."""

    def __init__(self) -> None:
        self._entries: dict[str, ChatResponse] = {}

    def get(self, key: str) -> ChatResponse | None:
        return self._entries.get(key)

    def put(self, key: str, response: ChatResponse) -> None:
        self._entries[key] = response


@dataclass
class TraceObserver:
    """Builds (LLM calls, best full-validation score) points from the runner's events."""

    validation_size: int
    trace: list[tuple[int, float]] = field(default_factory=list)
    best: float = -1.0
    pending: float | None = None

    def on_event(self, event: SearchEvent) -> None:
        if isinstance(event, TrialFinished):
            full = event.examples >= self.validation_size and not event.pruned
            if full and event.score > self.best:
                self.best = event.score
                self.pending = event.score
        elif isinstance(event, BudgetUsed) and self.pending is not None:
            self.trace.append((event.usage.llm_calls, self.pending))
            self.pending = None

    def cancelled(self) -> bool:
        return False


def usage_fields(usage: Usage, upstream_calls: int) -> dict[str, int]:
    return {
        "calls": usage.llm_calls,
        "calls_incl_cache_hits": usage.llm_calls + usage.cache_hits,
        "upstream_calls": upstream_calls,
        "failed_calls": usage.failed_calls,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "tokens": usage.tokens,
    }


def score_fields(evaluation: Evaluation) -> dict[str, Any]:
    score = evaluation.score
    return {
        "mean": score.mean,
        "ci_low": score.ci_low,
        "ci_high": score.ci_high,
        "examples": score.examples,
        "failed": score.failed,
        "per_label": dict(score.per_label),
    }


def describe_prompt(prompt: Prompt) -> dict[str, Any]:
    return {
        "instruction": prompt.instruction,
        "demos": [{"input": dict(d.inputs), "output": d.output} for d in prompt.demos],
        "format": {
            "instruction_placement": prompt.format.instruction_placement.value,
            "demo_layout": prompt.format.demo_layout.value,
            "answer_prefix": prompt.format.answer_prefix,
        },
    }


def seed_prompt(task: BenchTask, demos: tuple[Example, ...] = ()) -> Prompt:
    spec = task.spec()
    return Prompt(
        instruction=spec.seed_instruction,
        demos=demos,
        input_fields=spec.input_fields,
        output_name=spec.output_name,
        labels=spec.labels,
    )


async def score_on_test(
    model: PersistentChatModel, task: BenchTask, prompt: Prompt, test: Sequence[Example]
) -> tuple[Evaluation, dict[str, int]]:
    """The final test score of a prompt, outside any optimisation budget."""
    before = model.upstream_calls
    gateway = LLMGateway(model, Budget(), RunCache(), max_concurrency=2)
    evaluation = await evaluate_prompt(gateway, task.spec(), prompt, test)
    return evaluation, usage_fields(gateway.usage(), model.upstream_calls - before)


async def run_zero_shot(
    model: PersistentChatModel, task: BenchTask, data: DatasetSplits
) -> dict[str, Any]:
    """The seed instruction alone; its calls are the validation scoring shown in the plot."""
    started, before = time.monotonic(), model.upstream_calls
    gateway = LLMGateway(model, Budget(), RunCache(), max_concurrency=2)
    prompt = seed_prompt(task)
    validation = await evaluate_prompt(gateway, task.spec(), prompt, data.validation)
    usage = usage_fields(gateway.usage(), model.upstream_calls - before)
    test, test_usage = await score_on_test(model, task, prompt, data.test)
    return {
        "status": "ok",
        "validation": score_fields(validation),
        "usage": usage,
        "wall_seconds": time.monotonic() - started,
        "trace": [(usage["calls"], validation.score.mean)],
        "prompt": describe_prompt(prompt),
        "test": score_fields(test),
        "test_usage": test_usage,
        "test_answers": [asdict(r) for r in test.results],
    }


async def run_random_demos(
    model: PersistentChatModel, task: BenchTask, data: DatasetSplits, budget: int, seed: int
) -> dict[str, Any]:
    """Demo-only random search: the seed instruction with random few-shot sets (1-4 demos),
    each scored on the full validation split while the call budget allows; the zero-shot
    prompt is candidate 0 (as in DSPy's BootstrapFewShotWithRandomSearch)."""
    started, before = time.monotonic(), model.upstream_calls
    gateway = LLMGateway(model, Budget(max_llm_calls=budget), RunCache(), max_concurrency=2)
    rng = random.Random(f"{seed}:{task.name}:random_demos")
    train = sorted(data.train, key=lambda ex: ex.id)
    best: tuple[float, Prompt] | None = None
    trace: list[tuple[int, float]] = []
    candidates = 0
    while gateway.usage().llm_calls + len(data.validation) <= budget:
        demos = tuple(rng.sample(train, rng.randint(1, 4))) if candidates else ()
        prompt = seed_prompt(task, demos)
        evaluation = await evaluate_prompt(gateway, task.spec(), prompt, data.validation)
        candidates += 1
        if best is None or evaluation.score.mean > best[0]:
            best = (evaluation.score.mean, prompt)
            trace.append((gateway.usage().llm_calls, evaluation.score.mean))
    if best is None:
        raise ValueError(f"budget {budget} cannot pay for one validation pass")
    usage = usage_fields(gateway.usage(), model.upstream_calls - before)
    test, test_usage = await score_on_test(model, task, best[1], data.test)
    return {
        "status": "ok",
        "validation": {"mean": best[0]},
        "usage": usage,
        "wall_seconds": time.monotonic() - started,
        "trace": trace,
        "prompt": describe_prompt(best[1]),
        "candidates": candidates,
        "test": score_fields(test),
        "test_usage": test_usage,
        "test_answers": [asdict(r) for r in test.results],
    }


async def run_prompttune(
    model: PersistentChatModel,
    task: BenchTask,
    data: DatasetSplits,
    budget: int,
    seed: int,
    embedder: SentenceTransformerEmbedder,
) -> dict[str, Any]:
    """The engine's `Runner` on train + validation only (no test split inside the budget), with
    the same model as proposer; the returned best prompt is then scored on test."""
    started, before = time.monotonic(), model.upstream_calls
    observer = TraceObserver(len(data.validation))
    deps = RunnerDeps(
        task_model=model,
        proposer_model=model,
        embedder=embedder,
        observer=observer,
        cache=RunCache(),
        task_max_tokens=TASK_MAX_TOKENS,
    )
    config = SearchConfig(
        max_trials=200, max_llm_calls=budget, max_wall_seconds=4 * 3600.0, seed=seed
    )
    search_data = DatasetSplits(train=data.train, validation=data.validation, test=())
    result = await Runner(deps).run(task.spec(), search_data, config, f"bench-{task.slug}")
    usage = usage_fields(result.usage, model.upstream_calls - before)
    best_validation = result.best.validation.mean
    trace = list(observer.trace)
    if not trace or trace[-1][1] < best_validation:
        trace.append((usage["calls"], best_validation))
    test, test_usage = await score_on_test(model, task, result.best.prompt, data.test)
    return {
        "status": "ok",
        "validation": {
            "mean": best_validation,
            "ci_low": result.best.validation.ci_low,
            "ci_high": result.best.validation.ci_high,
            "baseline": result.baseline.validation.mean,
        },
        "usage": usage,
        "wall_seconds": time.monotonic() - started,
        "trace": trace,
        "prompt": describe_prompt(result.best.prompt),
        "improved": result.improved,
        "summary": result.summary,
        "stop_reason": result.stop_reason,
        "trials_completed": result.trials_completed,
        "trials_pruned": result.trials_pruned,
        "test": score_fields(test),
        "test_usage": test_usage,
        "test_answers": [asdict(r) for r in test.results],
    }


@dataclass(frozen=True)
class DspySettings:
    """How DSPy optimisers run: their venv, cache, answer caps and per-run wall-clock limit."""

    python: Path
    worker: Path
    cache_dir: Path
    timeout_seconds: float
    task_max_tokens: int = 128
    prompt_max_tokens: int = 384
    num_candidate_programs: int = 8
    max_demos: int = 4


def _rows(examples: Sequence[Example]) -> list[dict[str, str]]:
    return [{"id": ex.id, "input": ex.inputs["input"], "output": ex.output} for ex in examples]


def _dspy_job(
    optimizer: str, task: BenchTask, data: DatasetSplits, base_url: str, settings: DspySettings
) -> dict[str, Any]:
    return {
        "optimizer": optimizer,
        "api_base": base_url,
        "model": "openai/smollm2",
        "cache_dir": str(settings.cache_dir),
        "task_max_tokens": settings.task_max_tokens,
        "prompt_max_tokens": settings.prompt_max_tokens,
        "seed": 0,
        "instruction": task.seed_instruction,
        "fields": {"input": task.dspy_input, "output": task.dspy_output},
        "labels": list(task.labels),
        "train": _rows(data.train),
        "val": _rows(data.validation),
        "test": _rows(data.test),
        "options": {
            "num_candidate_programs": settings.num_candidate_programs,
            "max_bootstrapped_demos": settings.max_demos,
            "max_labeled_demos": settings.max_demos,
            "num_threads": 1,
        },
    }


def _wait_or_stop(process: subprocess.Popen[bytes], timeout_seconds: float) -> int:
    """Waits for the worker; past the limit asks it to save its counts (SIGTERM), then kills."""
    try:
        return process.wait(timeout=timeout_seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
    except BaseException:  # the benchmark itself is stopping: do not leave the worker behind
        os.killpg(process.pid, signal.SIGKILL)
        raise
    try:
        return process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        return process.wait()


def _run_worker(job: dict[str, Any], settings: DspySettings, log_path: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="dspy-job-") as folder:
        job_path, result_path = Path(folder) / "job.json", Path(folder) / "result.json"
        job_path.write_text(json.dumps(job))
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [str(settings.python), str(settings.worker), str(job_path), str(result_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            code = _wait_or_stop(process, settings.timeout_seconds)
        if not result_path.exists():
            return {"status": "crashed", "error": {"type": "WorkerExit", "message": f"exit {code}"}}
        outcome: dict[str, Any] = json.loads(result_path.read_text())
        return outcome


def run_dspy(
    optimizer: str,
    task: BenchTask,
    data: DatasetSplits,
    base_url: str,
    settings: DspySettings,
    log_path: Path,
) -> dict[str, Any]:
    """One DSPy optimiser in a subprocess of the DSPy venv; its test answers scored here."""
    started = time.monotonic()
    outcome = _run_worker(_dspy_job(optimizer, task, data, base_url, settings), settings, log_path)
    compile_usage = outcome.pop("compile", {})
    answers = outcome.pop("test_outputs", None)
    result: dict[str, Any] = {
        **outcome,
        "usage": {k: v for k, v in compile_usage.items() if k != "wall_seconds"},
        "wall_seconds": compile_usage.get("wall_seconds", time.monotonic() - started),
    }
    trace = outcome.get("trace", [])
    full = [p for p in trace if p["examples"] >= len(data.validation)]
    best, points = -1.0, []
    for point in full:
        if point["score"] > best:
            best = point["score"]
            points.append((point["calls"], best))
    result["trace"] = points
    result["validation"] = {"mean": best} if points else {}
    if answers is not None:
        spec, gold = task.spec(), {ex.id: ex.output for ex in data.test}
        results = [
            ExampleResult(a["id"], a["answer"], score_answer(spec, a["answer"], gold[a["id"]]))
            for a in answers
        ]
        evaluation = Evaluation(make_score(spec, data.test, results), tuple(results))
        result["test"] = score_fields(evaluation)
        result["test"]["parse_failures"] = sum(1 for a in answers if a.get("error"))
        result["test_answers"] = [{**asdict(r), **a} for r, a in zip(results, answers, strict=True)]
    return result
