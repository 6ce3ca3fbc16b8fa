"""The benchmark's task models: the service's own embedded models (SmolLM2-135M-Instruct and
Gemma 3 270M), each on the managed llama.cpp server the service runs (`LocalModelServer`:
its one-token calls return the top log probabilities label-probability scoring reads).

There is no cache across runs: a response served from a cache would make the task-model
seconds per scored example meaningless. Resuming works per (model, task, method) result file.
"""

from __future__ import annotations

from dataclasses import dataclass

from prompttune.search import ModelEndpoint, OpenAIChatModel
from prompttune.server import LocalModelConfig, LocalModelServer
from prompttune.server._local_model import GEMMA_MODEL_NAME, LOCAL_MODEL_NAME

# Benchmark name -> the embedded model's name on its server.
MODELS = {"smollm2": LOCAL_MODEL_NAME, "gemma": GEMMA_MODEL_NAME}


@dataclass(frozen=True)
class ServerConfig:
    n_ctx: int = 2048
    n_threads: int = 2
    startup_timeout_seconds: float = 180.0


class TaskModels:
    """The embedded models' servers of one benchmark invocation, started on first use."""

    def __init__(self, config: ServerConfig | None = None) -> None:
        config = config or ServerConfig()
        self._servers = LocalModelServer(
            LocalModelConfig(config.n_ctx, config.n_threads, config.startup_timeout_seconds)
        )

    def base_url(self, model: str) -> str:
        """The OpenAI base URL of benchmark model `model`, starting its server if needed."""
        return self._servers.base_url(MODELS[model])

    def chat_model(self, model: str) -> OpenAIChatModel:
        """A fresh client of benchmark model `model` ("smollm2" or "gemma"): each method run
        has its own event loop (`asyncio.run`)."""
        alias = MODELS[model]
        endpoint = ModelEndpoint(
            base_url=self._servers.base_url(alias),
            model=alias,
            timeout_seconds=300.0,
            max_retries=3,
            cache_identity=f"bench|{self._servers.cache_identity(alias)}",
        )
        return OpenAIChatModel(endpoint)

    def close(self) -> None:
        self._servers.close()
