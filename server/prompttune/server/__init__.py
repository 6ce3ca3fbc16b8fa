"""prompttune.server: the gRPC service, its job store and workers, and the CLI."""

from prompttune.server._app import Adapters, PromptTuneServer, ServerConfig, serve
from prompttune.server._embedded import EmbeddedServer
from prompttune.server._limits import Limits
from prompttune.server._local_model import LocalModelConfig, LocalModelServer, find_smollm2_gguf
from prompttune.server._store import JobStore, SqlJobStore
from prompttune.server._worker import WorkerConfig

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
    "find_smollm2_gguf",
    "serve",
]
