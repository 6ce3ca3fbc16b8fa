"""Runs one DSPy optimiser on one task; executed by the DSPy venv, never by the project venv.

Usage: ``benchmarks/.venv-dspy/bin/python benchmarks/dspy_worker.py JOB.json RESULT.json``.

The job file (written by ``search_bench.py``) holds the task, its fixed splits, the endpoint of
the shared llama.cpp server and the optimiser settings. The worker compiles ``dspy.Predict``
with BootstrapFewShotWithRandomSearch or MIPROv2, then runs the compiled program on the test
split and writes the raw output field per test example; the parent scores those answers with
prompttune's own metric, so every method is scored by one function.

LLM calls are counted by wrapping DSPy's execution layer: every request the program makes
(``calls_incl_cache_hits``), the distinct requests among them (``calls``, what a cold cache
pays), and the requests that really reached the server in this run (``upstream_calls``).
Token counts come from the server's usage fields, kept in a ledger beside DSPy's disk cache
so that a rerun served from the cache reports the same tokens. A crash is a result: the
worker records the exception and the counts up to it.

Only the standard library and dspy are imported: this file must not import prompttune.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Standard library only at module level: DSPy lives in its own venv (imported inside the
# functions that need it), and search_bench.py imports `error_summary` from here.

IGNORED_KEY_FIELDS = ("api_key", "api_base", "base_url")


def choose_label(answer: str, labels: list[str]) -> str | None:
    """The label mentioned first in `answer` (whole word, case-insensitive); longest on ties.

    A copy of prompttune's label-choice rule for DSPy's own optimisation metric; the reported
    test scores are computed by prompttune itself from the raw answers.
    """
    best: tuple[int, int] | None = None
    chosen = None
    for label in labels:
        match = re.search(rf"(?<!\w){re.escape(label.strip())}(?!\w)", answer, re.IGNORECASE)
        if match is None:
            continue
        rank = (match.start(), -len(label))
        if best is None or rank < best:
            best, chosen = rank, label
    return chosen


@dataclass
class CallLedger:
    """Counts DSPy's LM requests per phase; thread-safe (Evaluate may use a thread pool)."""

    usage_path: Path
    phase: str = "compile"
    lock: threading.Lock = field(default_factory=threading.Lock)
    counts: dict[str, dict[str, Any]] = field(default_factory=dict)
    usage: dict[str, list[int]] = field(default_factory=dict)

    def load_usage(self) -> None:
        if self.usage_path.exists():
            for line in self.usage_path.read_text().splitlines():
                if line.strip():
                    entry = json.loads(line)
                    self.usage[entry["key"]] = [entry["prompt_tokens"], entry["completion_tokens"]]

    def _phase_counts(self) -> dict[str, Any]:
        return self.counts.setdefault(
            self.phase, {"logical": 0, "upstream": 0, "distinct": set(), "errors": 0}
        )

    def record(self, key: str, result: Any, hit: bool) -> None:
        tokens = _usage_tokens(result)
        with self.lock:
            counts = self._phase_counts()
            counts["logical"] += 1
            counts["distinct"].add(key)
            if not hit:
                counts["upstream"] += 1
                if key not in self.usage and tokens is not None:
                    self.usage[key] = list(tokens)
                    with self.usage_path.open("a") as ledger:
                        ledger.write(
                            json.dumps(
                                {
                                    "key": key,
                                    "prompt_tokens": tokens[0],
                                    "completion_tokens": tokens[1],
                                }
                            )
                            + "\n"
                        )

    def record_error(self, key: str) -> None:
        with self.lock:
            counts = self._phase_counts()
            counts["logical"] += 1
            counts["upstream"] += 1
            counts["errors"] += 1
            counts["distinct"].add(key)

    def distinct_calls(self, phase: str) -> int:
        with self.lock:
            return len(self.counts.get(phase, {}).get("distinct", ()))

    def summary(self, phase: str) -> dict[str, int]:
        with self.lock:
            counts = self.counts.get(phase, {"logical": 0, "upstream": 0, "distinct": set()})
            keys = counts["distinct"]
            prompt = sum(self.usage.get(k, [0, 0])[0] for k in keys)
            completion = sum(self.usage.get(k, [0, 0])[1] for k in keys)
            return {
                "calls": len(keys),
                "calls_incl_cache_hits": counts["logical"],
                "upstream_calls": counts["upstream"],
                "failed_calls": counts.get("errors", 0),
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "tokens": prompt + completion,
            }


def _usage_tokens(result: Any) -> tuple[int, int] | None:
    usage = getattr(result, "usage", None) or {}
    if not isinstance(usage, dict):
        usage = dict(getattr(usage, "__dict__", {}))
    prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
    completion = usage.get("completion_tokens", usage.get("output_tokens"))
    if prompt is None and completion is None:
        return None
    return int(prompt or 0), int(completion or 0)


def _request_key(key: dict[str, Any]) -> str:
    stable = {k: v for k, v in key.items() if k not in IGNORED_KEY_FIELDS}
    text = json.dumps(stable, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def install_call_counting(ledger: CallLedger) -> None:
    """Wraps DSPy's execution layer, which `LM.__call__` looks up by module attribute."""
    from dspy.clients import execution

    original_execute, original_aexecute = execution.execute, execution.aexecute

    def execute(lm: Any, call: Any) -> Any:
        key = _request_key(call.key(lm, False))
        try:
            result = original_execute(lm, call)
        except Exception:
            ledger.record_error(key)
            raise
        ledger.record(key, result, bool(getattr(result, "cache_hit", False)))
        return result

    async def aexecute(lm: Any, call: Any) -> Any:
        key = _request_key(call.key(lm, False))
        try:
            result = await original_aexecute(lm, call)
        except Exception:
            ledger.record_error(key)
            raise
        ledger.record(key, result, bool(getattr(result, "cache_hit", False)))
        return result

    execution.execute = execute
    execution.aexecute = aexecute


def install_eval_trace(ledger: CallLedger, trace: list[dict[str, Any]]) -> None:
    """Records every Evaluate run of the optimiser: calls so far, score, examples."""
    from dspy.evaluate.evaluate import Evaluate

    original = Evaluate.__call__

    def call(self: Any, program: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, program, *args, **kwargs)
        devset = kwargs.get("devset") or (args[1] if len(args) > 1 else None) or self.devset
        score = float(getattr(result, "score", result))
        trace.append(
            {
                "calls": ledger.distinct_calls("compile"),
                "score": score / 100.0 if score > 1.0 else score,
                "examples": len(devset),
            }
        )
        return result

    Evaluate.__call__ = call


def build_program(dspy: Any, job: dict[str, Any]) -> Any:
    fields = job["fields"]
    signature = dspy.Signature(f"{fields['input']} -> {fields['output']}", job["instruction"])
    return dspy.Predict(signature)


def to_examples(dspy: Any, job: dict[str, Any], rows: list[dict[str, str]]) -> list[Any]:
    fields = job["fields"]
    return [
        dspy.Example(
            **{fields["input"]: row["input"], fields["output"]: row["output"]}
        ).with_inputs(fields["input"])
        for row in rows
    ]


def make_metric(job: dict[str, Any]) -> Any:
    output, labels = job["fields"]["output"], job["labels"]

    def metric(example: Any, prediction: Any, trace: Any = None) -> float:
        answer = str(getattr(prediction, output, "") or "")
        chosen = choose_label(answer, labels)
        correct = chosen is not None and chosen.lower() == str(example[output]).lower()
        return bool(correct) if trace is not None else float(correct)

    return metric


def make_lm(dspy: Any, job: dict[str, Any], max_tokens: int) -> Any:
    """An LM on the shared server. The LiteLLM engine, because DSPy 3.4's native engine sends
    the cap as ``max_completion_tokens``, which llama-cpp-python ignores (one call generated
    1,873 tokens, until the context was full); LiteLLM sends ``max_tokens``."""
    return dspy.LM(
        job["model"],
        api_base=job["api_base"],
        api_key="x",
        max_tokens=max_tokens,
        temperature=0.0,
        cache=True,
        engine="litellm",
    )


def compile_program(dspy: Any, job: dict[str, Any], train: list[Any], val: list[Any]) -> Any:
    options = job["options"]
    metric = make_metric(job)
    student = build_program(dspy, job)
    # An unparsable answer scores 0 (DSPy's failure_score) instead of aborting the whole run
    # after DSPy's default of 10 errors; crashes outside evaluation still end the run.
    max_errors = len(train) + len(val)
    if job["optimizer"] == "dspy_bfsrs":
        optimizer = dspy.BootstrapFewShotWithRandomSearch(
            metric=metric,
            max_bootstrapped_demos=options["max_bootstrapped_demos"],
            max_labeled_demos=options["max_labeled_demos"],
            num_candidate_programs=options["num_candidate_programs"],
            num_threads=options["num_threads"],
            max_errors=max_errors,
        )
        return optimizer.compile(student, trainset=train, valset=val)
    prompt_lm = make_lm(dspy, job, job["prompt_max_tokens"])
    optimizer = dspy.MIPROv2(
        metric=metric,
        prompt_model=prompt_lm,
        auto="light",
        max_bootstrapped_demos=options["max_bootstrapped_demos"],
        max_labeled_demos=options["max_labeled_demos"],
        num_threads=options["num_threads"],
        max_errors=max_errors,
        seed=job["seed"],
    )
    return optimizer.compile(student, trainset=train, valset=val)


def run_test(dspy: Any, job: dict[str, Any], program: Any) -> list[dict[str, str]]:
    fields = job["fields"]
    outputs = []
    for row in job["test"]:
        try:
            prediction = program(**{fields["input"]: row["input"]})
            outputs.append({"id": row["id"], "answer": str(getattr(prediction, fields["output"]))})
        except Exception as error:  # a parse failure is DSPy's answer: no output field
            outputs.append({"id": row["id"], "answer": "", "error": type(error).__name__})
    return outputs


def describe_program(program: Any) -> dict[str, Any]:
    described: dict[str, Any] = {}
    for name, predictor in program.named_predictors():
        described[name] = {
            "instructions": predictor.signature.instructions,
            "demos": [dict(demo.items()) for demo in predictor.demos],
        }
    return described


# Frames of DSPy's optimisers: they name the optimiser step a crash happened in.
OPTIMIZER_FRAMES = ("/teleprompt/", "/propose/")


def error_summary(error: BaseException, focus: tuple[str, ...] = ()) -> dict[str, Any]:
    """The error's type and message, plus where it was raised, outermost first, as
    ``file:line in function``: the last three frames whose path contains a `focus` string,
    then the two innermost frames (the message of a parse error is the model's whole reply,
    so the frames say which step failed)."""
    frames = traceback.extract_tb(error.__traceback__)
    focused = [f for f in frames if any(part in f.filename for part in focus)][-3:]
    chosen = focused + [f for f in frames[-2:] if f not in focused]
    where = [f"{Path(f.filename).name}:{f.lineno} in {f.name}" for f in chosen]
    return {"type": type(error).__name__, "message": str(error)[:2000], "where": where}


def main(job_path: str, result_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    cache_dir = Path(job["cache_dir"])
    cache_dir.mkdir(parents=True, exist_ok=True)
    os.environ["DSPY_CACHEDIR"] = str(cache_dir)
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # no network fetch at start-up
    import dspy

    dspy.configure_cache(
        enable_disk_cache=True, enable_memory_cache=True, disk_cache_dir=str(cache_dir / "disk")
    )
    dspy.configure(lm=make_lm(dspy, job, job["task_max_tokens"]))
    ledger = CallLedger(cache_dir / "usage-ledger.jsonl")
    ledger.load_usage()
    trace: list[dict[str, Any]] = []
    install_call_counting(ledger)
    install_eval_trace(ledger, trace)
    train, val = to_examples(dspy, job, job["train"]), to_examples(dspy, job, job["val"])
    result: dict[str, Any] = {"dspy_version": dspy.__version__, "status": "ok"}
    started = time.monotonic()

    def on_timeout(signum: int, frame: Any) -> None:
        # The parent's wall-clock limit: keep the counts so far, then stop at once.
        elapsed = time.monotonic() - started
        result.update(
            status="timeout", note=f"stopped by the wall-clock limit after {elapsed:.0f} s"
        )
        result["compile"] = {**ledger.summary("compile"), "wall_seconds": elapsed}
        result["trace"] = trace
        Path(result_path).write_text(json.dumps(result, indent=1, default=str))
        os._exit(0)

    signal.signal(signal.SIGTERM, on_timeout)
    try:
        program = compile_program(dspy, job, train, val)
    except Exception as error:
        result.update(status="crashed", error=error_summary(error, OPTIMIZER_FRAMES))
        program = None
    result["compile"] = {**ledger.summary("compile"), "wall_seconds": time.monotonic() - started}
    result["trace"] = trace
    if program is not None:
        result["program"] = describe_program(program)
        ledger.phase = "test"
        test_started = time.monotonic()
        result["test_outputs"] = run_test(dspy, job, program)
        result["test_usage"] = {
            **ledger.summary("test"),
            "wall_seconds": time.monotonic() - test_started,
        }
    Path(result_path).write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
