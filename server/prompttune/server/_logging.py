"""structlog set-up: JSON lines on stderr, context (request_id, job_id) from contextvars.

In service mode (`prompttune serve` / `worker`) every line on stderr is one JSON object, because
log shippers parse each line: stdlib logging records (optuna, httpx, asyncio,
sentence-transformers), Python warnings and uncaught exceptions go through the same renderer,
progress bars are switched off, and whatever else writes to file descriptor 2 (gRPC's C core,
which reads GRPC_VERBOSITY once, when grpc is imported, before any set-up could run) is
captured and wrapped as `stderr.line` objects.
"""

from __future__ import annotations

import atexit
import datetime
import json as jsonlib
import logging
import os
import sys
import threading
from types import TracebackType
from typing import TextIO

import structlog

# Set before sentence-transformers / transformers / huggingface_hub / grpc's C core read them
# (they are imported lazily, when a job first needs an embedder). `setdefault`: an operator's
# explicit choice wins, e.g. GRPC_VERBOSITY=DEBUG while investigating.
QUIET_ENVIRONMENT = {
    "TQDM_DISABLE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
_NOISY_LOGGERS = ("optuna", "httpx", "httpcore", "sentence_transformers", "openai", "transformers")


def configure_logging(
    level: str = "INFO", json: bool = True, stream: TextIO | None = None, service: bool = False
) -> None:
    """Idempotent. Library loggers go through the same output at WARNING, so one stream
    (default stderr) holds everything. `service` (long-running server processes only: it
    takes over file descriptor 2 and the process's exception hooks) turns progress bars off
    and makes every stderr line JSON."""
    if service:
        for name, value in QUIET_ENVIRONMENT.items():
            os.environ.setdefault(name, value)
        _capture_stderr()
        _route_uncaught_exceptions()
    output = stream or sys.stderr
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=output),
        cache_logger_on_first_use=False,
    )
    _route_stdlib_logging(output, shared, renderer)


def _route_stdlib_logging(
    output: TextIO, shared: list[structlog.types.Processor], renderer: structlog.types.Processor
) -> None:
    handler = logging.StreamHandler(output)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.captureWarnings(True)  # warnings.warn -> logger "py.warnings"
    for noisy in _NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Optuna gives its logger a plain-text stderr handler of its own and stops propagation.
    import optuna

    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()


_crash_log = structlog.get_logger("prompttune.crash")


def _route_uncaught_exceptions() -> None:
    """Tracebacks that would reach stderr as plain text become `process.uncaught_exception`
    (main thread) or `thread.uncaught_exception` lines."""

    def main_hook(
        kind: type[BaseException], error: BaseException, traceback: TracebackType | None
    ) -> None:
        _crash_log.error("process.uncaught_exception", exc_info=(kind, error, traceback))

    def thread_hook(hook: threading.ExceptHookArgs) -> None:
        if hook.exc_value is None or hook.exc_type is SystemExit:
            return
        exc_info = (hook.exc_type, hook.exc_value, hook.exc_traceback)
        thread = hook.thread.name if hook.thread is not None else None
        _crash_log.error("thread.uncaught_exception", thread=thread, exc_info=exc_info)

    sys.excepthook = main_hook
    threading.excepthook = thread_hook


_capture: StderrCapture | None = None


def _capture_stderr() -> None:
    global _capture  # one per process: there is one file descriptor 2
    if _capture is None:
        _capture = StderrCapture()
        atexit.register(_capture.close)


class StderrCapture:
    """Replaces file descriptor 2 with a pipe. A thread copies each line to the real stderr:
    JSON objects as they are, anything else wrapped as `{"event": "stderr.line", ...}`."""

    def __init__(self) -> None:
        sys.stderr.flush()
        self._real = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
        self._lines = os.fdopen(read_end, "rb")
        self._thread = threading.Thread(target=self._pump, name="stderr-capture", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        for raw in self._lines:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if line.strip():
                os.write(self._real, (as_json_line(line) + "\n").encode())

    def close(self) -> None:
        """Puts the real stderr back and drains what is left in the pipe (bounded wait:
        a child process may still hold the pipe open)."""
        sys.stderr.flush()
        os.dup2(self._real, 2)
        self._thread.join(timeout=2)


def as_json_line(line: str) -> str:
    """`line` if it is one JSON object, else a JSON object that carries it."""
    if line.startswith("{"):
        try:
            if isinstance(jsonlib.loads(line), dict):
                return line
        except ValueError:
            pass
    stamp = datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
    record = {"event": "stderr.line", "text": line[:4000], "level": "warning", "timestamp": stamp}
    return jsonlib.dumps(record)
