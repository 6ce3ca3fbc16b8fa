"""The service's domain operations behind the RPCs: create, read, cancel, delete, watch,
evaluate, compare and render, all in contract types.

Requests arrive decoded; `create` validates a JobSpec once and stores it, and nothing after
it checks that spec again. Long work (searches) never runs here. Methods that do CPU work on
large inputs are synchronous: the servicer runs them off the event loop.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from prompttune.contract import (
    ChatMessage,
    Comparison,
    EndpointCheck,
    Estimate,
    Evaluation,
    EvaluationProgress,
    Job,
    JobDataset,
    JobEvent,
    JobPage,
    JobSpec,
    Metric,
    ModelSpec,
    Scoring,
    SearchSpec,
    answer_max_tokens,
    render,
)
from prompttune.search import (
    CallBudget,
    CallSettings,
    ChatModel,
    ChatRequest,
    ChatResponse,
    DatasetSplits,
    Embedder,
    EndpointPolicy,
    GatewayFactory,
    GatewayRegistry,
    LLMGateway,
    ModelEndpoint,
    build_scorer,
    calls_per_example,
    compare_evaluations,
    estimate,
    evaluate_prompt,
    evaluation_calls,
    label_request,
    label_task,
    resolve_scoring,
    usage_since,
)
from prompttune.search import InvalidArgument as InvalidArgumentError
from prompttune.server._auth import DEFAULT_TENANT
from prompttune.server._cache import TenantCaches
from prompttune.server._endpoints import EndpointRegistry
from prompttune.server._limits import Limits
from prompttune.server._multimodel import model_search, study_name
from prompttune.server._notify import EventWaker, PollingWaker
from prompttune.server._preflight import check_endpoint
from prompttune.server._records import TERMINAL_STATES
from prompttune.server._store import SqlJobStore
from prompttune.server._validate import (
    ComparisonRequest,
    EvaluationRequest,
    JobQuery,
    RenderRequest,
    WatchRequest,
    check_id,
    check_sequence,
    validate_comparison,
    validate_evaluation,
    validate_inputs,
    validate_job_spec,
    validate_prompt,
)

_EVALUATE_CALL_CAP = 20_000
WATCH_READ_THREADS = 4
T = TypeVar("T")
_MAX_PAGE_SIZE = 200


def job_model_specs(spec: JobSpec) -> list[tuple[ModelSpec, str]]:
    """The model specs a job uses, with their field paths."""
    specs = [(spec.model, "model")]
    specs.extend((model, f"models[{index}]") for index, model in enumerate(spec.models))
    if spec.task.judge is not None:
        specs.append((spec.task.judge, "task.judge"))
    if spec.search.proposer is not None:
        specs.append((spec.search.proposer, "search.proposer"))
    return specs


def job_estimate(spec: JobSpec) -> Estimate:
    """Calls and tokens of every target model's search (each within its budget share)."""
    splits = DatasetSplits(spec.dataset.train, spec.dataset.validation, spec.dataset.test)
    count = len(spec.target_models)
    if count == 1:
        return estimate(spec.task, splits, spec.search)
    one = estimate(spec.task, splits, model_search(spec))
    return replace(one, llm_calls=one.llm_calls * count, tokens=one.tokens * count)


def job_id_of(job_id: str) -> str:
    """A syntactically valid job id (NotFound is the store's answer for unknown ones)."""
    return check_id(job_id, "job_id", 40)


class _CountingChatModel:
    """Counts finished calls of a chat model, for evaluation progress. Thread-safe enough:
    one event loop increments it."""

    def __init__(self, inner: ChatModel) -> None:
        self._inner = inner
        self.calls = 0

    @property
    def identity(self) -> str:
        return self._inner.identity

    async def complete(self, request: ChatRequest) -> ChatResponse:
        try:
            return await self._inner.complete(request)
        finally:
            self.calls += 1


@dataclass(frozen=True)
class ServiceDeps:
    """What JobService needs from the outside world."""

    store: SqlJobStore
    endpoints: EndpointRegistry
    caches: TenantCaches
    chat_models: Callable[[ModelEndpoint], ChatModel]
    limits: Limits
    registry: GatewayRegistry
    embedder: Embedder | None = None
    # Deletes a job's Optuna study (named after the job); a missing study is not an error.
    delete_study: Callable[[str], None] = lambda _study: None
    # Wakes WatchJob streams: LISTEN/NOTIFY on PostgreSQL, polling elsewhere.
    waker: EventWaker = field(default_factory=PollingWaker)
    # Pre-flight reachability of an endpoint (blocking; CreateJob runs off the event loop).
    preflight: Callable[[ModelEndpoint, str], EndpointCheck] = check_endpoint


class JobService:
    """Implements the RPCs' semantics over a JobStore. Thread-safe."""

    def __init__(self, deps: ServiceDeps) -> None:
        self._deps = deps
        self._store = deps.store
        self._limits = deps.limits
        # WatchJob's reads run on their own threads: when one event wakes many streams, their
        # reads queue here instead of in front of GetJob and the other RPCs' store calls.
        self._watch_reads = ThreadPoolExecutor(WATCH_READ_THREADS, thread_name_prefix="watch")

    async def _watch_read(self, read: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._watch_reads, functools.partial(read, *args))

    def create(
        self, spec: JobSpec, dry_run: bool = False, tenant: str = DEFAULT_TENANT
    ) -> tuple[Job | None, Estimate]:
        """Validates `spec` once, estimates it and (unless `dry_run`) queues it. CPU-bound on
        large datasets: call it off the event loop. Raises InvalidArgument, AlreadyExists."""
        if spec.template_job_id:
            spec = self._from_template(spec, tenant)
        spec = validate_job_spec(spec, self._limits)
        resolved = [
            (self._deps.endpoints.check(model, path, tenant), path)
            for model, path in job_model_specs(spec)
        ]
        checks = tuple(self._deps.preflight(endpoint, path) for endpoint, path in resolved)
        guess = replace(job_estimate(spec), endpoints=checks)
        if dry_run:
            return None, guess
        job = self._store.create(spec, guess, tenant)
        return job, job.estimate or guess

    def _from_template(self, spec: JobSpec, tenant: str) -> JobSpec:
        """`spec` with the task, dataset and search of `tenant`'s job `spec.template_job_id`
        wherever `spec` leaves them unset (an empty task description, no examples, default
        search settings). Raises NotFound, also for another tenant's job."""
        template_id = check_id(spec.template_job_id, "template_job_id", 40)
        template = self._store.tenant_job_spec(template_id, tenant)
        return replace(
            spec,
            task=spec.task if spec.task.description else template.task,
            dataset=spec.dataset if spec.dataset.size else template.dataset,
            search=spec.search if spec.search != SearchSpec() else template.search,
        )

    def get(self, job_id: str, tenant: str = DEFAULT_TENANT) -> Job:
        """`tenant`'s job; another tenant's job is NotFound. Never reads the dataset."""
        return self._store.get(job_id_of(job_id), tenant)

    def dataset(self, job_id: str, tenant: str = DEFAULT_TENANT) -> JobDataset:
        """`tenant`'s job's labelled examples in the splits its search uses: the worker
        searches the stored spec's splits (CreateJob cut a pooled dataset once, seeded).
        Another tenant's job is NotFound."""
        job_id = job_id_of(job_id)
        dataset = self._store.job_spec(job_id, tenant).dataset
        return JobDataset(job_id, dataset.train, dataset.validation, dataset.test)

    def list_jobs(self, query: JobQuery, tenant: str = DEFAULT_TENANT) -> JobPage:
        if query.page_size > _MAX_PAGE_SIZE:
            raise InvalidArgumentError("page_size", f"must be at most {_MAX_PAGE_SIZE}")
        return self._store.list_jobs(query.state, query.page_size, query.page_token, tenant)

    def cancel(self, job_id: str, tenant: str = DEFAULT_TENANT) -> Job:
        return self._store.request_cancel(job_id_of(job_id), tenant)

    def delete(self, job_id: str, tenant: str = DEFAULT_TENANT) -> None:
        """Removes a finished job of `tenant` with its dataset, events and Optuna study.
        Raises FailedPrecondition for a queued or running job."""
        job_id = job_id_of(job_id)
        models = len(self._store.get(job_id, tenant).models)
        self._store.delete(job_id, tenant)
        for index in range(models + 1):
            self._deps.delete_study(study_name(job_id, index))

    async def watch(
        self, request: WatchRequest, tenant: str = DEFAULT_TENANT
    ) -> AsyncIterator[JobEvent]:
        """Yields events after `after_sequence` until the job's terminal state event. Between
        reads it sleeps until the waker says the job may have news."""
        job_id = job_id_of(request.job_id)
        sequence = check_sequence(request.after_sequence, "after_sequence")
        await asyncio.to_thread(self._store.get, job_id, tenant)  # NotFound before streaming
        subscription = self._deps.waker.subscribe(job_id)
        try:
            while True:
                events = await self._watch_read(self._store.events_after, job_id, sequence, 500)
                for event in events:
                    sequence = event.sequence
                    yield event
                    if event.state_changed is not None and event.state_changed.state.terminal:
                        return
                if not events:
                    if await self._watch_read(self._finished, job_id, sequence):
                        return
                    await subscription.wait()
        finally:
            subscription.close()

    def _finished(self, job_id: str, sequence: int) -> bool:
        return self._store.state(job_id) in TERMINAL_STATES and not self._store.events_after(
            job_id, sequence, 1
        )

    async def evaluate(
        self, request: EvaluationRequest, tenant: str = DEFAULT_TENANT
    ) -> Evaluation:
        """Scores a prompt on the request's examples with the request's model, through
        `tenant`'s endpoints and response cache."""
        request = await asyncio.to_thread(validate_evaluation, request, self._limits)
        return await self._evaluate(request, tenant, None)

    async def compare(self, request: ComparisonRequest, tenant: str = DEFAULT_TENANT) -> Comparison:
        """Scores prompt a on model_a and prompt b on model_b, each exactly as EvaluatePrompt
        would (`tenant`'s endpoints and cache), and compares them paired on the examples both
        scored, both in `request.scoring`'s mode (AUTO: label probabilities where the task and
        the endpoint allow them). When one side fails, the other is cancelled."""
        request = await asyncio.to_thread(validate_comparison, request, self._limits)
        sides = [
            asyncio.ensure_future(
                self._evaluate(
                    request.evaluation(side), tenant, None, f"model_{side}", request.scoring
                )
            )
            for side in ("a", "b")
        ]
        try:
            a, b = await asyncio.gather(*sides)
        finally:
            for side in sides:
                side.cancel()
        paired = await asyncio.to_thread(
            compare_evaluations, request.task, request.examples, a, b, request.seed
        )
        return Comparison(a, b, paired)

    async def evaluate_stream(
        self, request: EvaluationRequest, tenant: str = DEFAULT_TENANT, tick_seconds: float = 0.5
    ) -> AsyncIterator[EvaluationProgress | Evaluation]:
        """Progress every `tick_seconds` while scoring, then the evaluation. Closing the
        iterator cancels the scoring."""
        request = await asyncio.to_thread(validate_evaluation, request, self._limits)
        counter: list[_CountingChatModel] = []
        scoring = asyncio.ensure_future(self._evaluate(request, tenant, counter))
        total = len(request.examples)
        per_example = calls_per_example(request.task)
        try:
            while not scoring.done():
                await asyncio.wait({scoring}, timeout=tick_seconds)
                calls = sum(model.calls for model in counter)
                yield EvaluationProgress(done=min(total, calls // per_example), total=total)
            yield scoring.result()
        finally:
            scoring.cancel()

    async def _evaluate(
        self,
        request: EvaluationRequest,
        tenant: str,
        counters: list[_CountingChatModel] | None,
        model_field: str = "model",
        scoring: Scoring = Scoring.AUTO,
    ) -> Evaluation:
        """`model_field` names the request's model in errors; `scoring` is the mode asked for."""
        resolver, task = self._deps.endpoints.for_tenant(tenant), request.task
        endpoint = await asyncio.to_thread(resolver.resolve, request.model, model_field)
        calls = min(evaluation_calls(task, len(request.examples)), _EVALUATE_CALL_CAP)
        cache = self._deps.caches.for_tenant(tenant)
        gateways = GatewayFactory(CallBudget(max_llm_calls=calls), cache, self._deps.registry)
        gateway = self._gateway(gateways, endpoint, counters)
        judge = None
        if task.metric is Metric.LLM_JUDGE:
            judge_endpoint = endpoint
            if task.judge is not None:
                judge_endpoint = await asyncio.to_thread(resolver.resolve, task.judge, "task.judge")
            judge = self._gateway(gateways, judge_endpoint, None)
        before = gateway.usage()
        settings = CallSettings(
            max_tokens=answer_max_tokens(request.prompt, endpoint.max_tokens),
            embedder=self._deps.embedder,
            scorer=build_scorer(task, judge, self._deps.embedder),
            scoring=await self._scoring(gateway, request, scoring),
        )
        evaluation = await evaluate_prompt(
            gateway, task, request.prompt, request.examples, settings
        )
        # the usage includes the scoring probe
        return replace(evaluation, usage=usage_since(before, gateway.usage()))

    async def _scoring(
        self, gateway: LLMGateway, request: EvaluationRequest, asked: Scoring
    ) -> Scoring:
        """How an evaluation scores: under AUTO, label probabilities when the task and the
        endpoint allow them (probed on the first example; the call is reused), else generation;
        LABEL_PROBABILITIES raises `FailedPrecondition` where they cannot be used."""
        prompt, task = request.prompt, request.task
        if asked is Scoring.GENERATION or not request.examples:
            return Scoring.GENERATION
        if asked is Scoring.AUTO and (prompt.format.reasoning or not label_task(task)):
            return Scoring.GENERATION
        probe = await asyncio.to_thread(
            label_request, prompt, request.examples[0].inputs, self._deps.embedder
        )
        return (await resolve_scoring(gateway, task, probe, asked)).scoring

    def _gateway(
        self,
        gateways: GatewayFactory,
        endpoint: ModelEndpoint,
        counters: list[_CountingChatModel] | None,
    ) -> LLMGateway:
        model: ChatModel = self._deps.chat_models(endpoint)
        if counters is not None:
            counted = _CountingChatModel(model)
            counters.append(counted)
            model = counted
        return gateways.gateway(model, endpoint.max_concurrency, EndpointPolicy.of(endpoint))

    def render(self, request: RenderRequest) -> tuple[ChatMessage, ...]:
        """The chat messages of one input. Embeds for kNN prompts: call it off the loop."""
        validate_prompt(request.prompt, self._limits)
        validate_inputs(request.inputs, request.prompt, self._limits)
        return render(request.prompt, request.inputs, self._deps.embedder)
