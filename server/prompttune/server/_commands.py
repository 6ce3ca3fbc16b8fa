"""The CLI's client-side commands: optimize, jobs, evaluate, render, batch, export, report.

They talk to a server only through the SDK, read and write files only through the contract's
document codec, and print data (JSON, a prompt) alone on stdout; progress and messages go to
stderr. Nothing here imports the server's engine or storage, so these commands work from an
install without the server extra (`connect` starts an embedded server only when asked to).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn, TextIO, TypeAlias

from prompttune.client import BatchItemResult, Client, EvaluationProgress, Job, JobEvent, JobState
from prompttune.contract import (
    Dataset,
    InstructionPlacement,
    JobResult,
    ModelSpec,
    Prompt,
    PromptScores,
    Score,
    SearchSpec,
    TaskSpec,
    render,
    to_document,
)
from prompttune.server._comparing import cmd_export_finetune
from prompttune.server._progress import ProgressLine
from prompttune.server._promptfile import (
    EXPORT_FORMATS,
    FINETUNE_FORMAT,
    dump_json,
    export,
    read_prompt,
)
from prompttune.server._taskfile import (
    OptimizationRequest,
    TaskFileError,
    decode,
    load_examples,
    load_task_file,
)

Connect = Callable[[argparse.Namespace], AbstractContextManager[Client]]


def say(text: str) -> None:
    """A message for the person at the terminal: stderr, so stdout stays data."""
    print(text, file=sys.stderr, flush=True)


# ---- optimize ---------------------------------------------------------------------------


def cmd_optimize(args: argparse.Namespace, connect: Connect) -> int:
    """Runs a job to the end; stdout gets the best prompt document (the recommended model's
    for several models), stderr the rest."""
    request = optimization_request(args)
    with connect(args) as client:
        job = run_optimization(client, request, args, quiet=args.quiet)
    write_summary(job, sys.stderr)
    out = Path(args.out or f"prompttune-result-{job.id}.json")
    out.write_text(dump_json(to_document(job)), encoding="utf-8")
    say(f"result written to {out}")
    if job.result is not None:
        sys.stdout.write(dump_json(to_document(job.result.best.prompt)))
    return 0 if job.state is JobState.SUCCEEDED else 1


@dataclass(frozen=True)
class OptimizeRequest:
    """What `optimize` sends: a task file's request, or a template job's (task, data and
    search None: the template's) with further target models."""

    task: TaskSpec | None
    dataset: Dataset | None
    model: ModelSpec | None
    search: SearchSpec | None
    models: tuple[ModelSpec, ...] = ()
    template_job_id: str = ""

    @classmethod
    def of(cls, loaded: OptimizationRequest) -> OptimizeRequest:
        return cls(loaded.task, loaded.dataset, loaded.model, loaded.search)


def parse_model(text: str) -> ModelSpec:
    """A --model value: "local", a registry endpoint name ("gemma"), "endpoint/model", or a
    model spec as a JSON object."""
    text = text.strip()
    if text.startswith("{"):
        return decode(ModelSpec, _json_argument(text, "--model"), "--model", "model")
    if not text:
        raise TaskFileError("--model: empty model name")
    if text == "local":
        return ModelSpec.local()
    endpoint, _, model = text.partition("/")
    return ModelSpec.named(endpoint, model=model)


def optimization_request(args: argparse.Namespace) -> OptimizeRequest:
    """The request of `optimize`'s arguments: --model (repeatable) and --models a,b replace
    the task file's model, the first being the job's model and the rest further targets;
    --template takes task, data and search from an earlier job unless a task file is given."""
    names = [*(args.model or ()), *(n for part in args.models or () for n in part.split(","))]
    models = tuple(parse_model(name) for name in names if name.strip())
    if args.task_file is None:
        if not args.template:
            raise TaskFileError("give a task file, or --template JOB with --model")
        if not models:
            raise TaskFileError("--template needs --model")
        return OptimizeRequest(None, None, models[0], None, models[1:], args.template)
    loaded = OptimizeRequest.of(load_task_file(Path(args.task_file), args.allow_outside_data))
    first = models[0] if models else loaded.model
    return replace(loaded, model=first, models=models[1:], template_job_id=args.template or "")


def run_optimization(
    client: Client,
    request: OptimizeRequest | OptimizationRequest,
    args: argparse.Namespace,
    quiet: bool,
) -> Job:
    """Creates the job and follows it. Ctrl-C against a server leaves the job running and
    says how to re-attach; in embedded mode it cancels the job and waits for its end, and a
    second Ctrl-C leaves at once."""
    if isinstance(request, OptimizationRequest):
        request = OptimizeRequest.of(request)
    job = client.create_job(
        request.task,
        request.dataset,
        request.model,
        request.search,
        request_id=args.request_id,
        models=request.models,
        template_job_id=request.template_job_id,
    )
    follower = JobFollower(client, job.id, ProgressLine(job, sys.stderr, enabled=not quiet))
    try:
        return follower.follow()
    except KeyboardInterrupt:
        follower.progress.close()
        if args.server:
            raise Detached(job.id, args.server) from None
    say(f"interrupted: cancelling job {job.id} (press Ctrl-C again to leave at once)")
    try:
        client.cancel_job(job.id)
        return follower.follow()
    except KeyboardInterrupt:
        leave_now(f"left without waiting; job {job.id} was asked to cancel")


def model_lines(result: JobResult) -> list[str]:
    """The per-model table of a multi-model job (test score with its interval, cost, latency,
    frontier), then the recommendation; nothing for a single-model job."""
    if not result.models:
        return []
    lines = ["  models (test score [95% interval], USD, s per example, frontier):"]
    for index, entry in enumerate(result.models):
        best, usage = entry.result.best, entry.result.usage
        score = best.test or best.validation
        mark = "*" if entry.on_frontier else " "
        state = "  FAILED" if entry.result.stop_reason == "failed" else ""
        if best.test is None and not state:
            state = "  (validation: not tested)"
        lines.append(
            f"  {mark} {index}: {entry.model.label:<24} {score.mean:.3f} "
            f"[{score.ci_low:.3f}, {score.ci_high:.3f}]  ${usage.cost_usd:.4f}  "
            f"{entry.seconds_per_example:.3f}s{state}"
        )
    if result.recommendation is not None:
        lines.append(f"  recommended: {result.recommendation.reason}")
    return lines


class Detached(Exception):
    """Ctrl-C while following a job on a server: the job goes on there."""

    def __init__(self, job_id: str, server: str) -> None:
        super().__init__(
            f"interrupted: job {job_id} keeps running on {server}; re-attach with: "
            f"prompttune jobs watch {job_id} --server {server}"
        )


def leave_now(message: str) -> NoReturn:
    """Exits with 130 at once, skipping the embedded server's graceful shutdown."""
    say(f"prompttune: {message}")
    os._exit(130)


class JobFollower:
    """Watches one job, passing each event to ``progress.update`` once: `follow` resumes
    after the last event seen, also after an interrupted `follow`."""

    def __init__(self, client: Client, job_id: str, progress: ProgressLine) -> None:
        self.client, self.job_id, self.progress = client, job_id, progress
        self.cursor = 0

    def follow(self) -> Job:
        """Watches until the job is finished and returns it."""
        job = self.client.get_job(self.job_id)
        while not job.done:
            for event in self.client.watch_job(self.job_id, after_sequence=self.cursor):
                self.cursor = event.sequence
                self.progress.update(event)
            job = self.client.get_job(self.job_id)
        return job


def write_summary(job: Job, stream: TextIO) -> None:
    """The human-readable outcome of a job: scores with intervals, then the per-label and
    per-slice breakdowns of the best prompt (on test when scored, else validation)."""
    lines = [f"job {job.id}: {job.state.value}"]
    if job.error:
        lines.append(f"error: {job.error}")
    result = job.result
    if result is not None:
        for name, scores in (("baseline", result.baseline), ("best", result.best)):
            val = scores.validation
            text = f"  {name:<8} validation {val.mean:.3f} [{val.ci_low:.3f}, {val.ci_high:.3f}]"
            if scores.test is not None:
                test = scores.test
                text += f"  test {test.mean:.3f} [{test.ci_low:.3f}, {test.ci_high:.3f}]"
            lines.append(text)
        usage = result.usage
        lines += [
            f"  {result.summary}" + (" (partial: the job stopped early)" if result.partial else ""),
            f"  trials {result.trials_completed} (pruned {result.trials_pruned}), LLM calls "
            f"{usage.llm_calls}, cache hits {usage.cache_hits}, tokens {usage.tokens}, "
            f"wall {result.wall_seconds:.1f}s, stopped by {result.stop_reason}",
        ]
        lines += model_lines(result)
        best = result.best
        split, score = (
            ("test", best.test) if best.test is not None else ("validation", best.validation)
        )
        lines += score_breakdown(score, f"best on {split}")
    stream.write("\n".join(lines) + "\n")
    stream.flush()


# ---- demo report ------------------------------------------------------------------------


def describe_format(prompt: Prompt) -> str:
    """A prompt's format in plain words: where the instruction goes, its demonstrations,
    the answer cue."""
    where = {
        InstructionPlacement.SYSTEM: "in a system message",
        InstructionPlacement.USER: "in the user message, before the input",
    }.get(prompt.format.instruction_placement, prompt.format.instruction_placement.value)
    demos = len(prompt.demos) + prompt.knn_k
    shown = (
        f"{demos} demos ({prompt.format.demo_layout.value.replace('_', ' ')})"
        if demos
        else "no demos"
    )
    cue = (
        f'answer cue "{prompt.format.answer_prefix}"'
        if prompt.format.answer_prefix
        else "no answer cue"
    )
    steps = ", step-by-step reasoning" if prompt.format.reasoning else ""
    return f"instruction {where}; {shown}; {cue}{steps}"


def written_prompt(prompt: Prompt) -> list[str]:
    """The prompt as a person would write it: its messages, with each input a placeholder
    (a kNN prompt, whose demos depend on the input, in plain words instead)."""
    if prompt.knn_k:
        return [f"Instruction: {prompt.instruction}", f"Format: {describe_format(prompt)}"]
    placeholders = {name: f"<{name}>" for name in prompt.input_fields}
    return [
        f"[{message.role}] " + message.content.replace("\n", "\n    ")
        for message in render(prompt, placeholders)
    ]


def _score_row(name: str, scores: PromptScores) -> str:
    cells = [scores.validation, scores.selection, scores.test]
    shown = "".join(f"{c.mean:>12.3f}" if c is not None else f"{'-':>12}" for c in cells)
    return f"  {name:<10}{shown}"


def write_demo_report(result: JobResult, stream: TextIO) -> None:
    """The demo's outcome for a person: the baseline as written, the optimised prompt in
    plain words, validation/selection/test scores of both, the optimism and the gain."""
    baseline, best = result.baseline, result.best
    lines = ["", "Baseline, as a person would write it:"]
    lines += [f"  {line}" for line in written_prompt(baseline.prompt)]
    lines += [
        "",
        "Optimised prompt:" if result.improved else "Optimised prompt (kept the baseline):",
        f"  Instruction: {best.prompt.instruction}",
        f"  Format: {describe_format(best.prompt)}",
        "",
        f"  {'':<10}{'validation':>12}{'selection':>12}{'test':>12}",
        _score_row("baseline", baseline),
        _score_row("optimised", best),
    ]
    if best.selection is not None:
        lines.append(
            f"  Optimism (validation - selection) of the optimised prompt: {best.optimism:+.3f}"
        )
    if best.test is not None and baseline.test is not None:
        gain = (best.test.mean - baseline.test.mean) * 100
        lines.append(f"  Gain on test: {gain:+.1f} points")
    lines.append(f"  Why: {result.summary}")
    stream.write("\n".join(lines) + "\n")
    stream.flush()


def score_breakdown(score: Score, title: str) -> list[str]:
    """Lines for a score's per-label metrics (macro-F1, the worst label) and per-tag slices
    (the worst slice); none when the score has neither."""
    lines: list[str] = []
    if score.label_metrics:
        lines.append(f"  {title}: per label (precision / recall / F1, support)")
        for label, m in score.label_metrics.items():
            lines.append(
                f"    {label:<16} {m.precision:.3f} / {m.recall:.3f} / {m.f1:.3f}  ({m.support})"
            )
        supported = [(m.recall, label) for label, m in score.label_metrics.items() if m.support]
        worst = min(supported, default=None)
        text = f"    macro-F1 {score.macro_f1:.3f}"
        lines.append(text + (f", worst label {worst[1]} (recall {worst[0]:.3f})" if worst else ""))
    if score.slices:
        lines.append(f"  {title}: per slice (mean [95% CI], examples)")
        for s in score.slices:
            lines.append(
                f"    {s.tag}={s.value:<16} {s.mean:.3f} [{s.ci_low:.3f}, {s.ci_high:.3f}]"
                f"  ({s.examples})"
            )
    if score.worst_slice is not None:
        w = score.worst_slice
        lines.append(f"    worst slice {w.tag}={w.value} ({w.mean:.3f} on {w.examples})")
    return lines


# ---- jobs -------------------------------------------------------------------------------


def cmd_jobs(args: argparse.Namespace, connect: Connect) -> int:
    with connect(args) as client:
        if args.jobs_command == "list":
            state = JobState(args.state) if args.state else None
            for job in client.list_jobs(state=state, page_size=args.limit).jobs:
                best = job.progress.best_score
                print(f"{job.id}  {job.state.value:<10} {job.progress.phase:<11} best {best:.3f}")
        elif args.jobs_command == "get":
            job = client.get_job(args.job_id)
            sys.stdout.write(dump_json(to_document(job)))
            write_summary(job, sys.stderr)
        elif args.jobs_command == "cancel":
            print(f"{args.job_id}: {client.cancel_job(args.job_id).state.value}")
        elif args.jobs_command == "delete":
            client.delete_job(args.job_id)
            print(f"{args.job_id}: deleted")
        else:
            for event in client.watch_job(args.job_id, after_sequence=args.after):
                print(json.dumps(to_document(event)), flush=True)
            job = client.get_job(args.job_id)
            if job.done:
                write_summary(job, sys.stderr)
    return 0


# ---- evaluate and render ----------------------------------------------------------------


class EvaluationLine:
    """``evaluating 12/100`` on stderr: rewritten in place on a terminal, else a line at most
    every few seconds."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._last = 0.0

    def update(self, progress: EvaluationProgress) -> None:
        now = time.monotonic()
        final = progress.done >= progress.total
        if not self._tty and not final and now - self._last < 5:
            return
        self._last = now
        text = f"evaluating {progress.done}/{progress.total}"
        self._stream.write(f"\r{text}" if self._tty else f"{text}\n")
        if self._tty and final:
            self._stream.write("\n")
        self._stream.flush()


def cmd_evaluate(args: argparse.Namespace, connect: Connect) -> int:
    """Scores a prompt on a data file; stdout gets the evaluation as JSON."""
    request = load_task_file(Path(args.task_file), args.allow_outside_data)
    prompt = read_prompt(Path(args.prompt))
    examples = load_examples(Path(args.data), request.task.input_fields)
    model = request.model
    if args.model:
        model = decode(ModelSpec, _json_argument(args.model, "--model"), "--model", "model")
    line = EvaluationLine(sys.stderr)
    with connect(args) as client:
        evaluation = client.evaluate_prompt(
            prompt, request.task, examples, model, on_progress=None if args.quiet else line.update
        )
    score = evaluation.score
    say(
        f"score {score.mean:.3f} [{score.ci_low:.3f}, {score.ci_high:.3f}] on {score.examples} "
        f"examples ({score.failed} failed), LLM calls {evaluation.usage.llm_calls}, cache hits "
        f"{evaluation.usage.cache_hits}"
    )
    sys.stdout.write(dump_json(to_document(evaluation)))
    return 0


def _json_argument(text: str, option: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as error:
        raise TaskFileError(f"{option}: not JSON: {error}") from error


def cmd_render(args: argparse.Namespace, connect: Connect) -> int:
    """Prints the chat messages for one input as JSON. Rendered locally (the contract's
    renderer, no server) unless the prompt retrieves kNN demonstrations, which needs the
    server's embedder, or --server is given."""
    from prompttune.contract import render

    prompt = read_prompt(Path(args.prompt))
    inputs = _json_argument(args.inputs, "inputs") if args.inputs.startswith("{") else args.inputs
    if not isinstance(inputs, str) and not (
        isinstance(inputs, dict) and all(isinstance(v, str) for v in inputs.values())
    ):
        raise TaskFileError("inputs: expected text or a JSON object of text input fields")
    if not args.server and not (prompt.knn_k > 0 and prompt.demo_pool):
        messages = render(prompt, inputs)
    else:
        with connect(args) as client:
            messages = client.render_prompt(prompt, inputs)
    sys.stdout.write(dump_json([to_document(message) for message in messages]))
    return 0


# ---- batch ------------------------------------------------------------------------------


def cmd_batch(args: argparse.Namespace, connect: Connect) -> int:
    from prompttune.server._batchfile import BatchState, load_batch, result_record

    batch_path = Path(args.batch_file)
    entries = load_batch(batch_path, args.allow_outside_data)
    results = Path(args.out or batch_path.with_suffix(".results.jsonl"))
    state = BatchState(results)
    pending = [entry for entry in entries if entry.line not in state.done]
    say(
        f"batch {batch_path}: {len(entries)} jobs, {len(entries) - len(pending)} already done, "
        f"{len(pending)} to run (at most {args.max_in_flight} at a time)"
    )
    display = BatchProgress(len(entries), len(entries) - len(pending), quiet=args.quiet)

    def on_done(result: BatchItemResult) -> None:
        entry = pending[result.index]
        record = result_record(entry, result)
        state.record(entry.line, record)
        display.finished(entry.line, record)

    with connect(args) as client:
        client.submit_batch(
            [entry.request for entry in pending],
            max_in_flight=args.max_in_flight,
            on_event=lambda index, event: display.event(pending[index].line, event),
            on_done=on_done,
        )
    failed = [r for r in state.done.values() if r["state"] != "succeeded"]
    say(
        f"results written to {results} ({len(state.done)}/{len(entries)} finished, "
        f"{len(failed)} not succeeded)"
    )
    return 0 if len(state.done) == len(entries) and not failed else 1


class BatchProgress:
    """Per-job and overall progress lines on stderr. Thread-safe."""

    def __init__(self, total: int, done: int, quiet: bool) -> None:
        self._total, self._done, self._quiet = total, done, quiet
        self._trials: dict[int, int] = {}
        self._lock = threading.Lock()
        self._last = 0.0

    def event(self, line: int, event: JobEvent) -> None:
        with self._lock:
            if event.trial_finished is not None:
                self._trials[line] = self._trials.get(line, 0) + 1
            now = time.monotonic()
            if self._quiet or now - self._last < 2:
                return
            self._last = now
            running = ", ".join(f"line {k}: {v} trials" for k, v in sorted(self._trials.items()))
            say(f"[{self._done}/{self._total} done] {running}")

    def finished(self, line: int, record: dict[str, Any]) -> None:
        with self._lock:
            self._done += 1
            self._trials.pop(line, None)
            best = record.get("scores", {}).get("best", {}).get("validation")
            score = "" if best is None else f" best {best:.3f}"
            error = f" ({record['error']})" if record["error"] else ""
            say(
                f"[{self._done}/{self._total} done] line {line} {record['job_id'] or '-'}: "
                f"{record['state']}{score}{error}"
            )


# ---- export and report ------------------------------------------------------------------


def cmd_export(args: argparse.Namespace, connect: Connect) -> int:
    if args.format == FINETUNE_FORMAT:
        return cmd_export_finetune(args, connect)
    with connect(args) as client:
        job = client.get_job(args.job_id)
    write_or_print(export(job, args.format), args.out)
    return 0


def cmd_report(args: argparse.Namespace, connect: Connect) -> int:
    from prompttune.server._report import report

    with connect(args) as client:
        job = client.get_job(args.job_id)
        events = list(client.watch_job(args.job_id)) if job.done else []
    out = args.out or f"prompttune-report-{job.id}.{args.format}"
    write_or_print(report(job, events, args.format), out)
    return 0


def write_or_print(text: str, out: str | None) -> None:
    if out in (None, "-"):
        sys.stdout.write(text)
        return
    Path(str(out)).write_text(text, encoding="utf-8")
    say(f"written to {out}")


# ---- parsers ----------------------------------------------------------------------------


Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
ClientOptions = Callable[[argparse.ArgumentParser], None]


def _allow_outside(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-outside-data",
        action="store_true",
        help="let data paths leave the task (or batch) file's folder",
    )


def add_optimize(commands: Commands, client_options: ClientOptions) -> None:
    optimize_cmd = commands.add_parser(
        "optimize", help="optimise a prompt from a task file (the best prompt on stdout)"
    )
    optimize_cmd.add_argument(
        "task_file", nargs="?", help="task file (YAML or JSON); optional with --template"
    )
    optimize_cmd.add_argument(
        "--model",
        action="append",
        help='target model: "local", an endpoint name, "endpoint/model" or a JSON spec; '
        "repeat it to compare up to 4 models in one job",
    )
    optimize_cmd.add_argument(
        "--models", action="append", help="target models, comma-separated (like --model)"
    )
    optimize_cmd.add_argument(
        "--template", help="re-run job JOB: its task, data and search unless a task file is given"
    )
    optimize_cmd.add_argument("--out", help="result file (default prompttune-result-JOB.json)")
    optimize_cmd.add_argument("--request-id", help="idempotency key")
    optimize_cmd.add_argument("--quiet", action="store_true", help="no progress line")
    optimize_cmd.add_argument("--verbose", action="store_true", help="server logs on stderr")
    _allow_outside(optimize_cmd)
    client_options(optimize_cmd)
    optimize_cmd.set_defaults(handler=cmd_optimize)


def add_jobs(commands: Commands, client_options: ClientOptions) -> None:
    jobs_cmd = commands.add_parser("jobs", help="list, inspect, cancel, delete or watch jobs")
    jobs_sub = jobs_cmd.add_subparsers(dest="jobs_command", required=True)
    list_cmd = jobs_sub.add_parser("list")
    list_cmd.add_argument(
        "--state", choices=[s.value for s in JobState if s.value != "unspecified"]
    )
    list_cmd.add_argument("--limit", type=int, default=50)
    for name in ("get", "cancel", "delete", "watch"):
        sub = jobs_sub.add_parser(name)
        sub.add_argument("job_id")
        if name == "watch":
            sub.add_argument("--after", type=int, default=0, help="resume after this sequence")
    for sub in jobs_sub.choices.values():
        client_options(sub)
    jobs_cmd.set_defaults(handler=cmd_jobs)


def add_prompt_commands(commands: Commands, client_options: ClientOptions) -> None:
    prompt_help = "a prompt file, an export (json, yaml, openai) or a result file"
    evaluate_cmd = commands.add_parser(
        "evaluate", help="score a prompt on a data file (the evaluation as JSON on stdout)"
    )
    evaluate_cmd.add_argument("task_file")
    evaluate_cmd.add_argument("--prompt", required=True, help=prompt_help)
    evaluate_cmd.add_argument("--data", required=True, help="JSONL or CSV examples")
    evaluate_cmd.add_argument("--model", help="model spec as JSON (default: the task file's)")
    evaluate_cmd.add_argument("--quiet", action="store_true", help="no progress line")
    _allow_outside(evaluate_cmd)
    client_options(evaluate_cmd)
    evaluate_cmd.set_defaults(handler=cmd_evaluate)

    render_cmd = commands.add_parser("render", help="print the chat messages for one input")
    render_cmd.add_argument("--prompt", required=True, help=prompt_help)
    render_cmd.add_argument("inputs", help="input text, or a JSON object of input fields")
    client_options(render_cmd)
    render_cmd.set_defaults(handler=cmd_render)


def add_batch(commands: Commands, client_options: ClientOptions) -> None:
    batch_cmd = commands.add_parser("batch", help="run many optimisation jobs from JSONL")
    batch_sub = batch_cmd.add_subparsers(dest="batch_command", required=True)
    submit_cmd = batch_sub.add_parser("submit", help="submit (or resume) a batch")
    submit_cmd.add_argument("batch_file", help="JSONL: one task-file reference or task per line")
    submit_cmd.add_argument("--out", help="results JSONL (default BATCH.results.jsonl)")
    submit_cmd.add_argument("--max-in-flight", type=int, default=4, help="jobs followed at once")
    submit_cmd.add_argument("--quiet", action="store_true", help="only per-job result lines")
    _allow_outside(submit_cmd)
    client_options(submit_cmd)
    submit_cmd.set_defaults(handler=cmd_batch)


def add_job_outputs(commands: Commands, client_options: ClientOptions) -> None:
    export_cmd = commands.add_parser("export", help="write a job's best prompt ready to use")
    export_cmd.add_argument("job_id")
    export_cmd.add_argument(
        "--format", choices=(*EXPORT_FORMATS, FINETUNE_FORMAT), default="openai",
        help=f"{FINETUNE_FORMAT}: chat fine-tuning JSONL of the train and validation splits",
    )  # fmt: skip
    export_cmd.add_argument(
        "--out", help=f"output file (default: stdout); a folder for {FINETUNE_FORMAT} (default "
        "prompttune-finetune-JOB)",
    )  # fmt: skip
    client_options(export_cmd)
    export_cmd.set_defaults(handler=cmd_export)

    report_cmd = commands.add_parser("report", help="write an HTML or Markdown job report")
    report_cmd.add_argument("job_id")
    report_cmd.add_argument("--format", choices=["html", "md"], default="html")
    report_cmd.add_argument("--out", help="output file (default prompttune-report-JOB.FORMAT)")
    client_options(report_cmd)
    report_cmd.set_defaults(handler=cmd_report)


CLIENT_COMMANDS = (add_optimize, add_jobs, add_prompt_commands, add_batch, add_job_outputs)
