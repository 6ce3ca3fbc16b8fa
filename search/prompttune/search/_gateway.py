"""The LLM gateway: cache -> budget -> rate limits -> concurrency limits -> chat model.

`OpenAIChatModel` is the one real `ChatModel`: any OpenAI-compatible endpoint (the embedded
llama.cpp server included) through `openai.AsyncOpenAI`, with our own retry loop so that
retries, backoff and error mapping live in one place. `LLMGateway` puts one job's cache,
budget and usage accounting in front of it, plus the endpoint's process-wide flow control
from a `GatewayRegistry`.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from prompttune.contract import Usage
from prompttune.search._budget import CallBudget, Reservation, estimate_call_tokens
from prompttune.search._errors import FailedPrecondition, LLMCallFailed, UpstreamUnavailable
from prompttune.search._flow import EndpointControl, EndpointLimits, GatewayRegistry
from prompttune.search._protocols import (
    ChatModel,
    ChatRequest,
    ChatResponse,
    MultiSampleChatModel,
    ResponseCache,
)
from prompttune.search._types import ModelEndpoint

if TYPE_CHECKING:
    import httpx2
    import openai

_TRANSIENT_STATUS = frozenset({408, 409, 429})
_MAX_BACKOFF_SECONDS = 30.0
# Chat templates add a few tokens per message; used in the strict upper bound of a call's cost.
_TEMPLATE_TOKENS_PER_MESSAGE = 8


def _retry_after_seconds(error: Exception) -> float | None:
    """Seconds from `retry-after-ms`, `retry-after` (seconds or HTTP date), or None."""
    response = getattr(error, "response", None)
    if response is None:
        return None
    headers = response.headers
    try:
        if headers.get("retry-after-ms") is not None:
            return max(0.0, float(headers["retry-after-ms"]) / 1000.0)
        value = headers.get("retry-after")
        if value is None:
            return None
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, when.timestamp() - time.time()) if when is not None else None


class OpenAIClientPool:
    """One `AsyncOpenAI` client, i.e. one HTTP connection pool, per endpoint and event loop.

    httpx pools are bound to the loop that opened them, and every job runs its own loop; so
    clients are keyed by the running loop. Clients of closed loops are dropped on the next
    lookup (their connections died with the loop); `aclose` closes a loop's clients cleanly.
    Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: dict[
            asyncio.AbstractEventLoop, dict[tuple[str, str, float], openai.AsyncOpenAI]
        ] = {}

    def client(self, endpoint: ModelEndpoint, api_key: str) -> openai.AsyncOpenAI:
        """The running loop's client for `endpoint`. Call from inside a coroutine."""
        import httpx2
        import openai

        loop = asyncio.get_running_loop()
        key = (endpoint.base_url, endpoint.api_key_env, endpoint.timeout_seconds)
        with self._lock:
            for closed in [other for other in self._clients if other.is_closed()]:
                del self._clients[closed]
            clients = self._clients.setdefault(loop, {})
            if key not in clients:
                # Keep every connection alive: with fewer kept than calls in flight, each
                # call beyond the keep-alive cap opens a new TCP connection.
                limits = httpx2.Limits(max_connections=1000, max_keepalive_connections=1000)
                http = openai.DefaultAsyncHttpxClient(limits=limits)
                clients[key] = _new_client(endpoint, api_key, http)
            return clients[key]

    async def aclose(self) -> None:
        """Close the running loop's clients (call before the loop ends, e.g. at job end)."""
        with self._lock:
            clients = self._clients.pop(asyncio.get_running_loop(), {})
        for client in clients.values():
            await client.close()


def _new_client(
    endpoint: ModelEndpoint, api_key: str, http_client: httpx2.AsyncClient | None
) -> openai.AsyncOpenAI:
    import openai

    return openai.AsyncOpenAI(
        base_url=endpoint.base_url,
        api_key=api_key,
        max_retries=0,
        timeout=endpoint.timeout_seconds,
        http_client=http_client,
    )


class OpenAIChatModel:
    """A `ChatModel` (and `MultiSampleChatModel`) over an OpenAI-compatible endpoint.

    Retries 408/409/429/5xx, timeouts and connection errors `endpoint.max_retries` times with
    jittered exponential backoff (honouring Retry-After), then raises `LLMCallFailed`
    (transient). Other 4xx errors raise a non-transient `LLMCallFailed` at once. Each attempt
    is bounded by `endpoint.timeout_seconds`. The API key is read from the environment at
    construction and never logged. With a `pool`, connections are shared with every other
    model of the same endpoint on the running loop. Safe for concurrent use from one loop.
    """

    def __init__(
        self,
        endpoint: ModelEndpoint,
        *,
        http_client: httpx2.AsyncClient | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        pool: OpenAIClientPool | None = None,
    ) -> None:
        self._endpoint = endpoint
        self._sleep = sleep
        self._rng = rng or random.Random()
        api_key = self._read_api_key(endpoint.api_key_env)
        self._pool = pool
        self._client = None if pool is not None else _new_client(endpoint, api_key, http_client)

    @staticmethod
    def _read_api_key(env_name: str) -> str:
        if not env_name:
            return "unused"
        if env_name not in os.environ:
            raise FailedPrecondition(f"environment variable {env_name} is not set")
        return os.environ[env_name] or "unused"

    @property
    def identity(self) -> str:
        endpoint = self._endpoint
        return endpoint.cache_identity or f"{endpoint.base_url}|{endpoint.model}"

    async def complete(self, request: ChatRequest) -> ChatResponse:
        return (await self.complete_many(request, 1))[0]

    async def complete_many(self, request: ChatRequest, n: int) -> list[ChatResponse]:
        import openai

        attempts = self._endpoint.max_retries + 1
        for attempt in range(attempts):
            try:
                return await self._call_once(request, n)
            except openai.APIStatusError as error:
                status = error.status_code
                if status not in _TRANSIENT_STATUS and status < 500:
                    raise LLMCallFailed(
                        f"HTTP {status} from {self.identity}", transient=False
                    ) from error
                last: Exception = error
            except (openai.APITimeoutError, openai.APIConnectionError) as error:
                last = error
            if attempt + 1 < attempts:
                await self._sleep(self._backoff(attempt, last))
        raise LLMCallFailed(f"{_describe(last)} from {self.identity} after {attempts} tries")

    def _backoff(self, attempt: int, error: Exception) -> float:
        retry_after = _retry_after_seconds(error)
        if retry_after is not None:
            # A little jitter on top so that calls told the same moment do not return together.
            return min(retry_after * (1.0 + 0.1 * self._rng.random()), _MAX_BACKOFF_SECONDS)
        base = self._endpoint.retry_backoff_seconds * 2.0**attempt
        return min(_MAX_BACKOFF_SECONDS, base) * (0.5 + self._rng.random())

    async def _call_once(self, request: ChatRequest, n: int) -> list[ChatResponse]:
        import openai

        client = self._client or self._pool_client()
        # The raw response skips building pydantic models: about 12% less CPU per call.
        raw = await client.chat.completions.with_raw_response.create(
            model=self._endpoint.model,
            messages=[{"role": m.role, "content": m.content} for m in request.messages],  # type: ignore[misc]
            temperature=request.temperature,
            max_tokens=request.max_tokens,
            timeout=self._endpoint.timeout_seconds,
            n=n if n != 1 else openai.omit,
        )
        return _responses(raw.http_response.content, n)

    def _pool_client(self) -> openai.AsyncOpenAI:
        assert self._pool is not None
        return self._pool.client(self._endpoint, self._read_api_key(self._endpoint.api_key_env))


def _responses(body: bytes, n: int) -> list[ChatResponse]:
    """The `n` answers of a chat completion body; usage is carried by the first."""
    try:
        completion = json.loads(body)
        choices = completion.get("choices") or []
        texts = [str((choice.get("message") or {}).get("content") or "") for choice in choices]
        usage = completion.get("usage") or {}
        prompt, answer = (
            int(usage.get("prompt_tokens") or 0),
            int(usage.get("completion_tokens") or 0),
        )
    except (ValueError, AttributeError, TypeError) as error:
        raise LLMCallFailed(f"malformed chat completion: {error}", transient=False) from error
    texts = (texts + [""] * n)[:n]
    first = ChatResponse(texts[0], prompt, answer)
    return [first, *(ChatResponse(text, 0, 0) for text in texts[1:])]


def _describe(error: Exception) -> str:
    status = getattr(error, "status_code", None)
    return f"HTTP {status}" if status is not None else type(error).__name__


class OpenAIChatModels:
    """The service's `ChatModel` factory: `OpenAIChatModel`s sharing one client pool."""

    def __init__(self) -> None:
        self.pool = OpenAIClientPool()

    def __call__(self, endpoint: ModelEndpoint) -> ChatModel:
        return OpenAIChatModel(endpoint, pool=self.pool)


def cache_key(identity: str, request: ChatRequest) -> str:
    """sha256 of the canonical JSON of model identity, messages and sampling settings.

    Everything that changes the answer is in it: endpoint and model (`identity`), every
    message's role and text, temperature, the answer cap and the sample index.
    """
    payload = {
        "identity": identity,
        "messages": [[m.role, m.content] for m in request.messages],
        "temperature": request.temperature,
        "max_tokens": request.max_tokens,
        "sample": request.sample,
    }
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
        )


class LLMGateway:
    """One chat model behind the response cache, the job's budget and the flow limits.

    Order of a call: cache lookup (hits cost nothing) -> this job's concurrency limit ->
    budget reservation -> the endpoint's shared request/token rate buckets and concurrency
    limit (from `registry`, or private ones without it) -> the model. `complete` raises
    `BudgetExceeded` before sending when a cap would be exceeded, `LLMCallFailed` when the
    model gave up, and `UpstreamUnavailable` when the endpoint has failed every call for longer
    than `policy.limits.max_outage_seconds`; all leave the accounting consistent. Usage is
    recorded per role in `ledger` (shared by a job's gateways, or private). Use from one loop.
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

    @property
    def identity(self) -> str:
        return self._model.identity

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
        return cached

    def _store(self, request: ChatRequest, response: ChatResponse) -> None:
        if self._cache is not None:
            self._cache.put(cache_key(self._model.identity, request), response)

    async def _send(self, request: ChatRequest, n: int, role: str) -> list[ChatResponse]:
        chars = sum(len(message.content) for message in request.messages)
        estimated = estimate_call_tokens(chars, request.max_tokens * n)
        reservation = self._budget.reserve(
            estimated, self._pricing.upper_bound(request, request.max_tokens * n)
        )
        control = self._control
        try:
            await control.admit(estimated)
        except BaseException:
            self._budget.release(reservation)
            raise
        async with control.concurrency.slot():
            responses = await self._call_model(request, n, role, reservation)
        self._settle(reservation, role, responses, chars, estimated)
        return responses

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
                f"endpoint {self.identity} failed every call for {failing:.1f} s "
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


@dataclass(frozen=True)
class GatewayFactory:
    """Builds the gateways of one job: one budget, cache, usage ledger and process registry."""

    budget: CallBudget
    cache: ResponseCache | None
    registry: GatewayRegistry = field(default_factory=GatewayRegistry)
    ledger: UsageLedger = field(default_factory=UsageLedger)

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
        )
