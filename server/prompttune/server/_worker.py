"""Job workers: claim queued jobs from the store and run the search engine on them.

Each worker slot is a thread with its own event loop, so a running search never blocks the
API's loop. Leases are renewed by a heartbeat thread; a job whose worker died is reclaimed by
another worker once its lease expires. A worker with no job to claim joins a running job
with parallelism > 1 as a helper (`Runner.assist`) while that job is searching.
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
    SearchConfig,
    SearchEvent,
    TrialFinished,
)
from prompttune.server import _convert as convert
from prompttune.server._jobs import ValidatedJob, validate_create_request
from prompttune.server._limits import Limits
from prompttune.server._models import ModelResolver
from prompttune.server._store import ClaimedHelper, ClaimedJob, SqlJobStore
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


class HelperObserver:
    """A helper's view of the job: its events are dropped (the primary adopts and reports its
    trials); cancellation and the end of the search phase are read from the store, at most
    once per `check_seconds`."""

    def __init__(self, store: SqlJobStore, job_id: str, check_seconds: float) -> None:
        self._store = store
        self._job_id = job_id
        self._check_seconds = check_seconds
        self._checked_at = 0.0
        self._open = True
        self._cancelled = False

    def on_event(self, event: SearchEvent) -> None:
        pass

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked_at >= self._check_seconds:
            self._checked_at = now
            self._open = self._store.search_open(self._job_id)
            self._cancelled = self._store.cancel_requested(self._job_id)

    def cancelled(self) -> bool:
        self._refresh()
        return self._cancelled

    def search_open(self) -> bool:
        self._refresh()
        return self._open


@dataclass(frozen=True)
class PreparedJob:
    """A claimed request validated, with a runner bound to its observer."""

    validated: ValidatedJob
    config: SearchConfig
    runner: Runner


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
        # request_id: CreateJob's idempotency key, which its `rpc.done` and `job.created`
        # lines carry too, so a request can be followed to its job's lines.
        bound = structlog.contextvars.bound_contextvars(
            job_id=job_id, tenant=claimed.tenant, request_id=claimed.request.request_id or None
        )
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

    def warm_up(self) -> None:
        """Loads the embedding model now rather than in a job's first minutes, so a helper
        can join a running search at once. Failures are logged; jobs load it again."""
        try:
            self._deps.embedder.embed(["warm-up"])
        except Exception as error:
            log.warning("worker.warm_up_failed", error=repr(error))
        else:
            log.info("worker.warmed_up")

    def assist(self, claimed: ClaimedHelper, worker_id: str) -> None:
        """Runs trials of a job another worker runs, as helper `claimed.slot`. Never raises
        and never ends the job: its primary does. Releases the slot afterwards."""
        job_id = claimed.job_id
        bound = structlog.contextvars.bound_contextvars(
            job_id=job_id, tenant=claimed.tenant, helper=claimed.slot
        )
        with bound:
            log.info("job.helper.started")
            try:
                asyncio.run(self._assist(claimed))
            except SearchCancelled:
                log.info("job.helper.cancelled")
            except PromptTuneError as error:
                log.warning("job.helper.failed", error=str(error))
            except Exception as error:  # the helper stops; the primary carries on without it
                log.exception("job.helper.crashed", error=repr(error))
            finally:
                # Closed for good: a failing helper must not be re-claimed in a loop. Only a
                # helper that died (lease expired) leaves its slot to another worker.
                self._deps.store.release_helper(job_id, claimed.slot, worker_id, done=True)
            log.info("job.helper.done")

    async def _assist(self, claimed: ClaimedHelper) -> None:
        observer = HelperObserver(
            self._deps.store, claimed.job_id, self._config.cancel_check_seconds
        )
        job = await self._prepare(claimed.request, observer)
        await job.runner.assist(
            job.validated.task,
            job.validated.splits,
            job.config,
            claimed.job_id,
            claimed.slot,
            observer.search_open,
        )

    async def _run(self, claimed: ClaimedJob) -> pb.JobResult:
        observer = StoreObserver(
            self._deps.store, claimed.job_id, self._config.cancel_check_seconds, self._deps.metrics
        )
        job = await self._prepare(claimed.request, observer)
        result = await job.runner.run(
            job.validated.task, job.validated.splits, job.config, study_name=claimed.job_id
        )
        return convert.result_to_proto(result)

    async def _prepare(
        self, request: pb.CreateJobRequest, observer: StoreObserver | HelperObserver
    ) -> PreparedJob:
        deps = self._deps
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
        return PreparedJob(validated, config, runner)


class WorkerPool:
    """`slots` worker threads plus one lease heartbeat thread. `stop()` waits for them."""

    def __init__(self, store: SqlJobStore, executor: JobExecutor, config: WorkerConfig) -> None:
        self._store = store
        self._executor = executor
        self._config = config
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._running: dict[str, str] = {}  # job id -> worker id
        self._helping: dict[tuple[str, int], str] = {}  # (job id, slot) -> worker id
        self._lock = threading.Lock()
        self._host = f"{socket.gethostname()}:{os.getpid()}"

    def start(self) -> None:
        threading.Thread(target=self._executor.warm_up, daemon=True).start()
        for slot in range(self._config.slots):
            worker_id = f"{self._host}:{slot}"
            thread = threading.Thread(target=self._loop, args=(worker_id,), daemon=True)
            thread.start()
            self._threads.append(thread)
        heartbeat = threading.Thread(target=self._heartbeat, daemon=True)
        heartbeat.start()
        self._threads.append(heartbeat)

    def _loop(self, worker_id: str) -> None:
        """Claims a queued (or orphaned) job first, else a helper place in a running one."""
        while not self._stopping.is_set():
            lease = self._config.lease_seconds
            claimed: ClaimedJob | ClaimedHelper | None = None
            try:
                claimed = self._store.claim(worker_id, lease)
                if claimed is None:
                    claimed = self._store.claim_helper(worker_id, lease)
            except Exception:  # a database hiccup must not kill the worker
                log.exception("worker.claim_failed", worker=worker_id)
            if claimed is None:
                self._stopping.wait(self._config.poll_seconds)
            elif isinstance(claimed, ClaimedHelper):
                self._help(claimed, worker_id)
            else:
                self._run(claimed, worker_id)

    def _run(self, claimed: ClaimedJob, worker_id: str) -> None:
        with self._lock:
            self._running[claimed.job_id] = worker_id
        try:
            self._executor.execute(claimed)
        finally:
            with self._lock:
                self._running.pop(claimed.job_id, None)

    def _help(self, claimed: ClaimedHelper, worker_id: str) -> None:
        place = (claimed.job_id, claimed.slot)
        with self._lock:
            self._helping[place] = worker_id
        try:
            self._executor.assist(claimed, worker_id)
        finally:
            with self._lock:
                self._helping.pop(place, None)

    def _heartbeat(self) -> None:
        interval = self._config.lease_seconds / 3
        while not self._stopping.wait(interval):
            with self._lock:
                running = list(self._running.items())
                helping = list(self._helping.items())
            lease = self._config.lease_seconds
            for job_id, worker_id in running:
                try:
                    self._store.renew_lease(job_id, worker_id, lease)
                except Exception:
                    log.exception("worker.heartbeat_failed", job_id=job_id)
            for (job_id, slot), worker_id in helping:
                try:
                    self._store.renew_helper_lease(job_id, slot, worker_id, lease)
                except Exception:
                    log.exception("worker.heartbeat_failed", job_id=job_id, helper=slot)

    def stop(self, timeout: float = 5.0) -> None:
        """Stops claiming. Running jobs keep their lease until it expires, then are reclaimed."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout)
