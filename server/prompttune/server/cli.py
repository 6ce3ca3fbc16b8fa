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
from typing import Any, TypeAlias

from prompttune.client import (
    BatchItemResult,
    Client,
    Example,
    Job,
    JobEvent,
    JobState,
    Prompt,
    PromptTuneError,
)
from prompttune.server._app import ServerConfig, TlsConfig, serve
from prompttune.server._auth import AuthConfigError, load_registry
from prompttune.server._embedded import EmbeddedServer
from prompttune.server._logging import configure_logging
from prompttune.server._models import EndpointDefaults
from prompttune.server._progress import ProgressLine
from prompttune.server._taskfile import (
    OptimizationRequest,
    TaskFileError,
    load_examples,
    load_task_file,
    model_from_dict,
)
from prompttune.server._worker import WorkerConfig

DEFAULT_DB_ENV = "PROMPTTUNE_DB"
TOKEN_ENV = "PROMPTTUNE_TOKEN"
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
        token = getattr(args, "token", None) or os.environ.get(TOKEN_ENV) or None
        credentials = None
        if getattr(args, "tls_ca", None):
            import grpc

            credentials = grpc.ssl_channel_credentials(Path(args.tls_ca).read_bytes())
        with Client(args.server, token=token, credentials=credentials) as client:
            yield client
        return
    config = ServerConfig(db_url=args.db or default_db_url(), workers=1)
    with EmbeddedServer(config) as embedded, Client(embedded.target) as client:
        yield client


# ---- commands ---------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, service=True)
    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise TaskFileError("--tls-cert and --tls-key go together")
        client_ca = Path(args.tls_client_ca) if args.tls_client_ca else None
        tls = TlsConfig(Path(args.tls_cert), Path(args.tls_key), client_ca)
    try:
        auth = load_registry(Path(args.auth_tokens) if args.auth_tokens else None)
    except AuthConfigError as error:
        raise TaskFileError(str(error)) from error
    config = ServerConfig(
        host=args.host,
        port=args.port,
        db_url=args.db or default_db_url(),
        workers=args.workers,
        auth=auth,
        tls=tls,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        endpoints=endpoint_defaults(args),
    )
    asyncio.run(serve(config))
    return 0


def endpoint_defaults(args: argparse.Namespace) -> EndpointDefaults:
    """Server-wide flow control for every LLM endpoint; a model spec may override the rates."""
    return EndpointDefaults(
        max_concurrency=args.endpoint_concurrency,
        requests_per_minute=args.endpoint_rpm,
        tokens_per_minute=args.endpoint_tpm,
        max_outage_seconds=args.max_outage_seconds,
    )


def add_endpoint_options(parser: argparse.ArgumentParser) -> None:
    defaults = EndpointDefaults()
    group = parser.add_argument_group("LLM endpoints (shared by all jobs of the process)")
    group.add_argument(
        "--endpoint-concurrency",
        type=int,
        default=defaults.max_concurrency,
        help="calls in flight per endpoint",
    )
    group.add_argument(
        "--endpoint-rpm",
        type=float,
        default=defaults.requests_per_minute,
        help="requests per minute per endpoint (0 = unlimited)",
    )
    group.add_argument(
        "--endpoint-tpm",
        type=float,
        default=defaults.tokens_per_minute,
        help="tokens per minute per endpoint (0 = unlimited)",
    )
    group.add_argument(
        "--max-outage-seconds", type=float, default=defaults.max_outage_seconds,
        help="an endpoint failing every call for longer fails the job (0 = never)",
    )  # fmt: skip


def cmd_worker(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, service=True)
    config = ServerConfig(
        db_url=args.db or default_db_url(),
        workers=args.slots,
        worker=WorkerConfig(slots=args.slots, lease_seconds=args.lease_seconds),
        endpoints=endpoint_defaults(args),
    )
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
    print("best prompt (the result file has it in full):")
    shown = to_jsonable(result.best.prompt)
    if shown.get("demo_pool"):
        shown["demo_pool"] = f"<{len(shown['demo_pool'])} examples, {shown['knn_k']} per input>"
    print(json.dumps(shown, indent=2))


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


def cmd_batch(args: argparse.Namespace) -> int:
    from prompttune.server._batchfile import BatchState, load_batch, result_record

    batch_path = Path(args.batch_file)
    entries = load_batch(batch_path)
    results = Path(args.out or batch_path.with_suffix(".results.jsonl"))
    state = BatchState(results)
    pending = [entry for entry in entries if entry.line not in state.done]
    print(
        f"batch {batch_path}: {len(entries)} jobs, {len(entries) - len(pending)} already done, "
        f"{len(pending)} to run (at most {args.max_in_flight} at a time)",
        file=sys.stderr,
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
    print(f"results written to {results} ({len(state.done)}/{len(entries)} finished, "
          f"{len(failed)} not succeeded)", file=sys.stderr)  # fmt: skip
    return 0 if len(state.done) == len(entries) and not failed else 1


class BatchProgress:
    """Per-job and overall progress lines on stderr."""

    def __init__(self, total: int, done: int, quiet: bool) -> None:
        import threading

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
            print(f"[{self._done}/{self._total} done] {running}", file=sys.stderr)

    def finished(self, line: int, record: dict[str, Any]) -> None:
        with self._lock:
            self._done += 1
            self._trials.pop(line, None)
            best = record.get("scores", {}).get("best", {}).get("validation")
            score = "" if best is None else f" best {best:.3f}"
            error = f" ({record['error']})" if record["error"] else ""
            print(
                f"[{self._done}/{self._total} done] line {line} {record['job_id'] or '-'}: "
                f"{record['state']}{score}{error}",
                file=sys.stderr,
            )


def _finished_job(client: Client, job_id: str) -> tuple[Job, list[JobEvent]]:
    job = client.get_job(job_id)
    events = list(client.watch_job(job_id)) if job.done else []
    return job, events


def cmd_export(args: argparse.Namespace) -> int:
    from prompttune.server._report import export

    with connect(args) as client:
        job = client.get_job(args.job_id)
    try:
        text = export(job, args.format)
    except ValueError as error:
        raise TaskFileError(str(error)) from error
    _write_or_print(text, args.out)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from prompttune.server._report import report

    with connect(args) as client:
        job, events = _finished_job(client, args.job_id)
    out = args.out or f"prompttune-report-{job.id}.{args.format}"
    _write_or_print(report(job, events, args.format), out)
    return 0


def _write_or_print(text: str, out: str | None) -> None:
    if out in (None, "-"):
        sys.stdout.write(text)
        return
    Path(str(out)).write_text(text, encoding="utf-8")
    print(f"written to {out}", file=sys.stderr)


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


Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def client_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--server", help="HOST:PORT of a prompttune server (default: embedded)")
    sub.add_argument("--db", help="database URL of the embedded server")
    sub.add_argument("--token", help=f"bearer token for --server (default ${TOKEN_ENV})")
    sub.add_argument("--tls-ca", help="CA certificate (PEM) to connect to --server over TLS")


def _add_serve(commands: Commands) -> None:
    """`serve`: the gRPC server with in-process workers."""
    serve_cmd = commands.add_parser("serve", help="run the gRPC server with in-process workers")
    serve_cmd.add_argument("--host", default="127.0.0.1")
    serve_cmd.add_argument("--port", type=int, default=50051)
    serve_cmd.add_argument("--db", help=f"database URL (default ${DEFAULT_DB_ENV} or SQLite)")
    serve_cmd.add_argument("--workers", type=int, default=1, help="job workers; 0 = API only")
    serve_cmd.add_argument("--log-level", default="INFO")
    serve_cmd.add_argument(
        "--auth-tokens",
        help="YAML/JSON file mapping token (or its sha256) -> tenant; default "
        "$PROMPTTUNE_AUTH_TOKENS ('tok=tenant,...'); neither: single-tenant, no auth",
    )
    serve_cmd.add_argument("--tls-cert", help="server certificate chain (PEM)")
    serve_cmd.add_argument("--tls-key", help="server private key (PEM)")
    serve_cmd.add_argument("--tls-client-ca", help="CA (PEM) for client certs: mutual TLS")
    serve_cmd.add_argument(
        "--metrics-port", type=int, help="serve Prometheus /metrics on this port (0 = any)"
    )
    serve_cmd.add_argument("--metrics-host", default="127.0.0.1")
    add_endpoint_options(serve_cmd)
    serve_cmd.set_defaults(handler=cmd_serve)


def _add_worker(commands: Commands) -> None:
    """`worker`: job workers without the API."""
    worker_cmd = commands.add_parser("worker", help="run job workers without the API")
    worker_cmd.add_argument("--db", help="database URL shared with the API servers")
    worker_cmd.add_argument("--slots", type=int, default=1)
    worker_cmd.add_argument(
        "--lease-seconds",
        type=float,
        default=60.0,
        help="a job whose worker stops renewing its lease is reclaimed after this long",
    )
    worker_cmd.add_argument("--log-level", default="INFO")
    add_endpoint_options(worker_cmd)
    worker_cmd.set_defaults(handler=cmd_worker)


def _add_optimize(commands: Commands) -> None:
    """`optimize`: one optimisation from a task file."""
    optimize_cmd = commands.add_parser("optimize", help="optimise a prompt from a task file")
    optimize_cmd.add_argument("task_file", help="task file (YAML or JSON)")
    optimize_cmd.add_argument("--out", help="result file (default prompttune-result-JOB.json)")
    optimize_cmd.add_argument("--request-id", help="idempotency key")
    optimize_cmd.add_argument("--quiet", action="store_true", help="no progress line")
    optimize_cmd.add_argument("--verbose", action="store_true", help="server logs on stderr")
    client_options(optimize_cmd)
    optimize_cmd.set_defaults(handler=cmd_optimize)


def _add_jobs(commands: Commands) -> None:
    """`jobs list|get|cancel|watch`."""
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


def _add_prompt_commands(commands: Commands) -> None:
    """`evaluate` and `render`: use a prompt without a search."""
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


def _add_batch(commands: Commands) -> None:
    """`batch submit`: many optimisation requests from a JSONL file."""
    batch_cmd = commands.add_parser("batch", help="run many optimisation jobs from a JSONL file")
    batch_sub = batch_cmd.add_subparsers(dest="batch_command", required=True)
    submit_cmd = batch_sub.add_parser("submit", help="submit (or resume) a batch")
    submit_cmd.add_argument("batch_file", help="JSONL: one task-file reference or task per line")
    submit_cmd.add_argument("--out", help="results JSONL (default BATCH.results.jsonl)")
    submit_cmd.add_argument("--max-in-flight", type=int, default=4, help="jobs followed at once")
    submit_cmd.add_argument("--quiet", action="store_true", help="only per-job result lines")
    client_options(submit_cmd)
    submit_cmd.set_defaults(handler=cmd_batch)


def _add_job_outputs(commands: Commands) -> None:
    """`export`, `report` and `demo`."""
    export_cmd = commands.add_parser("export", help="write a job's best prompt ready to use")
    export_cmd.add_argument("job_id")
    export_cmd.add_argument("--format", choices=["openai", "json", "yaml"], default="openai")
    export_cmd.add_argument("--out", help="output file (default: stdout)")
    client_options(export_cmd)
    export_cmd.set_defaults(handler=cmd_export)

    report_cmd = commands.add_parser("report", help="write an HTML or Markdown job report")
    report_cmd.add_argument("job_id")
    report_cmd.add_argument("--format", choices=["html", "md"], default="html")
    report_cmd.add_argument("--out", help="output file (default prompttune-report-JOB.FORMAT)")
    client_options(report_cmd)
    report_cmd.set_defaults(handler=cmd_report)

    demo_cmd = commands.add_parser("demo", help="optimise an SST-2 slice with the local model")
    demo_cmd.add_argument("--quiet", action="store_true")
    client_options(demo_cmd)
    demo_cmd.set_defaults(handler=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prompttune", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (
        _add_serve,
        _add_worker,
        _add_optimize,
        _add_jobs,
        _add_prompt_commands,
        _add_batch,
        _add_job_outputs,
    ):
        add(commands)
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
