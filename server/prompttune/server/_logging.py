"""structlog set-up: JSON lines on stderr, context (request_id, job_id) from contextvars."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog


def configure_logging(level: str = "INFO", json: bool = True, stream: TextIO | None = None) -> None:
    """Idempotent. Library loggers (optuna, httpx, sentence-transformers) go through the same
    output at WARNING, so one stream (default stderr) holds everything."""
    output = stream or sys.stderr
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=output),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(
        level=logging.WARNING,
        stream=output,
        format="%(name)s %(message)s",
        force=stream is not None,
    )
    for noisy in ("optuna", "httpx", "sentence_transformers", "openai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
