"""Prometheus metrics of one server process.

LLM calls and the response cache are measured by wrapping the `ChatModel` and `ResponseCache`
protocols, so the engine's gateway stays unaware of metrics. Job counts by state are read
from the store at scrape time, so every API server reports the shared database's truth. RPCs
are counted and timed by the service interceptor through `RpcMetrics`; the standard process
metrics (`process_*`, `python_info`) come from prometheus_client's own collectors.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from prompttune.search import (
    ChatModel,
    ChatRequest,
    ChatResponse,
    LLMCallFailed,
    ModelEndpoint,
    ResponseCache,
)
from prompttune.v1 import optimizer_pb2 as pb

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
# Unary RPCs answer in milliseconds; streams (WatchJob, Health.Watch) last minutes.
_RPC_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60, 600)


@dataclass(frozen=True)
class RpcMetrics:
    """Per-RPC counts by status code and handling time, labelled like grpc-prometheus:
    `/prompttune.v1.OptimizerService/GetJob` is service `prompttune.v1.OptimizerService`,
    method `GetJob`. A stream's handling time is its whole lifetime."""

    handled: Counter
    handling: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry) -> RpcMetrics:
        labels = ["grpc_service", "grpc_method"]
        return cls(
            handled=Counter(
                "prompttune_rpc_handled",
                "RPCs completed, by status code.",
                [*labels, "grpc_code"],
                registry=registry,
            ),
            handling=Histogram(
                "prompttune_rpc_handling_seconds",
                "Time from an RPC's start to its status.",
                labels,
                buckets=_RPC_BUCKETS,
                registry=registry,
            ),
        )

    def observe(self, full_method: str, code: str, seconds: float) -> None:
        service, _, method = full_method.lstrip("/").partition("/")
        self.handled.labels(service, method, code).inc()
        self.handling.labels(service, method).observe(seconds)


class _JobStateCollector(Collector):
    def __init__(self, count_by_state: Callable[[], dict[int, int]]) -> None:
        self._count_by_state = count_by_state

    def collect(self) -> Iterator[Metric]:
        counts = self._count_by_state()
        jobs = GaugeMetricFamily(
            "prompttune_jobs", "Jobs in the database by state.", labels=["state"]
        )
        for value, name in sorted(pb.JobState.items(), key=lambda item: item[1]):
            if value != "JOB_STATE_UNSPECIFIED":
                jobs.add_metric([value.removeprefix("JOB_STATE_").lower()], counts.get(name, 0))
        yield jobs
        yield GaugeMetricFamily(
            "prompttune_queue_depth",
            "Jobs waiting for a worker.",
            value=counts.get(pb.JOB_STATE_QUEUED, 0),
        )


@dataclass(frozen=True)
class ServiceMetrics:
    """The server's metrics in their own registry (several servers may share a process)."""

    registry: CollectorRegistry
    rpcs: RpcMetrics
    trials: Counter
    llm_calls: Counter
    llm_errors: Counter
    llm_tokens: Counter
    llm_latency: Histogram
    cache_lookups: Counter

    @classmethod
    def create(cls, count_by_state: Callable[[], dict[int, int]]) -> ServiceMetrics:
        registry = CollectorRegistry()
        registry.register(_JobStateCollector(count_by_state))
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        return cls(
            registry=registry,
            rpcs=RpcMetrics.create(registry),
            trials=Counter(
                "prompttune_trials", "Search trials finished.", ["outcome"], registry=registry
            ),
            llm_calls=Counter(
                "prompttune_llm_calls", "LLM calls sent.", ["endpoint"], registry=registry
            ),
            llm_errors=Counter(
                "prompttune_llm_errors",
                "LLM calls that failed after retries.",
                ["endpoint"],
                registry=registry,
            ),
            llm_tokens=Counter(
                "prompttune_llm_tokens", "LLM tokens.", ["endpoint", "kind"], registry=registry
            ),
            llm_latency=Histogram(
                "prompttune_llm_latency_seconds",
                "LLM call latency, retries included.",
                ["endpoint"],
                buckets=_LATENCY_BUCKETS,
                registry=registry,
            ),
            cache_lookups=Counter(
                "prompttune_cache_lookups",
                "Response cache lookups; hit rate = hit / (hit + miss).",
                ["result"],
                registry=registry,
            ),
        )

    def chat_models(
        self, factory: Callable[[ModelEndpoint], ChatModel]
    ) -> Callable[[ModelEndpoint], ChatModel]:
        """Wraps a chat model factory so every model it builds is measured."""

        def build(endpoint: ModelEndpoint) -> ChatModel:
            return MeasuredChatModel(factory(endpoint), self, endpoint.base_url)

        return build


class MeasuredChatModel:
    """A `ChatModel` recording calls, errors, tokens and latency under its endpoint URL."""

    def __init__(self, model: ChatModel, metrics: ServiceMetrics, endpoint: str) -> None:
        self._model = model
        self._metrics = metrics
        self._endpoint = endpoint

    @property
    def identity(self) -> str:
        return self._model.identity

    async def complete(self, request: ChatRequest) -> ChatResponse:
        metrics, endpoint = self._metrics, self._endpoint
        metrics.llm_calls.labels(endpoint).inc()
        started = time.perf_counter()
        try:
            response = await self._model.complete(request)
        except LLMCallFailed:
            metrics.llm_errors.labels(endpoint).inc()
            raise
        finally:
            metrics.llm_latency.labels(endpoint).observe(time.perf_counter() - started)
        metrics.llm_tokens.labels(endpoint, "prompt").inc(response.prompt_tokens)
        metrics.llm_tokens.labels(endpoint, "completion").inc(response.completion_tokens)
        return response


class MeasuredResponseCache:
    """A `ResponseCache` counting hits and misses."""

    def __init__(self, cache: ResponseCache, metrics: ServiceMetrics) -> None:
        self._cache = cache
        self._metrics = metrics

    def get(self, key: str) -> ChatResponse | None:
        found = self._cache.get(key)
        self._metrics.cache_lookups.labels("miss" if found is None else "hit").inc()
        return found

    def put(self, key: str, response: ChatResponse) -> None:
        self._cache.put(key, response)
