"""The service's domain operations behind the RPCs: validate, store, read, evaluate, render.

Long work (searches) never runs here; `create` only validates and queues a job.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from prompttune.search import (
    Budget as CallBudget,
)
from prompttune.search import (
    CallSettings,
    ChatModel,
    DatasetSplits,
    Embedder,
    EndpointPolicy,
    GatewayFactory,
    GatewayRegistry,
    LLMGateway,
    MetricName,
    ModelEndpoint,
    TaskSpec,
    answer_max_tokens,
    build_scorer,
    calls_per_example,
    estimate,
    evaluate_prompt,
    render_messages,
    split_examples,
    validate_splits,
    validate_task,
)
from prompttune.search import (
    InvalidArgument as InvalidArgumentError,
)
from prompttune.server import _convert as convert
from prompttune.server._auth import DEFAULT_TENANT
from prompttune.server._cache import TenantCaches
from prompttune.server._endpoints import EndpointRegistry, model_spec_from_proto
from prompttune.server._limits import Limits
from prompttune.server._store import TERMINAL_STATES, SqlJobStore
from prompttune.v1 import optimizer_pb2 as pb

_MAX_REQUEST_ID = 128
_EVALUATE_CALL_CAP = 20_000


def _job_id(job_id: str) -> str:
    if not job_id:
        raise InvalidArgumentError("job_id", "is required")
    if len(job_id) > 40:
        raise InvalidArgumentError("job_id", "is not a job id")
    return job_id


@dataclass(frozen=True)
class ValidatedJob:
    task: TaskSpec
    splits: DatasetSplits


def validate_create_request(request: pb.CreateJobRequest, limits: Limits) -> ValidatedJob:
    """Checks every field of a CreateJobRequest; raises InvalidArgument naming the field."""
    if request.ByteSize() > limits.max_request_bytes:
        raise InvalidArgumentError(
            "request", f"is {request.ByteSize()} bytes; the limit is {limits.max_request_bytes}"
        )
    if len(request.request_id) > _MAX_REQUEST_ID:
        raise InvalidArgumentError("request_id", f"must be at most {_MAX_REQUEST_ID} characters")
    task = convert.task_from_proto(request.task, limits)
    validate_task(task)
    for message, field in request_model_specs(request):
        model_spec_from_proto(message, field, limits)
    convert.search_config_from_proto(request.search, limits)
    splits, pooled = convert.splits_from_proto(request.dataset, limits)
    if pooled:
        train, validation, test, seed = convert.split_ratio(request.dataset)
        splits = split_examples(splits.train, train, validation, test, seed)
    validate_splits(task, splits)
    return ValidatedJob(task=task, splits=splits)


def request_model_specs(
    request: pb.CreateJobRequest | pb.EvaluatePromptRequest,
) -> list[tuple[pb.ModelSpec, str]]:
    """The model specs a request carries, with their field paths."""
    specs = [(request.model, "model")]
    if request.task.HasField("judge"):
        specs.append((request.task.judge, "task.judge"))
    if isinstance(request, pb.CreateJobRequest) and request.search.HasField("proposer"):
        specs.append((request.search.proposer, "search.proposer"))
    return specs


class JobService:
    """Implements the RPCs' semantics over a JobStore. Thread-safe."""

    def __init__(
        self,
        store: SqlJobStore,
        endpoints: EndpointRegistry,
        caches: TenantCaches,
        chat_models: Callable[[ModelEndpoint], ChatModel],
        limits: Limits,
        *,
        registry: GatewayRegistry | None = None,
        embedder: Embedder | None = None,
    ) -> None:
        self._store = store
        self._endpoints = endpoints
        self._caches = caches
        self._chat_models = chat_models
        self._limits = limits
        self._registry = registry or GatewayRegistry()
        self._embedder = embedder

    def create(
        self, request: pb.CreateJobRequest, tenant: str = DEFAULT_TENANT
    ) -> pb.CreateJobResponse:
        """Validates and queues a job. Blocking (resolves caller endpoint hosts): call it off
        the event loop."""
        validated = validate_create_request(request, self._limits)
        for spec_message, field in request_model_specs(request):
            spec = model_spec_from_proto(spec_message, field, self._limits)
            self._endpoints.check(spec, field, tenant)
        config = convert.search_config_from_proto(request.search, self._limits)
        guess = estimate(validated.task, validated.splits, config)
        message = pb.Estimate(llm_calls=guess.llm_calls, tokens=guess.tokens)
        if request.dry_run:
            return pb.CreateJobResponse(estimate=message)
        job = self._store.create(request, message, tenant)
        return pb.CreateJobResponse(job=job, estimate=job.estimate)

    def get(self, job_id: str, tenant: str = DEFAULT_TENANT) -> pb.Job:
        """`tenant`'s job; another tenant's job is NotFound."""
        return self._store.get(_job_id(job_id), tenant)

    def list(
        self, request: pb.ListJobsRequest, tenant: str = DEFAULT_TENANT
    ) -> pb.ListJobsResponse:
        if request.page_size > 200:
            raise InvalidArgumentError("page_size", "must be at most 200")
        token = request.page_token
        if token and not (token.isascii() and token.isdigit() and len(token) <= 18):
            raise InvalidArgumentError("page_token", "is not a token from ListJobs")
        if request.state not in pb.JobState.values():
            raise InvalidArgumentError("state", f"unknown job state {request.state}")
        jobs, next_token = self._store.list_jobs(
            int(request.state), request.page_size or 50, token, tenant
        )
        return pb.ListJobsResponse(jobs=jobs, next_page_token=next_token)

    def cancel(self, job_id: str, tenant: str = DEFAULT_TENANT) -> pb.Job:
        return self._store.request_cancel(_job_id(job_id), tenant)

    async def watch(
        self,
        job_id: str,
        after_sequence: int,
        tenant: str = DEFAULT_TENANT,
        poll_seconds: float = 0.2,
    ) -> AsyncIterator[pb.JobEvent]:
        """Yields events after `after_sequence` until the job's terminal state event."""
        self._store.get(_job_id(job_id), tenant)  # NotFound before the stream starts
        sequence = after_sequence
        while True:
            events = await asyncio.to_thread(self._store.events_after, job_id, sequence, 500)
            for event in events:
                sequence = event.sequence
                yield event
                if event.HasField("state_changed") and event.state_changed.state in TERMINAL_STATES:
                    return
            if not events:
                job = await asyncio.to_thread(self._store.get, job_id)
                if job.state in TERMINAL_STATES and not self._store.events_after(
                    job_id, sequence, 1
                ):
                    return
                await asyncio.sleep(poll_seconds)

    async def evaluate(
        self, request: pb.EvaluatePromptRequest, tenant: str = DEFAULT_TENANT
    ) -> pb.EvaluatePromptResponse:
        task = convert.task_from_proto(request.task, self._limits)
        validate_task(task)
        prompt = convert.prompt_from_proto(request.prompt, self._limits)
        if request.ByteSize() > self._limits.max_request_bytes:
            raise InvalidArgumentError(
                "request", f"is larger than {self._limits.max_request_bytes} bytes"
            )
        if len(request.examples) > self._limits.max_examples:
            raise InvalidArgumentError(
                "examples",
                f"has {len(request.examples)} examples; the limit is {self._limits.max_examples}",
            )
        examples = convert.examples_from_proto(request.examples, "examples", self._limits)
        if not examples:
            raise InvalidArgumentError("examples", "at least one example is required")
        validate_splits(task, DatasetSplits(train=(), validation=examples))
        resolved = {
            field: await asyncio.to_thread(
                self._endpoints.resolve,
                model_spec_from_proto(message, field, self._limits),
                field,
                tenant,
            )
            for message, field in request_model_specs(request)
        }
        endpoint = resolved["model"]
        calls = min(len(examples) * calls_per_example(task), _EVALUATE_CALL_CAP)
        cache = self._caches.for_tenant(tenant)
        gateways = GatewayFactory(CallBudget(max_llm_calls=calls), cache, self._registry)
        gateway = self._gateway(gateways, endpoint)
        judge = None
        if task.metric is MetricName.LLM_JUDGE:
            judge = self._gateway(gateways, resolved.get("task.judge", endpoint))
        settings = CallSettings(
            max_tokens=answer_max_tokens(prompt, endpoint.max_tokens),
            embedder=self._embedder,
            scorer=build_scorer(task, judge, self._embedder),
        )
        evaluation = await evaluate_prompt(gateway, task, prompt, examples, settings)
        return convert.evaluation_to_proto(evaluation, gateway.usage())

    def _gateway(self, gateways: GatewayFactory, endpoint: ModelEndpoint) -> LLMGateway:
        return gateways.gateway(
            self._chat_models(endpoint), endpoint.max_concurrency, EndpointPolicy.of(endpoint)
        )

    def render(self, request: pb.RenderPromptRequest) -> pb.RenderPromptResponse:
        prompt = convert.prompt_from_proto(request.prompt, self._limits)
        missing = [name for name in prompt.input_fields if name not in request.inputs]
        if missing:
            raise InvalidArgumentError("inputs", f"missing input field(s) {missing}")
        for name, text in request.inputs.items():
            if len(text) > self._limits.max_chars_per_field:
                raise InvalidArgumentError(
                    f"inputs.{name}",
                    f"is longer than {self._limits.max_chars_per_field} characters",
                )
        messages = render_messages(prompt, dict(request.inputs), self._embedder)
        return pb.RenderPromptResponse(
            messages=[pb.ChatMessage(role=m.role, content=m.content) for m in messages]
        )
