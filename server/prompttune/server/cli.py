"""The `prompttune` command line: serve, worker, optimize, jobs, evaluate, render, compare,
check, batch, export, report, demo.

The client-side commands (`prompttune.server._commands`) need only the SDK, the contract and
PyYAML; the server and its engine are imported inside `serve`, `worker`, `demo` and the
embedded mode (no `--server`), so an install without the server extra runs them. Every error
is one line on stderr naming the field or key, with a non-zero exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from prompttune.client import Client, InvalidArgumentError, MissingEmbedder, PromptTuneError
from prompttune.contract import ContractError
from prompttune.server._commands import (
    Connect,
    Detached,
    add_batch,
    add_job_outputs,
    add_jobs,
    add_optimize,
    add_prompt_commands,
    run_optimization,
    write_demo_report,
    write_summary,
)
from prompttune.server._comparing import add_comparison_commands
from prompttune.server._limits import Limits
from prompttune.server._taskfile import TaskFileError, load_task_file

if TYPE_CHECKING:
    from prompttune.server._app import ServerConfig
    from prompttune.server._endpoints import EndpointConfig, EndpointDefaults

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
    from prompttune.server._embedded import EmbeddedServer

    with EmbeddedServer(embedded_config(args)) as embedded, Client(embedded.target) as client:
        yield client


def embedded_config(args: argparse.Namespace) -> ServerConfig:
    """The in-process server of the no-`--server` mode: one worker on the local database, its
    logs (JSON, WARNING and up unless --verbose) on stderr."""
    from prompttune.server._app import ServerConfig
    from prompttune.server._endpoints import ANY_KEY_ENV
    from prompttune.server._logging import configure_logging

    configure_logging("INFO" if getattr(args, "verbose", False) else "WARNING")
    # The in-process server is the caller's own: the task file's base_url and api_key_env
    # are its operator's choice.
    endpoints = dataclasses.replace(
        endpoint_config(None), allow_caller_endpoints=True, caller_api_key_envs=(ANY_KEY_ENV,)
    )
    return ServerConfig(db_url=args.db or default_db_url(), workers=1, endpoint_config=endpoints)


# ---- commands ---------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace, connect: Connect) -> int:
    from prompttune.server._app import ServerConfig, TlsConfig, serve
    from prompttune.server._auth import AuthConfigError, load_registry
    from prompttune.server._logging import configure_logging

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
        endpoint_config=endpoint_config(args),
        limits=Limits(max_job_attempts=args.max_attempts),
    )
    asyncio.run(serve(config))
    return 0


def endpoint_defaults(args: argparse.Namespace) -> EndpointDefaults:
    """Server-wide flow control for every LLM endpoint; a model spec may override the rates.
    Options left out take the library defaults."""
    from prompttune.server._endpoints import EndpointDefaults

    given = {
        "max_concurrency": args.endpoint_concurrency,
        "requests_per_minute": args.endpoint_rpm,
        "tokens_per_minute": args.endpoint_tpm,
        "max_outage_seconds": args.max_outage_seconds,
    }
    return EndpointDefaults(**{name: value for name, value in given.items() if value is not None})


def endpoint_config(args: argparse.Namespace | None) -> EndpointConfig:
    """The registry of --endpoints (else $PROMPTTUNE_ENDPOINTS), with
    --allow-caller-endpoints applied."""
    from prompttune.server._endpoints import (
        EndpointConfig,
        EndpointConfigError,
        endpoint_config_path,
        load_endpoint_config,
    )

    path = endpoint_config_path(getattr(args, "endpoints", None))
    try:
        config = load_endpoint_config(path) if path is not None else EndpointConfig()
    except EndpointConfigError as error:
        raise TaskFileError(str(error)) from error
    if getattr(args, "allow_caller_endpoints", False):
        config = dataclasses.replace(config, allow_caller_endpoints=True)
    return config


def add_endpoint_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("LLM endpoints (shared by all jobs of the process)")
    group.add_argument(
        "--endpoints",
        help="YAML/JSON endpoint registry (default $PROMPTTUNE_ENDPOINTS; neither: the "
        "built-in 'local' endpoint only); give workers the same file",
    )
    group.add_argument(
        "--allow-caller-endpoints",
        action="store_true",
        help="single-tenant only: let requests name their own base_url (checked against "
        "the registry's caller_networks) and an api_key_env from caller_api_key_envs",
    )
    group.add_argument(
        "--endpoint-concurrency",
        type=int,
        help="calls in flight per endpoint (default 64)",
    )
    group.add_argument(
        "--endpoint-rpm",
        type=float,
        help="requests per minute per endpoint (default 0 = unlimited)",
    )
    group.add_argument(
        "--endpoint-tpm",
        type=float,
        help="tokens per minute per endpoint (default 0 = unlimited)",
    )
    group.add_argument(
        "--max-outage-seconds", type=float,
        help="an endpoint failing every call for longer fails the job (default 300; 0 = never)",
    )  # fmt: skip


def cmd_worker(args: argparse.Namespace, connect: Connect) -> int:
    from prompttune.server._app import ServerConfig
    from prompttune.server._logging import configure_logging
    from prompttune.server._worker import WorkerConfig

    configure_logging(args.log_level, service=True)
    config = ServerConfig(
        db_url=args.db or default_db_url(),
        workers=args.slots,
        worker=WorkerConfig(slots=args.slots, lease_seconds=args.lease_seconds),
        endpoints=endpoint_defaults(args),
        endpoint_config=endpoint_config(args),
        limits=Limits(max_job_attempts=args.max_attempts),
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


def cmd_demo(args: argparse.Namespace, connect: Connect) -> int:
    """Optimises the SST-2 slice with the local model and prints baseline vs optimised."""
    request = load_task_file(DEMO_TASK)
    started = time.monotonic()
    print("prompttune demo: SST-2 sentiment, local SmolLM2-135M-Instruct, offline")
    print(f"  train {len(request.dataset.train)}, validation {len(request.dataset.validation)}, "
          f"test {len(request.dataset.test)} examples")  # fmt: skip
    with connect(args) as client:
        job = run_optimization(client, request, args, quiet=args.quiet)
    write_summary(job, sys.stdout)
    if job.result is None:
        return 1
    write_demo_report(job.result, sys.stdout)
    print(f"LLM calls {job.result.usage.llm_calls}, wall time {time.monotonic() - started:.0f}s")
    return 0 if job.result.best.test is not None and job.result.baseline.test is not None else 1


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
    add_attempts_option(serve_cmd)
    add_endpoint_options(serve_cmd)
    serve_cmd.set_defaults(handler=cmd_serve)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def add_attempts_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--max-attempts",
        type=_positive_int,
        default=Limits().max_job_attempts,
        help="a job whose worker stopped this many times (killed, crashed) is failed, not "
        "claimed again (default %(default)s)",
    )


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
    add_attempts_option(worker_cmd)
    add_endpoint_options(worker_cmd)
    worker_cmd.set_defaults(handler=cmd_worker)


def _add_demo(commands: Commands) -> None:
    demo_cmd = commands.add_parser("demo", help="optimise an SST-2 slice with the local model")
    demo_cmd.add_argument("--quiet", action="store_true")
    client_options(demo_cmd)
    demo_cmd.set_defaults(handler=cmd_demo, request_id=None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prompttune", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    _add_serve(commands)
    _add_worker(commands)
    for add in (
        add_optimize,
        add_jobs,
        add_prompt_commands,
        add_comparison_commands,
        add_batch,
        add_job_outputs,
    ):
        add(commands, client_options)
    _add_demo(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args, connect))
    except KeyboardInterrupt:
        print("prompttune: interrupted", file=sys.stderr)
        return 130
    except Detached as detached:
        print(f"prompttune: {detached}", file=sys.stderr)
        return 130
    except Exception as error:  # every expected failure ends as one line, no traceback
        message, code = error_line(error)
        if message is None:
            raise
        print(f"prompttune: {message}", file=sys.stderr)
        return code


def error_line(error: Exception) -> tuple[str | None, int]:
    """The one-line message and exit code of an expected failure; None for a bug."""
    if isinstance(error, InvalidArgumentError):
        return (f"{error.field}: {error.details}" if error.field else error.details), 2
    if isinstance(error, PromptTuneError):
        return str(error), 1
    if isinstance(error, TaskFileError | ContractError | MissingEmbedder):
        return str(error), 2
    if isinstance(error, ImportError):  # embedded mode, serve, worker or demo
        return f"{error}: without --server this needs pip install 'prompttune[server]'", 2
    if isinstance(error, KeyError):  # render: a missing input field
        return str(error.args[0]) if error.args else str(error), 2
    if isinstance(error, OSError):
        return f"{error.filename or ''}: {error.strerror or error}".lstrip(": "), 2
    return None, 1


if __name__ == "__main__":
    sys.exit(main())
