"""The `prompttune` command line: serve, worker, optimize, jobs, evaluate, render, demo."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import enum
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from prompttune.client import (
    Client,
    Example,
    Job,
    JobState,
    Prompt,
    PromptTuneError,
)
from prompttune.server._app import ServerConfig, serve
from prompttune.server._embedded import EmbeddedServer
from prompttune.server._logging import configure_logging
from prompttune.server._progress import ProgressLine
from prompttune.server._taskfile import (
    OptimizationRequest,
    TaskFileError,
    load_examples,
    load_task_file,
    model_from_dict,
)

DEFAULT_DB_ENV = "PROMPTTUNE_DB"
# The demo data ships in the repository's examples/; PROMPTTUNE_DEMO_TASK points elsewhere.
DEMO_TASK = Path(
    os.environ.get(
        "PROMPTTUNE_DEMO_TASK",
        Path(__file__).resolve().parents[3] / "examples" / "sst2" / "task.yaml",
    )
)


def default_db_url() -> str:
    """$PROMPTTUNE_DB, else a SQLite file under ./.prompttune (kept between runs: the cache)."""
    if os.environ.get(DEFAULT_DB_ENV):
        return os.environ[DEFAULT_DB_ENV]
    directory = Path.cwd() / ".prompttune"
    directory.mkdir(exist_ok=True)
    return f"sqlite:///{directory / 'prompttune.db'}"


def to_jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return value


@contextlib.contextmanager
def connect(args: argparse.Namespace) -> Iterator[Client]:
    """A client for --server, or for an embedded in-process server on the local database."""
    if args.server:
        with Client(args.server) as client:
            yield client
        return
    config = ServerConfig(db_url=args.db or default_db_url(), workers=1)
    with EmbeddedServer(config) as embedded, Client(embedded.target) as client:
        yield client


# ---- commands ---------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    config = ServerConfig(
        host=args.host, port=args.port, db_url=args.db or default_db_url(), workers=args.workers
    )
    asyncio.run(serve(config))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    config = ServerConfig(db_url=args.db or default_db_url(), workers=args.slots)
    asyncio.run(_run_workers_only(config))
    return 0


async def _run_workers_only(config: ServerConfig) -> None:
    import signal

    from prompttune.server._app import PromptTuneServer

    app = PromptTuneServer(config)
    app.workers.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await asyncio.to_thread(app.workers.stop)
    await asyncio.to_thread(app.local_model.close)


def cmd_optimize(args: argparse.Namespace) -> int:
    configure_logging("WARNING" if not args.verbose else "INFO")
    request = load_task_file(Path(args.task_file))
    with connect(args) as client:
        job = run_optimization(client, request, args.request_id, quiet=args.quiet)
    print_result(job)
    out = Path(args.out or f"prompttune-result-{job.id}.json")
    out.write_text(json.dumps(to_jsonable(job), indent=2) + "\n", encoding="utf-8")
    print(f"result written to {out}")
    return 0 if job.state is JobState.SUCCEEDED else 1


def run_optimization(
    client: Client, request: OptimizationRequest, request_id: str | None, quiet: bool
) -> Job:
    job = client.create_job(
        request.task, request.dataset, request.model, request.search, request_id=request_id
    )
    line = ProgressLine(job, sys.stderr, enabled=not quiet)
    for event in client.watch_job(job.id):
        line.update(event)
    line.close()
    return client.get_job(job.id)


def print_result(job: Job) -> None:
    print(f"job {job.id}: {job.state.value}")
    if job.error:
        print(f"error: {job.error}")
    result = job.result
    if result is None:
        return
    for name, scores in (("baseline", result.baseline), ("best", result.best)):
        validation = scores.validation
        line = f"  {name:<8} validation {validation.mean:.3f} [{validation.ci_low:.3f}, "
        line += f"{validation.ci_high:.3f}]"
        if scores.test is not None:
            test = scores.test
            line += f"  test {test.mean:.3f} [{test.ci_low:.3f}, {test.ci_high:.3f}]"
        print(line)
    print(f"  {result.summary}")
    usage = result.usage
    print(
        f"  trials {result.trials_completed} (pruned {result.trials_pruned}), "
        f"LLM calls {usage.llm_calls}, cache hits {usage.cache_hits}, "
        f"tokens {usage.prompt_tokens + usage.completion_tokens}, "
        f"wall {result.wall_seconds:.1f}s, stopped by {result.stop_reason}"
    )
    print("best prompt:")
    print(json.dumps(to_jsonable(result.best.prompt), indent=2))


def cmd_jobs(args: argparse.Namespace) -> int:
    with connect(args) as client:
        if args.jobs_command == "list":
            state = JobState(args.state) if args.state else None
            for job in client.list_jobs(state=state, page_size=args.limit).jobs:
                best = job.progress.best_score
                print(f"{job.id}  {job.state.value:<10} {job.progress.phase:<11} best {best:.3f}")
        elif args.jobs_command == "get":
            print(json.dumps(to_jsonable(client.get_job(args.job_id)), indent=2))
        elif args.jobs_command == "cancel":
            print(f"{args.job_id}: {client.cancel_job(args.job_id).state.value}")
        else:
            for event in client.watch_job(args.job_id, after_sequence=args.after):
                print(json.dumps(to_jsonable(event)))
    return 0


def _prompt_from_file(path: Path) -> Prompt:
    document = json.loads(path.read_text(encoding="utf-8"))
    if "result" in document:  # a result file written by `prompttune optimize`
        document = document["result"]["best"]["prompt"]
    return _prompt_from_dict(document)


def _prompt_from_dict(doc: dict[str, Any]) -> Prompt:
    from prompttune.client import DemoLayout, InstructionPlacement, PromptFormat

    fmt = doc.get("format") or {}
    return Prompt(
        instruction=doc["instruction"],
        demos=tuple(
            Example(inputs=d["inputs"], output=d["output"], id=d.get("id", ""))
            for d in doc.get("demos", ())
        ),
        format=PromptFormat(
            instruction_placement=InstructionPlacement(fmt.get("instruction_placement", "system")),
            demo_layout=DemoLayout(fmt.get("demo_layout", "chat_turns")),
            answer_prefix=fmt.get("answer_prefix", ""),
        ),
        input_fields=tuple(doc.get("input_fields", ())),
        output_name=doc.get("output_name", ""),
        labels=tuple(doc.get("labels", ())),
    )


def cmd_evaluate(args: argparse.Namespace) -> int:
    configure_logging("WARNING")
    request = load_task_file(Path(args.task_file))
    prompt = _prompt_from_file(Path(args.prompt))
    fields = request.task.input_fields or ("input",)
    examples = load_examples(Path(args.data), fields)
    model = model_from_dict(json.loads(args.model)) if args.model else request.model
    with connect(args) as client:
        evaluation = client.evaluate_prompt(prompt, request.task, examples, model)
    score = evaluation.score
    print(
        f"score {score.mean:.3f} [{score.ci_low:.3f}, {score.ci_high:.3f}] "
        f"on {score.examples} examples ({score.failed} failed), LLM calls "
        f"{evaluation.usage.llm_calls}, cache hits {evaluation.usage.cache_hits}"
    )
    for label, accuracy in sorted(score.per_label.items()):
        print(f"  {label}: {accuracy:.3f}")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    prompt = _prompt_from_file(Path(args.prompt))
    inputs = json.loads(args.inputs) if args.inputs.startswith("{") else {"input": args.inputs}
    with connect(args) as client:
        messages = client.render_prompt(prompt, inputs)
    print(json.dumps([to_jsonable(m) for m in messages], indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Optimises the SST-2 slice with the local model and prints baseline vs optimised."""
    configure_logging("WARNING")
    request = load_task_file(DEMO_TASK)
    started = time.monotonic()
    print("prompttune demo: SST-2 sentiment, local SmolLM2-135M-Instruct, offline")
    print(f"  train {len(request.dataset.train)}, validation {len(request.dataset.validation)}, "
          f"test {len(request.dataset.test)} examples")  # fmt: skip
    with connect(args) as client:
        job = run_optimization(client, request, None, quiet=args.quiet)
    print_result(job)
    if job.result is None or job.result.best.test is None or job.result.baseline.test is None:
        return 1
    baseline, best = job.result.baseline.test.mean, job.result.best.test.mean
    print()
    print(f"SST-2 test accuracy: baseline {baseline:.1%} -> optimised {best:.1%} "
          f"({(best - baseline) * 100:+.1f} points)")  # fmt: skip
    print(f"LLM calls {job.result.usage.llm_calls}, wall time {time.monotonic() - started:.0f}s")
    return 0


# ---- parser -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prompttune", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    def client_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--server", help="HOST:PORT of a prompttune server (default: embedded)")
        sub.add_argument("--db", help="database URL of the embedded server")

    serve_cmd = commands.add_parser("serve", help="run the gRPC server with in-process workers")
    serve_cmd.add_argument("--host", default="127.0.0.1")
    serve_cmd.add_argument("--port", type=int, default=50051)
    serve_cmd.add_argument("--db", help=f"database URL (default ${DEFAULT_DB_ENV} or SQLite)")
    serve_cmd.add_argument("--workers", type=int, default=1, help="job workers; 0 = API only")
    serve_cmd.add_argument("--log-level", default="INFO")
    serve_cmd.set_defaults(handler=cmd_serve)

    worker_cmd = commands.add_parser("worker", help="run job workers without the API")
    worker_cmd.add_argument("--db", help="database URL shared with the API servers")
    worker_cmd.add_argument("--slots", type=int, default=1)
    worker_cmd.add_argument("--log-level", default="INFO")
    worker_cmd.set_defaults(handler=cmd_worker)

    optimize_cmd = commands.add_parser("optimize", help="optimise a prompt from a task file")
    optimize_cmd.add_argument("task_file", help="task file (YAML or JSON)")
    optimize_cmd.add_argument("--out", help="result file (default prompttune-result-JOB.json)")
    optimize_cmd.add_argument("--request-id", help="idempotency key")
    optimize_cmd.add_argument("--quiet", action="store_true", help="no progress line")
    optimize_cmd.add_argument("--verbose", action="store_true", help="server logs on stderr")
    client_options(optimize_cmd)
    optimize_cmd.set_defaults(handler=cmd_optimize)

    jobs_cmd = commands.add_parser("jobs", help="list, inspect, cancel or watch jobs")
    jobs_sub = jobs_cmd.add_subparsers(dest="jobs_command", required=True)
    list_cmd = jobs_sub.add_parser("list")
    list_cmd.add_argument(
        "--state", choices=[s.value for s in JobState if s.value != "unspecified"]
    )
    list_cmd.add_argument("--limit", type=int, default=50)
    for name in ("get", "cancel", "watch"):
        sub = jobs_sub.add_parser(name)
        sub.add_argument("job_id")
        if name == "watch":
            sub.add_argument("--after", type=int, default=0, help="resume after this sequence")
    for sub in jobs_sub.choices.values():
        client_options(sub)
    jobs_cmd.set_defaults(handler=cmd_jobs)

    evaluate_cmd = commands.add_parser("evaluate", help="score a prompt on a data file")
    evaluate_cmd.add_argument("task_file")
    evaluate_cmd.add_argument("--prompt", required=True, help="prompt JSON or a result file")
    evaluate_cmd.add_argument("--data", required=True, help="JSONL or CSV examples")
    evaluate_cmd.add_argument("--model", help="model spec as JSON (default: the task file's)")
    client_options(evaluate_cmd)
    evaluate_cmd.set_defaults(handler=cmd_evaluate)

    render_cmd = commands.add_parser("render", help="print the chat messages for one input")
    render_cmd.add_argument("--prompt", required=True, help="prompt JSON or a result file")
    render_cmd.add_argument("inputs", help="input text, or a JSON object of input fields")
    client_options(render_cmd)
    render_cmd.set_defaults(handler=cmd_render)

    demo_cmd = commands.add_parser("demo", help="optimise an SST-2 slice with the local model")
    demo_cmd.add_argument("--quiet", action="store_true")
    client_options(demo_cmd)
    demo_cmd.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except TaskFileError as error:
        print(f"prompttune: {error}", file=sys.stderr)
        return 2
    except PromptTuneError as error:
        print(f"prompttune: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
