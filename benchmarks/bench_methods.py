"""The methods compared by the search benchmark, each returning one JSON-ready outcome.

All methods share the task model, the splits and the final scoring: the chosen prompt is scored
on the test split with prompttune's metric, under the scoring mode the method used (label
probabilities or generation), and every test example's result is kept for paired comparisons.
Optimisation calls ("calls") never include that test scoring, which is reported apart with its
wall time per scored example (no cache: every test call reaches the model).

Scoring: prompttune runs resolve `SearchSpec.scoring` inside the engine. The zero-shot,
hand-written and random-demos methods resolve AUTO the same way, with one probe call: label
probabilities where the endpoint returns log probabilities for a label task, else generation.
On an engine without label-probability scoring every method generates.
"""

from __future__ import annotations

import dataclasses
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

from bench_tasks import BenchTask

import prompttune.search as engine
from prompttune.contract import (
    CONTENT_FREE_INPUTS,
    Budget,
    BudgetUsed,
    Calibration,
    DemoLayout,
    Evaluation,
    Example,
    ExampleResult,
    InstructionPlacement,
    Prompt,
    PromptFormat,
    Scoring,
    SearchEvent,
    SearchSpec,
    TrialFinished,
    Usage,
)
from prompttune.search import (
    CallSettings,
    ChatModel,
    ChatResponse,
    DatasetSplits,
    LLMGateway,
    Runner,
    RunnerDeps,
    SentenceTransformerEmbedder,
    evaluate_prompt,
    score_answer,
)
from prompttune.search._evaluate import score_example
from prompttune.search._labelprobs import ScoringTally
from prompttune.search._stats import make_score

TASK_MAX_TOKENS = 32
ENGINE_SCORES_LABEL_PROBABILITIES = hasattr(engine, "resolve_scoring")


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

    trace: list[tuple[int, float]] = field(default_factory=list)
    best: float = -1.0
    calls: int = 0

    def on_event(self, event: SearchEvent) -> None:
        if isinstance(event, BudgetUsed):
            self.calls = event.usage.llm_calls
        elif isinstance(event, TrialFinished) and not event.pruned and event.score > self.best:
            self.best = event.score
            self.trace.append((self.calls, event.score))

    def cancelled(self) -> bool:
        return False


def usage_fields(usage: Usage) -> dict[str, int]:
    return {
        "calls": usage.llm_calls,
        "calls_incl_cache_hits": usage.llm_calls + usage.cache_hits,
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
    calibration = getattr(prompt, "calibration", None)
    return {
        "instruction": prompt.instruction,
        "demos": [{"input": dict(d.inputs), "output": d.output} for d in prompt.demos],
        "format": {
            "instruction_placement": prompt.format.instruction_placement.value,
            "demo_layout": prompt.format.demo_layout.value,
            "answer_prefix": prompt.format.answer_prefix,
            "reasoning": prompt.format.reasoning,
        },
        "knn_k": prompt.knn_k,
        "calibration": dict(calibration.weights) if calibration is not None else None,
    }


def prompt_from_description(task: BenchTask, described: dict[str, Any]) -> Prompt:
    """The prompt `describe_prompt` described (fixed demonstrations only)."""
    if described.get("knn_k"):
        raise ValueError("a kNN prompt cannot be rebuilt from its description")
    base = task.zero_shot_prompt()
    form = described["format"]
    weights = described.get("calibration")
    return dataclasses.replace(
        base,
        instruction=described["instruction"],
        demos=tuple(Example(dict(d["input"]), d["output"]) for d in described["demos"]),
        format=PromptFormat(
            InstructionPlacement(form["instruction_placement"]),
            DemoLayout(form["demo_layout"]),
            form["answer_prefix"],
            form["reasoning"],
        ),
        calibration=Calibration(dict(weights), CONTENT_FREE_INPUTS) if weights else None,
    )


def call_settings(scoring: Scoring) -> CallSettings:
    """Task-call settings scoring under the resolved `scoring`."""
    if any(f.name == "scoring" for f in dataclasses.fields(CallSettings)):
        return CallSettings(max_tokens=TASK_MAX_TOKENS, scoring=scoring)  # type: ignore[call-arg]
    return CallSettings(max_tokens=TASK_MAX_TOKENS)


async def resolve_scoring(
    gateway: LLMGateway, task: BenchTask, prompt: Prompt, data: DatasetSplits, asked: Scoring
) -> tuple[Scoring, str]:
    """The scoring `asked` resolves to for `prompt` (one probe call on the first training
    example, as the engine does), with the engine's note when it falls back."""
    if not ENGINE_SCORES_LABEL_PROBABILITIES:
        return Scoring.GENERATION, "generation scoring: this engine has no label probabilities"
    probe = engine.label_request(prompt, data.train[0].inputs, None)
    choice = await engine.resolve_scoring(gateway, task.spec(), probe, asked)
    return choice.scoring, choice.note


async def score_on_test(
    model: ChatModel, task: BenchTask, prompt: Prompt, test: Sequence[Example], scoring: Scoring
) -> dict[str, Any]:
    """The final test score of a prompt, outside any optimisation budget, with every example's
    result and the task model's wall seconds per scored example (fresh calls, no cache)."""
    gateway = LLMGateway(model, engine.CallBudget(), None, max_concurrency=2)
    started = time.monotonic()
    evaluation = await evaluate_prompt(gateway, task.spec(), prompt, test, call_settings(scoring))
    seconds = time.monotonic() - started
    return {
        "test": score_fields(evaluation),
        "test_usage": usage_fields(gateway.usage()),
        "test_wall_seconds": seconds,
        "seconds_per_scored_example": seconds / max(len(test), 1),
        "test_answers": [_answer_fields(r) for r in evaluation.results],
    }


def _answer_fields(result: ExampleResult) -> dict[str, Any]:
    return {
        "id": result.id,
        "answer": result.answer,
        "score": result.score,
        "error": result.error,
        "prediction": getattr(result, "prediction", ""),
    }


def _gateway(model: ChatModel, max_llm_calls: int) -> LLMGateway:
    """A gateway with an in-run cache and a call cap (0 = none)."""
    return LLMGateway(model, engine.CallBudget(max_llm_calls), RunCache(), max_concurrency=2)


async def run_fixed_prompt(
    model: ChatModel, task: BenchTask, prompt: Prompt, data: DatasetSplits
) -> dict[str, Any]:
    """One prompt as written (zero-shot seed instruction or the hand-written prompt): scoring
    resolved as AUTO, scored on validation (for reference) and test."""
    started = time.monotonic()
    gateway = _gateway(model, 0)
    scoring, note = await resolve_scoring(gateway, task, prompt, data, Scoring.AUTO)
    settings = call_settings(scoring)
    validation = await evaluate_prompt(gateway, task.spec(), prompt, data.validation, settings)
    usage = usage_fields(gateway.usage())
    return {
        "status": "ok",
        "scoring": scoring.value,
        "scoring_note": note,
        "validation": score_fields(validation),
        "usage": usage,
        "wall_seconds": time.monotonic() - started,
        "trace": [(usage["calls"], validation.score.mean)],
        "prompt": describe_prompt(prompt),
        **await score_on_test(model, task, prompt, data.test, scoring),
    }


async def run_random_demos(
    model: ChatModel, task: BenchTask, data: DatasetSplits, budget: int, seed: int
) -> dict[str, Any]:
    """Demo-only random search: the zero-shot prompt with random few-shot sets (1-4 demos),
    each scored on the full validation split while the call budget allows; the zero-shot
    prompt is candidate 0 (as in DSPy's BootstrapFewShotWithRandomSearch)."""
    started = time.monotonic()
    gateway = _gateway(model, budget)
    base = task.zero_shot_prompt()
    scoring, note = await resolve_scoring(gateway, task, base, data, Scoring.AUTO)
    settings = call_settings(scoring)
    rng = random.Random(f"{seed}:{task.name}:random_demos")
    train = sorted(data.train, key=lambda ex: ex.id)
    best: tuple[float, Prompt] | None = None
    trace: list[tuple[int, float]] = []
    candidates = 0
    while gateway.usage().llm_calls + len(data.validation) <= budget:
        demos = tuple(rng.sample(train, rng.randint(1, 4))) if candidates else ()
        prompt = dataclasses.replace(base, demos=demos)
        evaluation = await evaluate_prompt(gateway, task.spec(), prompt, data.validation, settings)
        candidates += 1
        if best is None or evaluation.score.mean > best[0]:
            best = (evaluation.score.mean, prompt)
            trace.append((gateway.usage().llm_calls, evaluation.score.mean))
    if best is None:
        raise ValueError(f"budget {budget} cannot pay for one validation pass")
    return {
        "status": "ok",
        "scoring": scoring.value,
        "scoring_note": note,
        "validation": {"mean": best[0]},
        "usage": usage_fields(gateway.usage()),
        "wall_seconds": time.monotonic() - started,
        "trace": trace,
        "prompt": describe_prompt(best[1]),
        "candidates": candidates,
        **await score_on_test(model, task, best[1], data.test, scoring),
    }


@dataclass(frozen=True)
class PromptTuneRun:
    """One prompttune run's settings: the call budget, the seed and the scoring asked for."""

    budget: int
    seed: int
    scoring: Scoring = Scoring.AUTO


async def run_prompttune(
    model: ChatModel,
    task: BenchTask,
    data: DatasetSplits,
    run: PromptTuneRun,
    embedder: SentenceTransformerEmbedder,
) -> dict[str, Any]:
    """The engine's `Runner` on train + validation only (no test split inside the budget),
    with the same model as proposer and the hand-written prompt as the task's baseline; the
    returned best prompt is then scored on test under the scoring the search used."""
    started = time.monotonic()
    observer = TraceObserver()
    deps = RunnerDeps(
        task_model=model,
        proposer_model=model,
        embedder=embedder,
        observer=observer,
        cache=RunCache(),
        task_max_tokens=TASK_MAX_TOKENS,
    )
    spec = SearchSpec(
        budget=Budget(max_trials=200, max_llm_calls=run.budget, max_wall_seconds=4 * 3600.0),
        seed=run.seed,
        scoring=run.scoring,
    )
    search_data = DatasetSplits(train=data.train, validation=data.validation, test=())
    task_spec = task.spec(baseline=task.handwritten_prompt())
    result = await Runner(deps).run(task_spec, search_data, spec, f"bench-{task.slug}")
    scoring = Scoring(getattr(result, "scoring", Scoring.GENERATION))
    best = result.best
    selection = getattr(best, "selection", None)
    return {
        "status": "ok",
        "scoring": scoring.value,
        "scoring_note": getattr(result, "scoring_note", ""),
        "validation": {
            "mean": best.validation.mean,
            "ci_low": best.validation.ci_low,
            "ci_high": best.validation.ci_high,
            "baseline": result.baseline.validation.mean,
            "selection": selection.mean if selection is not None else None,
            "optimism": getattr(best, "optimism", 0.0),
        },
        "usage": usage_fields(result.usage),
        "wall_seconds": time.monotonic() - started,
        "trace": observer.trace or [(result.usage.llm_calls, best.validation.mean)],
        "prompt": describe_prompt(best.prompt),
        "improved": result.improved,
        "summary": result.summary,
        "stop_reason": result.stop_reason,
        "trials_completed": result.trials_completed,
        "trials_pruned": result.trials_pruned,
        "dropped_instructions": [
            asdict(dropped) for dropped in getattr(result, "dropped_instructions", ())
        ],
        **await score_on_test(model, task, best.prompt, data.test, scoring),
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


async def run_scoring_cost(
    model: ChatModel, task: BenchTask, prompts: dict[str, Prompt], test: Sequence[Example]
) -> dict[str, Any]:
    """Label-probability scoring and generation scoring side by side in one run: every test
    example of each prompt is scored both ways, one call at a time (no cache), the two kinds
    alternating per example and taking turns at going first, so the machine's load falls on
    both alike. Seconds are the task model's wall time per scored example as the engine sees
    it (a label example that falls back to generation pays both calls)."""
    gateway = LLMGateway(model, engine.CallBudget(), None, max_concurrency=1)
    spec = task.spec()
    tally = ScoringTally()
    kinds = {
        "label": CallSettings(
            max_tokens=TASK_MAX_TOKENS, scoring=Scoring.LABEL_PROBABILITIES, tally=tally
        ),
        "generation": CallSettings(max_tokens=TASK_MAX_TOKENS, scoring=Scoring.GENERATION),
    }
    warm_up = Example({"input": "An untimed warm-up input."}, spec.labels[0])
    for settings in kinds.values():
        await score_example(gateway, spec, next(iter(prompts.values())), warm_up, settings)
    measured: dict[str, Any] = {}
    for name, prompt in prompts.items():
        seconds: dict[str, list[float]] = {kind: [] for kind in kinds}
        correct: dict[str, list[float | None]] = {kind: [] for kind in kinds}
        tally.label_scored = tally.fallbacks = 0
        for index, example in enumerate(test):
            order = list(kinds.items())
            for kind, settings in order if index % 2 == 0 else order[::-1]:
                started = time.perf_counter()
                result = await score_example(gateway, spec, prompt, example, settings)
                seconds[kind].append(time.perf_counter() - started)
                correct[kind].append(None if result.error else result.score)
        label_s, gen_s = (sum(seconds[k]) / max(len(seconds[k]), 1) for k in kinds)
        measured[name] = {
            "prompt": describe_prompt(prompt),
            "examples": len(test),
            "label_seconds_per_example": label_s,
            "generation_seconds_per_example": gen_s,
            "time_ratio": label_s / gen_s if gen_s else None,
            "label_correct": correct["label"],
            "generation_correct": correct["generation"],
            "label_fallbacks": tally.fallbacks,
        }
    return {"status": "ok", "usage": usage_fields(gateway.usage()), "prompts": measured}
