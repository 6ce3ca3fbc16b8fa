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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

import structlog

from prompttune.contract import (
    BudgetUsed,
    JobResult,
    JobSpec,
    JobState,
    Metric,
    NewBest,
    PhaseChanged,
    Progress,
    SearchEvent,
    TrialFinished,
    preview,
)
from prompttune.search import (
    ChatModel,
    DatasetSplits,
    Embedder,
    EndpointPolicy,
    GatewayRegistry,
    ModelEndpoint,
    PromptTuneError,
    Runner,
    RunnerDeps,
    SearchCancelled,
    SearchFailed,
    SearchObserver,
    TestListener,
)
from prompttune.server._cache import TenantCaches
from prompttune.server._endpoints import EndpointRegistry
from prompttune.server._multimodel import run_models
from prompttune.server._records import safe_text
from prompttune.server._store import ClaimedHelper, ClaimedJob, SqlJobStore
from prompttune.server._telemetry import ServiceMetrics

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class WorkerConfig:
    slots: int = 1
    lease_seconds: float = 60.0
    poll_seconds: float = 0.5
    cancel_check_seconds: float = 1.0


class StoreObserver:
    """Persists the runner's events and progress; tells the runner when a cancel arrived
    (read from the store at most once per `check_seconds`, in every phase)."""

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
        self._progress = Progress(phase="starting")

    def on_event(self, event: SearchEvent) -> None:
        self._store.append_event(self._job_id, event)
        self._progress = self._advance(self._progress, event)
        self._store.set_progress(self._job_id, self._progress)

    def _advance(self, progress: Progress, event: SearchEvent) -> Progress:
        if isinstance(event, PhaseChanged):
            return replace(progress, phase=event.phase)
        if isinstance(event, TrialFinished):
            if self._metrics is not None:
                self._metrics.trials.labels("pruned" if event.pruned else "completed").inc()
            return replace(progress, trials_completed=progress.trials_completed + 1)
        if isinstance(event, NewBest):
            return replace(progress, best_score=event.score)
        if isinstance(event, BudgetUsed):
            return replace(progress, usage=event.usage)
        return progress

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
class ExecutorDeps:
    store: SqlJobStore
    caches: TenantCaches
    endpoints: EndpointRegistry
    embedder: Embedder
    chat_models: Callable[[ModelEndpoint], ChatModel]
    study_storage: str
    metrics: ServiceMetrics | None = None
    # Process-wide flow control: every job's calls to one endpoint share its limits.
    registry: GatewayRegistry = field(default_factory=GatewayRegistry)


@dataclass(frozen=True)
class Outcome:
    """How a job ended: its terminal state, result (partial for cancel and failure) and
    cause."""

    state: JobState
    result: JobResult | None = None
    error: str = ""


def _partial(result: JobResult | None) -> JobResult | None:
    """The best result found before the engine stopped, marked partial."""
    return None if result is None else replace(result, partial=True)


def _splits(spec: JobSpec) -> DatasetSplits:
    dataset = spec.dataset
    return DatasetSplits(train=dataset.train, validation=dataset.validation, test=dataset.test)


class JobExecutor:
    """Runs one claimed job to a terminal state. Never raises: failures fail the job."""

    def __init__(self, deps: ExecutorDeps, config: WorkerConfig) -> None:
        self._deps = deps
        self._config = config

    def execute(self, claimed: ClaimedJob) -> None:
        # request_id: CreateJob's idempotency key, which its `rpc.done` and `job.created`
        # lines carry too, so a request can be followed to its job's lines.
        bound = structlog.contextvars.bound_contextvars(
            job_id=claimed.job_id, tenant=claimed.tenant, request_id=claimed.spec.request_id or None
        )
        with bound:
            log.info("job.started")
            outcome = self._outcome(claimed)
            self._finish(claimed.job_id, outcome)

    def _outcome(self, claimed: ClaimedJob) -> Outcome:
        try:
            result = asyncio.run(self._run(claimed))
        except SearchCancelled as cancelled:
            log.info("job.cancelled")
            return Outcome(JobState.CANCELLED, _partial(cancelled.partial))
        except SearchFailed as failed:
            log.warning("job.failed", error=failed.cause)
            return Outcome(JobState.FAILED, _partial(failed.partial), failed.cause)
        except PromptTuneError as error:  # e.g. an endpoint the resolver refused
            log.warning("job.failed", error=str(error))
            return Outcome(JobState.FAILED, None, str(error))
        except Exception as error:  # the job fails with its cause; the worker carries on
            log.exception("job.crashed", error=repr(error))
            cause = f"internal error: {type(error).__name__}: {preview(str(error))}"
            return Outcome(JobState.FAILED, None, cause)
        log.info("job.succeeded", best=result.best.validation.mean)
        return Outcome(JobState.SUCCEEDED, result)

    def _finish(self, job_id: str, outcome: Outcome) -> None:
        """Stores the outcome; if that fails (say the result does not fit the database), the
        job still ends FAILED with the cause. Never raises."""
        try:
            self._deps.store.finish(job_id, outcome.state, outcome.result, outcome.error)
            return
        except Exception as error:
            log.exception("job.finish_failed", error=repr(error))
            cause = safe_text(f"could not store the job's outcome: {error!r}", 500)
        try:
            self._deps.store.finish(job_id, JobState.FAILED, None, cause)
        except Exception as error:  # the lease expires and the attempt bound ends the job
            log.exception("job.finish_failed", error=repr(error))

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
        spec = claimed.spec
        if spec.models:  # each model of a multi-model job searches on its primary alone
            return
        runner = await self._runner(spec, claimed.tenant, observer)
        await runner.assist(
            spec.task,
            _splits(spec),
            spec.search,
            claimed.job_id,
            claimed.slot,
            observer.search_open,
        )

    async def _run(self, claimed: ClaimedJob) -> JobResult:
        observer = StoreObserver(
            self._deps.store, claimed.job_id, self._config.cancel_check_seconds, self._deps.metrics
        )
        spec = claimed.spec
        if spec.models:
            return await run_models(spec, claimed.job_id, observer, self._model_runner(claimed))
        runner = await self._runner(spec, claimed.tenant, observer)
        return await runner.run(spec.task, _splits(spec), spec.search, study_name=claimed.job_id)

    def _model_runner(
        self, claimed: ClaimedJob
    ) -> Callable[[JobSpec, SearchObserver, TestListener, str], Awaitable[JobResult]]:
        """Runs one model's search of the multi-model job `claimed`."""

        async def run_model(
            spec: JobSpec, observer: SearchObserver, listener: TestListener, study: str
        ) -> JobResult:
            runner = await self._runner(spec, claimed.tenant, observer, listener)
            return await runner.run(spec.task, _splits(spec), spec.search, study_name=study)

        return run_model

    async def _runner(
        self,
        spec: JobSpec,
        tenant: str,
        observer: SearchObserver,
        test_listener: TestListener | None = None,
    ) -> Runner:
        """A runner for the already validated `spec`, bound to `tenant`'s endpoints and
        response cache, to `observer` and to `test_listener`."""
        deps = self._deps
        resolve = deps.endpoints.for_tenant(tenant).resolve
        task_endpoint = await asyncio.to_thread(resolve, spec.model, "model")
        proposer_endpoint = task_endpoint
        if spec.search.proposer is not None:
            proposer_endpoint = await asyncio.to_thread(
                resolve, spec.search.proposer, "search.proposer"
            )
        judge_endpoint = task_endpoint
        if spec.task.judge is not None:
            judge_endpoint = await asyncio.to_thread(resolve, spec.task.judge, "task.judge")
        judged = spec.task.metric is Metric.LLM_JUDGE
        return Runner(
            RunnerDeps(
                task_model=deps.chat_models(task_endpoint),
                proposer_model=deps.chat_models(proposer_endpoint),
                embedder=deps.embedder,
                cache=None if spec.search.disable_cache else deps.caches.for_tenant(tenant),
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
                test_listener=test_listener,
            ),
            storage=deps.study_storage,
        )


class WorkerPool:
    """`slots` worker threads plus one lease heartbeat thread. `stop()` waits for them."""

    def __init__(self, store: SqlJobStore, executor: JobExecutor, config: WorkerConfig) -> None:
        self._store = store
        self._executor = executor
        self._config = config
        self._stopping = threading.Event()
        self._warm = threading.Event()
        self._threads: list[threading.Thread] = []
        self._slot_threads: list[threading.Thread] = []
        self._running: dict[str, str] = {}  # job id -> worker id
        self._helping: dict[tuple[str, int], str] = {}  # (job id, slot) -> worker id
        self._lock = threading.Lock()
        self._host = f"{socket.gethostname()}:{os.getpid()}"

    def start(self) -> None:
        threading.Thread(target=self._warm_up, daemon=True).start()
        for slot in range(self._config.slots):
            worker_id = f"{self._host}:{slot}"
            thread = threading.Thread(target=self._loop, args=(worker_id,), daemon=True)
            thread.start()
            self._threads.append(thread)
            self._slot_threads.append(thread)
        heartbeat = threading.Thread(target=self._heartbeat, daemon=True)
        heartbeat.start()
        self._threads.append(heartbeat)

    def workers_alive(self) -> int:
        """Worker slot threads still running (health reports NOT_SERVING below `slots`)."""
        return sum(thread.is_alive() for thread in self._slot_threads)

    def _warm_up(self) -> None:
        try:
            self._executor.warm_up()
        finally:
            self._warm.set()

    def _loop(self, worker_id: str) -> None:
        """Claims a queued (or orphaned) job first, else a helper place in a running one.
        Nothing a job does ends this loop; only `stop()` does. Claims wait for the warm-up:
        loading the embedding model can starve the lease heartbeat for seconds, and a job
        claimed meanwhile would lose its lease to another worker."""
        while not self._warm.wait(self._config.poll_seconds):
            if self._stopping.is_set():
                return
        while not self._stopping.is_set():
            try:
                self._step(worker_id)
            except Exception:  # a database hiccup or a bug must not cost a worker slot
                log.exception("worker.step_failed", worker=worker_id)
                self._stopping.wait(self._config.poll_seconds)

    def _step(self, worker_id: str) -> None:
        lease = self._config.lease_seconds
        claimed: ClaimedJob | ClaimedHelper | None = self._store.claim(worker_id, lease)
        if claimed is None:
            claimed = self._store.claim_helper(worker_id, lease)
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
