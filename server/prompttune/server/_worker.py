"""Job workers: claim queued jobs from the store and run the search engine on them.

Each worker slot is a thread with its own event loop, so a running search never blocks the
API's loop. Leases are renewed by a heartbeat thread; a job whose worker died is reclaimed by
another worker once its lease expires.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from prompttune.search import (
    BudgetUsed,
    ChatModel,
    Embedder,
    EndpointPolicy,
    GatewayRegistry,
    MetricName,
    ModelEndpoint,
    NewBest,
    PhaseChanged,
    PromptTuneError,
    ResponseCache,
    Runner,
    RunnerDeps,
    SearchCancelled,
    SearchEvent,
    TrialFinished,
)
from prompttune.server import _convert as convert
from prompttune.server._jobs import validate_create_request
from prompttune.server._limits import Limits
from prompttune.server._models import ModelResolver
from prompttune.server._store import ClaimedJob, SqlJobStore
from prompttune.server._telemetry import ServiceMetrics
from prompttune.v1 import optimizer_pb2 as pb

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class WorkerConfig:
    slots: int = 1
    lease_seconds: float = 60.0
    poll_seconds: float = 0.5
    cancel_check_seconds: float = 1.0


class StoreObserver:
    """Persists the runner's events and progress; tells the runner when a cancel arrived."""

    def __init__(
        self,
        store: SqlJobStore,
        job_id: str,
        check_seconds: float,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._job_id = job_id
        self._check_seconds = check_seconds
        self._checked_at = 0.0
        self._cancelled = False
        self._progress = pb.Progress(phase="starting")

    def on_event(self, event: SearchEvent) -> None:
        self._store.append_event(self._job_id, convert.event_to_proto(event))
        if isinstance(event, PhaseChanged):
            self._progress.phase = event.phase
        elif isinstance(event, TrialFinished):
            self._progress.trials_completed += 1
            if self._metrics is not None:
                self._metrics.trials.labels("pruned" if event.pruned else "completed").inc()
        elif isinstance(event, NewBest):
            self._progress.best_score = event.score
        elif isinstance(event, BudgetUsed):
            self._progress.usage.CopyFrom(convert.usage_to_proto(event.usage))
        self._store.set_progress(self._job_id, self._progress)

    def cancelled(self) -> bool:
        now = time.monotonic()
        if not self._cancelled and now - self._checked_at >= self._check_seconds:
            self._checked_at = now
            self._cancelled = self._store.cancel_requested(self._job_id)
        return self._cancelled


@dataclass(frozen=True)
class ExecutorDeps:
    store: SqlJobStore
    cache: ResponseCache
    resolver: ModelResolver
    embedder: Embedder
    chat_models: Callable[[ModelEndpoint], ChatModel]
    study_storage: str
    limits: Limits
    metrics: ServiceMetrics | None = None
    # Process-wide flow control: every job's calls to one endpoint share its limits.
    registry: GatewayRegistry = field(default_factory=GatewayRegistry)


class JobExecutor:
    """Runs one claimed job to a terminal state. Never raises: failures fail the job."""

    def __init__(self, deps: ExecutorDeps, config: WorkerConfig) -> None:
        self._deps = deps
        self._config = config

    def execute(self, claimed: ClaimedJob) -> None:
        job_id = claimed.job_id
        bound = structlog.contextvars.bound_contextvars(job_id=job_id, tenant=claimed.tenant)
        with bound:
            log.info("job.started")
            try:
                result = asyncio.run(self._run(claimed))
            except SearchCancelled:
                self._deps.store.finish(job_id, pb.JOB_STATE_CANCELLED, None, "")
                log.info("job.cancelled")
            except PromptTuneError as error:
                self._deps.store.finish(job_id, pb.JOB_STATE_FAILED, None, str(error))
                log.warning("job.failed", error=str(error))
            except Exception as error:  # the job fails; the worker carries on
                self._deps.store.finish(job_id, pb.JOB_STATE_FAILED, None, "internal error")
                log.exception("job.crashed", error=repr(error))
            else:
                self._deps.store.finish(job_id, pb.JOB_STATE_SUCCEEDED, result, "")
                log.info("job.succeeded", best=result.best.validation.mean)

    async def _run(self, claimed: ClaimedJob) -> pb.JobResult:
        deps, request = self._deps, claimed.request
        validated = validate_create_request(request, deps.limits)
        config = convert.search_config_from_proto(request.search, deps.limits)
        task_endpoint = await asyncio.to_thread(deps.resolver.resolve, request.model)
        proposer_endpoint = task_endpoint
        if request.search.HasField("proposer"):
            proposer_spec = request.search.proposer
            proposer_endpoint = await asyncio.to_thread(
                deps.resolver.resolve, proposer_spec, "search.proposer"
            )
        judge_endpoint = task_endpoint
        if request.task.HasField("judge"):
            judge_endpoint = await asyncio.to_thread(
                deps.resolver.resolve, request.task.judge, "task.judge"
            )
        judged = validated.task.metric is MetricName.LLM_JUDGE
        observer = StoreObserver(
            deps.store, claimed.job_id, self._config.cancel_check_seconds, deps.metrics
        )
        runner = Runner(
            RunnerDeps(
                task_model=deps.chat_models(task_endpoint),
                proposer_model=deps.chat_models(proposer_endpoint),
                embedder=deps.embedder,
                cache=deps.cache if config.use_cache else None,
                observer=observer,
                task_temperature=task_endpoint.temperature,
                task_max_tokens=task_endpoint.max_tokens,
                task_max_concurrency=task_endpoint.max_concurrency,
                proposer_max_concurrency=proposer_endpoint.max_concurrency,
                registry=deps.registry,
                task_policy=EndpointPolicy.of(task_endpoint),
                proposer_policy=EndpointPolicy.of(proposer_endpoint),
                judge_model=deps.chat_models(judge_endpoint) if judged else None,
                judge_policy=EndpointPolicy.of(judge_endpoint),
                judge_max_concurrency=judge_endpoint.max_concurrency,
            ),
            storage=deps.study_storage,
        )
        result = await runner.run(
            validated.task, validated.splits, config, study_name=claimed.job_id
        )
        return convert.result_to_proto(result)


class WorkerPool:
    """`slots` worker threads plus one lease heartbeat thread. `stop()` waits for them."""

    def __init__(self, store: SqlJobStore, executor: JobExecutor, config: WorkerConfig) -> None:
        self._store = store
        self._executor = executor
        self._config = config
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._running: dict[str, str] = {}  # job id -> worker id
        self._lock = threading.Lock()
        self._host = f"{socket.gethostname()}:{os.getpid()}"

    def start(self) -> None:
        for slot in range(self._config.slots):
            worker_id = f"{self._host}:{slot}"
            thread = threading.Thread(target=self._loop, args=(worker_id,), daemon=True)
            thread.start()
            self._threads.append(thread)
        heartbeat = threading.Thread(target=self._heartbeat, daemon=True)
        heartbeat.start()
        self._threads.append(heartbeat)

    def _loop(self, worker_id: str) -> None:
        while not self._stopping.is_set():
            try:
                claimed = self._store.claim(worker_id, self._config.lease_seconds)
            except Exception:  # a database hiccup must not kill the worker
                log.exception("worker.claim_failed", worker=worker_id)
                claimed = None
            if claimed is None:
                self._stopping.wait(self._config.poll_seconds)
                continue
            with self._lock:
                self._running[claimed.job_id] = worker_id
            try:
                self._executor.execute(claimed)
            finally:
                with self._lock:
                    self._running.pop(claimed.job_id, None)

    def _heartbeat(self) -> None:
        interval = self._config.lease_seconds / 3
        while not self._stopping.wait(interval):
            with self._lock:
                running = list(self._running.items())
            for job_id, worker_id in running:
                try:
                    self._store.renew_lease(job_id, worker_id, self._config.lease_seconds)
                except Exception:
                    log.exception("worker.heartbeat_failed", job_id=job_id)

    def stop(self, timeout: float = 5.0) -> None:
        """Stops claiming. Running jobs keep their lease until it expires, then are reclaimed."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout)
