"""The LLM gateway: cache -> budget -> concurrency limit -> chat model, with usage accounting.

`OpenAIChatModel` is the one real `ChatModel`: any OpenAI-compatible endpoint (the embedded
llama.cpp server included) through `openai.AsyncOpenAI`, with our own retry loop so that
retries, backoff and error mapping live in one place.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from prompttune.search._budget import Budget, estimate_call_tokens
from prompttune.search._errors import FailedPrecondition, LLMCallFailed
from prompttune.search._protocols import ChatModel, ChatRequest, ChatResponse, ResponseCache
from prompttune.search._types import ModelEndpoint, Usage

if TYPE_CHECKING:
    import httpx2
    import openai

_TRANSIENT_STATUS = frozenset({408, 409, 429})
_MAX_BACKOFF_SECONDS = 30.0


def _retry_after_seconds(error: Exception) -> float | None:
    response = getattr(error, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class OpenAIChatModel:
    """A `ChatModel` over an OpenAI-compatible endpoint.

    Retries 408/409/429/5xx, timeouts and connection errors `endpoint.max_retries` times with
    jittered exponential backoff (honouring Retry-After), then raises `LLMCallFailed`. Other
    4xx errors raise `LLMCallFailed` at once. The API key is read from the environment at
    construction and never logged. Safe for concurrent use from one event loop.
    """

    def __init__(
        self,
        endpoint: ModelEndpoint,
        *,
        http_client: httpx2.AsyncClient | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        import openai

        self._endpoint = endpoint
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._client = openai.AsyncOpenAI(
            base_url=endpoint.base_url,
            api_key=self._api_key(endpoint.api_key_env),
            max_retries=0,
            timeout=endpoint.timeout_seconds,
            http_client=http_client,
        )

    @staticmethod
    def _api_key(env_name: str) -> str:
        if not env_name:
            return "unused"
        if env_name not in os.environ:
            raise FailedPrecondition(f"environment variable {env_name} is not set")
        return os.environ[env_name] or "unused"

    @property
    def identity(self) -> str:
        return f"{self._endpoint.base_url}|{self._endpoint.model}"

    async def complete(self, request: ChatRequest) -> ChatResponse:
        import openai

        attempts = self._endpoint.max_retries + 1
        for attempt in range(attempts):
            try:
                return await self._call_once(request)
            except openai.APIStatusError as error:
                status = error.status_code
                if status not in _TRANSIENT_STATUS and status < 500:
                    raise LLMCallFailed(f"HTTP {status} from {self.identity}") from error
                last: Exception = error
            except (openai.APITimeoutError, openai.APIConnectionError) as error:
                last = error
            if attempt + 1 < attempts:
                await self._sleep(self._backoff(attempt, last))
        raise LLMCallFailed(f"{type(last).__name__} from {self.identity} after {attempts} tries")

    def _backoff(self, attempt: int, error: Exception) -> float:
        retry_after = _retry_after_seconds(error)
        if retry_after is not None:
            return min(retry_after, _MAX_BACKOFF_SECONDS)
        return min(_MAX_BACKOFF_SECONDS, 0.5 * 2.0**attempt) * (0.5 + self._rng.random())

    async def _call_once(self, request: ChatRequest) -> ChatResponse:
        completion: openai.types.chat.ChatCompletion = await self._client.chat.completions.create(
            model=self._endpoint.model,
            messages=[{"role": m.role, "content": m.content} for m in request.messages],  # type: ignore[misc]
            temperature=request.temperature,
            max_tokens=request.max_tokens,
            timeout=self._endpoint.timeout_seconds,
        )
        text = completion.choices[0].message.content if completion.choices else None
        usage = completion.usage
        return ChatResponse(
            text=text or "",
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
        )


def cache_key(identity: str, request: ChatRequest) -> str:
    """sha256 of the canonical JSON of model identity, messages and sampling settings."""
    payload = {
        "identity": identity,
        "messages": [[m.role, m.content] for m in request.messages],
        "temperature": request.temperature,
        "max_tokens": request.max_tokens,
        "sample": request.sample,
    }
    canonical = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass
class _RoleUsage:
    usage: Usage = field(default_factory=Usage)

    def add(self, **counts: int) -> None:
        totals = {name: getattr(self.usage, name) + value for name, value in counts.items()}
        self.usage = replace(self.usage, **totals)


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
        )
    return total


class LLMGateway:
    """One chat model behind the response cache, the job's budget and a concurrency limit.

    `complete` raises `BudgetExceeded` before sending when a cap would be exceeded and
    `LLMCallFailed` when the model gave up; both leave the accounting consistent. Usage is
    tracked per role ("task", "proposer"). Use from one event loop.
    """

    def __init__(
        self,
        model: ChatModel,
        budget: Budget,
        cache: ResponseCache | None = None,
        max_concurrency: int = 4,
        use_cache: bool = True,
    ) -> None:
        self._model = model
        self._budget = budget
        self._cache = cache if use_cache else None
        self._semaphore = asyncio.Semaphore(max(1, max_concurrency))
        self._usage: dict[str, _RoleUsage] = {}

    @property
    def identity(self) -> str:
        return self._model.identity

    def usage(self, role: str | None = None) -> Usage:
        """Usage of one role, or of all roles together when `role` is None."""
        if role is not None:
            return self._usage.get(role, _RoleUsage()).usage
        return add_usage(*(entry.usage for entry in self._usage.values()))

    def usage_by_role(self) -> dict[str, Usage]:
        return {role: entry.usage for role, entry in sorted(self._usage.items())}

    async def complete(self, request: ChatRequest, role: str) -> ChatResponse:
        account = self._usage.setdefault(role, _RoleUsage())
        key = cache_key(self._model.identity, request) if self._cache is not None else ""
        if self._cache is not None:
            cached = self._cache.get(key)
            if cached is not None:
                account.add(cache_hits=1)
                return cached
            account.add(cache_misses=1)
        async with self._semaphore:
            response = await self._send(request, account)
        if self._cache is not None:
            self._cache.put(key, response)
        return response

    async def _send(self, request: ChatRequest, account: _RoleUsage) -> ChatResponse:
        chars = sum(len(message.content) for message in request.messages)
        reservation = self._budget.reserve(estimate_call_tokens(chars, request.max_tokens))
        try:
            response = await self._model.complete(request)
        except LLMCallFailed:
            self._budget.settle(reservation, 0)
            account.add(llm_calls=1, failed_calls=1)
            raise
        except BaseException:
            # Cancelled or crashed mid-call: the request may have been sent, so charge it.
            self._budget.settle(reservation, 0)
            account.add(llm_calls=1)
            raise
        tokens = response.prompt_tokens + response.completion_tokens
        if tokens == 0:  # the endpoint reported no usage: charge an estimate instead
            tokens = estimate_call_tokens(chars + len(response.text), 0)
        self._budget.settle(reservation, tokens)
        account.add(
            llm_calls=1,
            prompt_tokens=response.prompt_tokens,
            completion_tokens=response.completion_tokens,
        )
        return response
