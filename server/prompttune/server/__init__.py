"""prompttune.server: the gRPC service, its job store and workers, and the CLI.

The public names load on first use (PEP 562), so `prompttune.server.cli` and its client-side
commands import without the server extra (SQLAlchemy, optuna, openai, ...).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prompttune.server._app import Adapters, PromptTuneServer, ServerConfig, serve
    from prompttune.server._embedded import EmbeddedServer
    from prompttune.server._limits import Limits
    from prompttune.server._local_model import (
        LocalModelConfig,
        LocalModelServer,
        find_gemma3_gguf,
        find_smollm2_gguf,
    )
    from prompttune.server._store import JobStore, SqlJobStore
    from prompttune.server._worker import WorkerConfig

_MODULE_OF = {
    "Adapters": "_app",
    "PromptTuneServer": "_app",
    "ServerConfig": "_app",
    "serve": "_app",
    "EmbeddedServer": "_embedded",
    "Limits": "_limits",
    "LocalModelConfig": "_local_model",
    "LocalModelServer": "_local_model",
    "find_gemma3_gguf": "_local_model",
    "find_smollm2_gguf": "_local_model",
    "JobStore": "_store",
    "SqlJobStore": "_store",
    "WorkerConfig": "_worker",
}

__all__ = [
    "Adapters",
    "EmbeddedServer",
    "JobStore",
    "Limits",
    "LocalModelConfig",
    "LocalModelServer",
    "PromptTuneServer",
    "ServerConfig",
    "SqlJobStore",
    "WorkerConfig",
    "find_gemma3_gguf",
    "find_smollm2_gguf",
    "serve",
]


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
