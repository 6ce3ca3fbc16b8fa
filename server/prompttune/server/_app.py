"""Assembles the service: database, cache, local model, workers, gRPC server with health
checking and reflection, and graceful shutdown."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from wsgiref.simple_server import WSGIServer

import grpc
import structlog
from prometheus_client import start_http_server

from prompttune.search import (
    ChatModel,
    Embedder,
    GatewayRegistry,
    ModelEndpoint,
    OpenAIChatModels,
)
from prompttune.server._auth import AuthInterceptor, TokenRegistry
from prompttune.server._cache import SqlResponseCache
from prompttune.server._db import create_db_engine
from prompttune.server._health import HealthReporter
from prompttune.server._interceptor import ServiceInterceptor
from prompttune.server._jobs import JobService
from prompttune.server._limits import Limits
from prompttune.server._local_model import LocalModelConfig, LocalModelServer
from prompttune.server._models import EndpointDefaults, ModelResolver
from prompttune.server._service import OptimizerServicer
from prompttune.server._store import SqlJobStore
from prompttune.server._telemetry import MeasuredResponseCache, ServiceMetrics
from prompttune.server._worker import ExecutorDeps, JobExecutor, WorkerConfig, WorkerPool
from prompttune.v1 import optimizer_pb2 as pb
from prompttune.v1 import optimizer_pb2_grpc as pb_grpc

log = structlog.get_logger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["OptimizerService"].full_name
ChatModelFactory = Callable[[ModelEndpoint], ChatModel]


@dataclass(frozen=True)
class TlsConfig:
    """PEM file paths. With `client_ca` the server requires client certificates (mutual TLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        client_ca = self.client_ca.read_bytes() if self.client_ca is not None else None
        return grpc.ssl_server_credentials(
            ((self.key.read_bytes(), self.cert.read_bytes()),),
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )


@dataclass(frozen=True)
class ServerConfig:
    """Server settings. `workers=0` runs the API only (workers elsewhere share the database).

    `auth` None is single-tenant mode (no tokens, tenant "default"); `tls` None listens in
    plaintext; `metrics_port` None serves no metrics, 0 picks a free port.
    """

    host: str = "127.0.0.1"
    port: int = 50051
    db_url: str = "sqlite:///prompttune.db"
    workers: int = 1
    grace_seconds: float = 10.0
    limits: Limits = field(default_factory=Limits)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    local_model: LocalModelConfig = field(default_factory=LocalModelConfig)
    auth: TokenRegistry | None = None
    tls: TlsConfig | None = None
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    # Flow control of LLM endpoints shared by all jobs of this process.
    endpoints: EndpointDefaults = field(default_factory=EndpointDefaults)


def default_embedder() -> Embedder:
    from prompttune.search import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder()


@dataclass(frozen=True)
class Adapters:
    """The outside world, injectable: tests pass fakes, production the real adapters."""

    # Default: OpenAI-compatible clients sharing one connection pool per endpoint and loop.
    chat_models: ChatModelFactory = field(default_factory=OpenAIChatModels)
    embedder_factory: Callable[[], Embedder] = default_embedder


class PromptTuneServer:
    """One API server with in-process workers. `start()` returns the bound port."""

    def __init__(self, config: ServerConfig, adapters: Adapters | None = None) -> None:
        self.config = config
        adapters = adapters or Adapters()
        engine = create_db_engine(config.db_url)
        self.store = SqlJobStore(engine)
        self.metrics = ServiceMetrics.create(self.store.count_by_state)
        self.cache = SqlResponseCache(engine)
        cache = MeasuredResponseCache(self.cache, self.metrics)
        chat_models = self.metrics.chat_models(adapters.chat_models)
        self.local_model = LocalModelServer(config.local_model)
        resolver = ModelResolver(self.local_model, config.endpoints)
        embedder = adapters.embedder_factory()
        self.gateways = GatewayRegistry()
        self.jobs = JobService(
            self.store,
            resolver,
            cache,
            chat_models,
            config.limits,
            registry=self.gateways,
            embedder=embedder,
        )
        executor = JobExecutor(
            ExecutorDeps(
                store=self.store,
                cache=cache,
                resolver=resolver,
                embedder=embedder,
                chat_models=chat_models,
                study_storage=config.db_url,
                limits=config.limits,
                metrics=self.metrics,
                registry=self.gateways,
            ),
            config.worker,
        )
        self.workers = WorkerPool(
            self.store,
            executor,
            WorkerConfig(**{**config.worker.__dict__, "slots": config.workers}),
        )
        self._health = HealthReporter((SERVICE_NAME,))
        self._server: grpc.aio.Server | None = None
        self._metrics_http: WSGIServer | None = None
        self.metrics_port: int | None = None

    async def start(self) -> int:
        limits = self.config.limits
        server = grpc.aio.server(
            # ServiceInterceptor is outermost: it logs and maps AuthInterceptor's errors too.
            interceptors=[
                ServiceInterceptor(self.metrics.rpcs),
                AuthInterceptor(self.config.auth),
            ],
            options=[
                ("grpc.max_receive_message_length", limits.max_request_bytes + 1024 * 1024),
                ("grpc.max_send_message_length", limits.max_request_bytes + 1024 * 1024),
            ],
        )
        pb_grpc.add_OptimizerServiceServicer_to_server(OptimizerServicer(self.jobs), server)
        self._health.attach(server)
        address = f"{self.config.host}:{self.config.port}"
        if self.config.tls is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, self.config.tls.credentials())
        await server.start()
        self._start_metrics()
        self._server = server
        await self._health.serving()
        if self.config.workers > 0:
            self.workers.start()
        log.info(
            "server.started",
            host=self.config.host,
            port=port,
            workers=self.config.workers,
            tls=self.config.tls is not None,
            auth=self.config.auth is not None,
            metrics_port=self.metrics_port,
        )
        return int(port)

    def _start_metrics(self) -> None:
        if self.config.metrics_port is None:
            return
        self._metrics_http, _thread = start_http_server(
            self.config.metrics_port, self.config.metrics_host, registry=self.metrics.registry
        )
        self.metrics_port = int(self._metrics_http.server_port)

    async def stop(self) -> None:
        """Reports NOT_SERVING, finishes in-flight RPCs within the grace period, stops workers
        and the local model. Jobs still running are reclaimed later through their lease."""
        await self._health.draining()
        log.info("server.draining", grace_seconds=self.config.grace_seconds)
        if self._server is not None:
            await self._server.stop(self.config.grace_seconds)
        await asyncio.to_thread(self.workers.stop)
        await asyncio.to_thread(self.local_model.close)
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
        log.info("server.stopped")

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


async def serve(config: ServerConfig, adapters: Adapters | None = None) -> None:
    """Runs until SIGTERM or SIGINT, then shuts down gracefully."""
    app = PromptTuneServer(config, adapters)
    await app.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    log.info("server.stopping")
    await app.stop()
