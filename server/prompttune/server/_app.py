"""Assembles the service: database, cache, local model, workers, gRPC server with health
checking and reflection, and graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
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
from prompttune.server._addresses import (
    AddressGuard,
    HostResolver,
    ProtectedSocket,
    SystemResolver,
    database_socket,
)
from prompttune.server._auth import AuthInterceptor, TokenRegistry
from prompttune.server._cache import SqlResponseCache, TenantCaches
from prompttune.server._db import create_db_engine
from prompttune.server._endpoints import (
    EndpointConfig,
    EndpointDefaults,
    EndpointRegistry,
    RegistrySettings,
)
from prompttune.server._health import HealthReporter
from prompttune.server._interceptor import ServiceInterceptor
from prompttune.server._jobs import JobService, ServiceDeps
from prompttune.server._limits import Limits
from prompttune.server._local_model import LocalModelConfig, LocalModelServer
from prompttune.server._notify import waker_for
from prompttune.server._service import OptimizerServicer, RequestDecoder
from prompttune.server._store import SqlJobStore
from prompttune.server._telemetry import MeasuredResponseCache, ServiceMetrics
from prompttune.server._validate import Decoder, decode
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
    # The operator's endpoint registry and caller-endpoint policy (see _endpoints.py).
    endpoint_config: EndpointConfig = field(default_factory=EndpointConfig)
    # WatchJob streams wake on PostgreSQL LISTEN/NOTIFY; off (or SQLite): they poll.
    watch_notify: bool = True


def default_embedder() -> Embedder:
    from prompttune.search import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder()


@dataclass(frozen=True)
class Adapters:
    """The outside world, injectable: tests pass fakes, production the real adapters."""

    # Default: OpenAI-compatible clients sharing one connection pool per endpoint and loop.
    chat_models: ChatModelFactory = field(default_factory=OpenAIChatModels)
    embedder_factory: Callable[[], Embedder] = default_embedder
    # Decodes request messages into contract values (tests count the calls).
    request_decode: Decoder = decode
    # Resolves caller-supplied endpoint hosts for the address guard.
    host_resolver: HostResolver = field(default_factory=SystemResolver)


def study_deleter(storage_url: str) -> Callable[[str], None]:
    """Deletes the Optuna study of a job (named after it); a missing study is fine."""

    def delete_study(study_name: str) -> None:
        import optuna

        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=study_name, storage=storage_url)

    return delete_study


class PromptTuneServer:
    """One API server with in-process workers. `start()` returns the bound port."""

    def __init__(self, config: ServerConfig, adapters: Adapters | None = None) -> None:
        self.config = config
        adapters = adapters or Adapters()
        self._decode = adapters.request_decode
        engine = create_db_engine(config.db_url)
        self.store = SqlJobStore(engine, config.limits.max_job_attempts)
        self.metrics = ServiceMetrics.create(self.store.count_by_state)
        self.cache = SqlResponseCache(engine)
        cache = MeasuredResponseCache(self.cache, self.metrics)
        chat_models = self.metrics.chat_models(adapters.chat_models)
        self.local_model = LocalModelServer(config.local_model)
        self.address_guard = AddressGuard(
            config.endpoint_config.networks(),
            adapters.host_resolver,
            protected=[item for item in (database_socket(config.db_url),) if item is not None],
        )
        endpoints = EndpointRegistry(
            config.endpoint_config,
            self.local_model,
            self.address_guard,
            RegistrySettings(multi_tenant=config.auth is not None, defaults=config.endpoints),
        )
        caches = TenantCaches(cache, config.endpoint_config.share_cache_across_tenants)
        embedder = adapters.embedder_factory()
        self.gateways = GatewayRegistry()
        self.waker = waker_for(config.db_url, config.watch_notify)
        self.jobs = JobService(
            ServiceDeps(
                store=self.store,
                endpoints=endpoints,
                caches=caches,
                chat_models=chat_models,
                limits=config.limits,
                registry=self.gateways,
                embedder=embedder,
                delete_study=study_deleter(config.db_url),
                waker=self.waker,
            )
        )
        executor = JobExecutor(
            ExecutorDeps(
                store=self.store,
                caches=caches,
                endpoints=endpoints,
                embedder=embedder,
                chat_models=chat_models,
                study_storage=config.db_url,
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
        self._health_watch: asyncio.Future[None] | None = None
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
        servicer = OptimizerServicer(self.jobs, RequestDecoder(limits, self._decode))
        pb_grpc.add_OptimizerServiceServicer_to_server(servicer, server)
        self._health.attach(server)
        address = f"{self.config.host}:{self.config.port}"
        if self.config.tls is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, self.config.tls.credentials())
        await server.start()
        self.address_guard.protect(ProtectedSocket(self.config.host, int(port)))
        self._start_metrics()
        self._server = server
        await self._health.serving()
        if self.config.workers > 0:
            self.workers.start()
            self._health_watch = asyncio.ensure_future(self._watch_workers())
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

    async def _watch_workers(self, every_seconds: float = 1.0) -> None:
        """NOT_SERVING once a worker slot thread is gone (it should never be)."""
        while self.workers.workers_alive() >= self.config.workers:
            await asyncio.sleep(every_seconds)
        log.error("server.worker_lost", alive=self.workers.workers_alive())
        await self._health.not_serving(("", SERVICE_NAME))

    def _start_metrics(self) -> None:
        if self.config.metrics_port is None:
            return
        self._metrics_http, _thread = start_http_server(
            self.config.metrics_port, self.config.metrics_host, registry=self.metrics.registry
        )
        self.metrics_port = int(self._metrics_http.server_port)
        self.address_guard.protect(ProtectedSocket(self.config.metrics_host, self.metrics_port))

    async def stop(self) -> None:
        """Reports NOT_SERVING, finishes in-flight RPCs within the grace period, stops workers
        and the local model. Jobs still running are reclaimed later through their lease."""
        if self._health_watch is not None:
            self._health_watch.cancel()
        await self._health.draining()
        log.info("server.draining", grace_seconds=self.config.grace_seconds)
        if self._server is not None:
            await self._server.stop(self.config.grace_seconds)
        await asyncio.to_thread(self.workers.stop)
        await asyncio.to_thread(self.local_model.close)
        await asyncio.to_thread(self.waker.close)
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
