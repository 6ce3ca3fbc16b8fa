"""The LLM gateway: cache -> budget -> rate limits -> concurrency limits -> chat model.

`LLMGateway` puts one job's cache, budget, usage accounting and failure tally in front of a
`ChatModel` (`OpenAIChatModel` is the real one), plus the endpoint's process-wide flow control
from a `GatewayRegistry`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import structlog

from prompttune.contract import Usage
from prompttune.search._budget import CallBudget, Reservation, estimate_call_tokens
from prompttune.search._errors import LLMCallFailed, UpstreamUnavailable
from prompttune.search._failures import FailureTally
from prompttune.search._flow import EndpointControl, EndpointLimits, GatewayRegistry, JobRates
from prompttune.search._protocols import (
    ChatModel,
    ChatRequest,
    ChatResponse,
    MultiSampleChatModel,
    ResponseCache,
)
from prompttune.search._types import ModelEndpoint

log = structlog.get_logger(__name__)

# Chat templates add a few tokens per message; used in the strict upper bound of a call's cost.
_TEMPLATE_TOKENS_PER_MESSAGE = 8
# Answers are cut to this many characters before they are cached, scored or stored.
MAX_ANSWER_CHARS = 4000


def cache_key(identity: str, request: ChatRequest) -> str:
    """sha256 of the canonical JSON of model identity, messages and sampling settings.

    Everything that changes the answer is in it: endpoint and model (`identity`), every
    message's role and text, temperature, the answer cap, the sample index and, when asked
    for, the number of top log probabilities (absent when 0, so older keys stay valid).
    """
    payload = {
        "identity": identity,
        "messages": [[m.role, m.content] for m in request.messages],
        "temperature": request.temperature,
        "max_tokens": request.max_tokens,
        "sample": request.sample,
    }
    if request.top_logprobs:
        payload["top_logprobs"] = request.top_logprobs
    canonical = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def add_usage(*usages: Usage) -> Usage:
    """Field-wise sum of usages."""
    total = Usage()
    for usage in usages:
        total = Usage(
            llm_calls=total.llm_calls + usage.llm_calls,
            prompt_tokens=total.prompt_tokens + usage.prompt_tokens,
            completion_tokens=total.completion_tokens + usage.completion_tokens,
            cache_hits=total.cache_hits + usage.cache_hits,
            cache_misses=total.cache_misses + usage.cache_misses,
            failed_calls=total.failed_calls + usage.failed_calls,
            cost_usd=total.cost_usd + usage.cost_usd,
        )
    return total


def usage_since(before: Usage, after: Usage) -> Usage:
    """Field-wise `after` - `before`: what was spent between two readings of one ledger."""
    return Usage(
        llm_calls=after.llm_calls - before.llm_calls,
        prompt_tokens=after.prompt_tokens - before.prompt_tokens,
        completion_tokens=after.completion_tokens - before.completion_tokens,
        cache_hits=after.cache_hits - before.cache_hits,
        cache_misses=after.cache_misses - before.cache_misses,
        failed_calls=after.failed_calls - before.failed_calls,
        cost_usd=after.cost_usd - before.cost_usd,
    )


class UsageLedger:
    """Usage per role ("task", "proposer", "judge") of one job, shared by its gateways.

    Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._roles: dict[str, Usage] = {}

    def add(self, role: str, usage: Usage) -> None:
        with self._lock:
            self._roles[role] = add_usage(self._roles.get(role, Usage()), usage)

    def role(self, role: str) -> Usage:
        with self._lock:
            return self._roles.get(role, Usage())

    def total(self) -> Usage:
        with self._lock:
            return add_usage(*self._roles.values())

    def by_role(self) -> dict[str, Usage]:
        with self._lock:
            return dict(sorted(self._roles.items()))


@dataclass(frozen=True)
class Pricing:
    """USD per 1,000,000 prompt and completion tokens; zero prices mean free."""

    usd_per_million_prompt_tokens: float = 0.0
    usd_per_million_completion_tokens: float = 0.0

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (
            prompt_tokens * self.usd_per_million_prompt_tokens
            + completion_tokens * self.usd_per_million_completion_tokens
        ) / 1e6

    def upper_bound(self, request: ChatRequest, completion_tokens: int) -> float:
        """A cost no call can exceed: a byte-level tokenizer makes at most one token per byte."""
        if not (self.usd_per_million_prompt_tokens or self.usd_per_million_completion_tokens):
            return 0.0
        prompt = sum(
            len(m.content.encode("utf-8")) + _TEMPLATE_TOKENS_PER_MESSAGE for m in request.messages
        )
        return self.cost(prompt, completion_tokens)


@dataclass(frozen=True)
class EndpointPolicy:
    """How calls to one endpoint are limited (process-wide) and priced."""

    limits: EndpointLimits = field(default_factory=EndpointLimits)
    pricing: Pricing = field(default_factory=Pricing)
    # How messages name the endpoint (a registry name); empty: the model's identity.
    name: str = ""
    # The job's own request and token rates (its model spec's), for its calls only.
    job_limits: EndpointLimits = field(default_factory=EndpointLimits)

    @classmethod
    def of(cls, endpoint: ModelEndpoint) -> EndpointPolicy:
        return cls(
            EndpointLimits(
                max_concurrency=endpoint.shared_max_concurrency,
                requests_per_minute=endpoint.requests_per_minute,
                tokens_per_minute=endpoint.tokens_per_minute,
                max_outage_seconds=endpoint.max_outage_seconds,
            ),
            Pricing(
                endpoint.usd_per_million_prompt_tokens,
                endpoint.usd_per_million_completion_tokens,
            ),
            endpoint.name,
            EndpointLimits(
                requests_per_minute=endpoint.job_requests_per_minute,
                tokens_per_minute=endpoint.job_tokens_per_minute,
            ),
        )


class LLMGateway:
    """One chat model behind the response cache, the job's budget and the flow limits.

    Order of a call: cache lookup (hits cost nothing) -> this job's concurrency limit ->
    budget reservation -> the job's own request/token rates (`policy.job_limits`, in
    `job_rates`, shared by a job's gateways) -> the endpoint's shared request/token rate
    buckets and concurrency limit (from `registry`, or private ones without it) -> the model.
    `complete` raises
    `BudgetExceeded` before sending when a cap would be exceeded, `LLMCallFailed` when the
    model gave up, `EndpointFailing` when the endpoint has answered this job's first calls only
    with errors (see `FailureTally`), and `UpstreamUnavailable` when it has failed every call
    for longer than `policy.limits.max_outage_seconds`; all leave the accounting consistent.
    Answers longer than `MAX_ANSWER_CHARS` are cut before they are cached or returned. Usage
    is recorded per role in `ledger` and failures in `failures` (each shared by a job's
    gateways, or private). Use from one loop.
    """

    def __init__(
        self,
        model: ChatModel,
        budget: CallBudget,
        cache: ResponseCache | None = None,
        max_concurrency: int = 4,
        use_cache: bool = True,
        *,
        policy: EndpointPolicy | None = None,
        registry: GatewayRegistry | None = None,
        ledger: UsageLedger | None = None,
        failures: FailureTally | None = None,
        job_rates: JobRates | None = None,
    ) -> None:
        self._model = model
        self._budget = budget
        self._cache = cache if use_cache else None
        self._semaphore = asyncio.Semaphore(max(1, max_concurrency))
        policy = policy or EndpointPolicy()
        self._pricing = policy.pricing
        registry = registry or GatewayRegistry()
        self._control: EndpointControl = registry.endpoint(model.identity, policy.limits)
        self._ledger = ledger or UsageLedger()
        self._failures = failures or FailureTally()
        self._name = policy.name or model.identity
        self._job_limits = policy.job_limits
        self._job_rates = job_rates or JobRates()

    @property
    def identity(self) -> str:
        return self._model.identity

    @property
    def failures(self) -> FailureTally:
        return self._failures

    def usage(self, role: str | None = None) -> Usage:
        """Usage of one role, or of all roles together when `role` is None."""
        return self._ledger.role(role) if role is not None else self._ledger.total()

    def usage_by_role(self) -> dict[str, Usage]:
        return self._ledger.by_role()

    async def complete(self, request: ChatRequest, role: str) -> ChatResponse:
        cached = self._lookup(request, role)
        if cached is not None:
            return cached
        async with self._semaphore:
            (response,) = await self._send(request, 1, role)
        self._store(request, response)
        return response

    async def complete_samples(
        self, request: ChatRequest, n: int, role: str
    ) -> tuple[ChatResponse, ...]:
        """Samples 0..n-1 of one prompt (`request.sample` is ignored), each cached by index.

        Missing samples are fetched in one call with `n` when the model supports it.
        """
        samples = [replace(request, sample=index) for index in range(n)]
        found = [self._lookup(sample, role) for sample in samples]
        missing = [index for index, response in enumerate(found) if response is None]
        if len(missing) > 1 and isinstance(self._model, MultiSampleChatModel):
            async with self._semaphore:
                fresh: Sequence[ChatResponse] = await self._send(request, len(missing), role)
        else:
            fresh = await asyncio.gather(*(self._send_one(samples[i], role) for i in missing))
        for index, response in zip(missing, fresh, strict=True):
            found[index] = response
            self._store(samples[index], response)
        return tuple(response for response in found if response is not None)

    async def _send_one(self, request: ChatRequest, role: str) -> ChatResponse:
        async with self._semaphore:
            (response,) = await self._send(request, 1, role)
        return response

    def _lookup(self, request: ChatRequest, role: str) -> ChatResponse | None:
        if self._cache is None:
            return None
        cached = self._cache.get(cache_key(self._model.identity, request))
        self._ledger.add(
            role, Usage(cache_hits=int(cached is not None), cache_misses=int(not cached))
        )
        return None if cached is None else _bounded(cached)

    def _store(self, request: ChatRequest, response: ChatResponse) -> None:
        if self._cache is not None:
            self._cache.put(cache_key(self._model.identity, request), response)

    async def _send(self, request: ChatRequest, n: int, role: str) -> list[ChatResponse]:
        self._failures.check(self._name)
        chars = sum(len(message.content) for message in request.messages)
        estimated = estimate_call_tokens(chars, request.max_tokens * n)
        reservation = self._budget.reserve(
            estimated, self._pricing.upper_bound(request, request.max_tokens * n)
        )
        control = self._control
        try:
            wait = self._job_rates.take(self.identity, self._job_limits, estimated)
            if wait > 0:
                await asyncio.sleep(wait)
            await control.admit(estimated)
        except BaseException:
            self._budget.release(reservation)
            raise
        async with control.concurrency.slot():
            responses = await self._call_model(request, n, role, reservation)
        self._settle(reservation, role, responses, chars, estimated)
        return [_bounded(response) for response in responses]

    async def _call_model(
        self, request: ChatRequest, n: int, role: str, reservation: Reservation
    ) -> list[ChatResponse]:
        started = self._control.clock()
        try:
            if n == 1:
                return [await self._model.complete(request)]
            assert isinstance(self._model, MultiSampleChatModel)
            return await self._model.complete_many(request, n)
        except LLMCallFailed as error:
            self._budget.settle(reservation, 0)
            self._ledger.add(role, Usage(llm_calls=1, failed_calls=1))
            self._failures.failed(self._name, error)
            if error.transient:
                self._check_outage(started, error)
            raise
        except BaseException:
            # Cancelled or crashed mid-call: the request may have been sent, so charge it.
            self._budget.settle(reservation, 0, reservation.cost_usd)
            self._ledger.add(role, Usage(llm_calls=1, cost_usd=reservation.cost_usd))
            raise

    def _check_outage(self, started: float, error: LLMCallFailed) -> None:
        failing = self._control.health.record_failure(started)
        limit = self._control.limits.max_outage_seconds
        if limit and failing >= limit:
            raise UpstreamUnavailable(
                f"endpoint {self._name} failed every call for {failing:.1f} s "
                f"(limit {limit:g} s); last error: {error}"
            ) from error

    def _settle(
        self,
        reservation: Reservation,
        role: str,
        responses: list[ChatResponse],
        chars: int,
        estimated: int,
    ) -> None:
        self._control.health.record_success()
        self._failures.succeeded(self._name)
        prompt = sum(r.prompt_tokens for r in responses)
        completion = sum(r.completion_tokens for r in responses)
        tokens, cost = prompt + completion, self._pricing.cost(prompt, completion)
        if tokens == 0:  # the endpoint reported no usage: charge estimates instead
            tokens = estimate_call_tokens(chars + sum(len(r.text) for r in responses), 0)
            cost = reservation.cost_usd
        self._control.tokens.adjust(estimated - tokens)
        self._budget.settle(reservation, tokens, cost)
        self._ledger.add(
            role,
            Usage(llm_calls=1, prompt_tokens=prompt, completion_tokens=completion, cost_usd=cost),
        )


def _bounded(response: ChatResponse) -> ChatResponse:
    if len(response.text) <= MAX_ANSWER_CHARS:
        return response
    log.warning("llm.answer.truncated", chars=len(response.text), kept=MAX_ANSWER_CHARS)
    return replace(response, text=response.text[:MAX_ANSWER_CHARS])


@dataclass(frozen=True)
class GatewayFactory:
    """Builds the gateways of one job: one budget, cache, usage ledger and process registry."""

    budget: CallBudget
    cache: ResponseCache | None
    registry: GatewayRegistry = field(default_factory=GatewayRegistry)
    ledger: UsageLedger = field(default_factory=UsageLedger)
    failures: FailureTally = field(default_factory=FailureTally)

    def gateway(
        self, model: ChatModel, max_concurrency: int, policy: EndpointPolicy | None = None
    ) -> LLMGateway:
        return LLMGateway(
            model,
            self.budget,
            self.cache,
            max_concurrency,
            use_cache=self.cache is not None,
            policy=policy,
            registry=self.registry,
            ledger=self.ledger,
            failures=self.failures,
        )
