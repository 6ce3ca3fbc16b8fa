"""`OpenAIChatModel`: the one real `ChatModel`, for any OpenAI-compatible endpoint (the
embedded llama.cpp server included), through `openai.AsyncOpenAI` with our own retry loop, so
that retries, backoff, deadlines and error mapping live in one place.

Calls never follow redirects (a caller-supplied endpoint must not bounce them to an internal
address); every attempt has a hard deadline, so an endpoint that drips its answer byte by byte
cannot hold a call past `ModelEndpoint.timeout_seconds`; reported usage is sanity-checked.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import structlog

from prompttune.search._errors import FailedPrecondition, LLMCallFailed
from prompttune.search._protocols import ChatModel, ChatRequest, ChatResponse
from prompttune.search._types import AddressPin, ModelEndpoint

if TYPE_CHECKING:
    import httpcore2
    import httpx2
    import openai

log = structlog.get_logger(__name__)

_TRANSIENT_STATUS = frozenset({408, 409, 429})
_MAX_BACKOFF_SECONDS = 30.0
# Token counts above this (per call) are nonsense from the endpoint, not usage.
MAX_REPORTED_TOKENS = 1_000_000
# Bounds of the log probabilities kept from an answer: alternatives, and characters a token.
MAX_TOP_LOGPROBS = 20
MAX_LOGPROB_TOKEN_CHARS = 64


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


def http_client(pin: AddressPin | None = None, **options: Any) -> httpx2.AsyncClient:
    """The HTTP client of every OpenAI client we make: it never follows redirects, and with
    `pin` it connects only to the addresses `pin` returns for a host (see `PinnedBackend`)."""
    import openai

    if pin is None:
        return openai.DefaultAsyncHttpxClient(follow_redirects=False, **options)
    import httpx2

    limits = options.pop("limits", None) or httpx2.Limits(
        max_connections=1000, max_keepalive_connections=100
    )
    transport = pinned_transport(pin, limits)
    return openai.DefaultAsyncHttpxClient(follow_redirects=False, transport=transport, **options)


def pinned_transport(pin: AddressPin, limits: httpx2.Limits) -> httpx2.AsyncHTTPTransport:
    """An HTTP transport whose connections go through `PinnedBackend(pin)`. Environment
    proxies are ignored: a proxy would resolve the host itself."""
    import httpcore2
    import httpx2

    transport = httpx2.AsyncHTTPTransport(limits=limits, trust_env=False)
    transport._pool = httpcore2.AsyncConnectionPool(
        ssl_context=httpx2.create_ssl_context(),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=cast("httpcore2.AsyncNetworkBackend", PinnedBackend(pin)),
    )
    return transport


class PinnedBackend:
    """An httpcore network backend that resolves each host with `pin` (which checks every
    address and raises OSError when one may not be called) and connects to those addresses
    in turn. TLS still verifies the URL's host name: only the TCP target is pinned."""

    def __init__(self, pin: AddressPin) -> None:
        import httpcore2

        self._pin = pin
        self._inner = httpcore2.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> Any:
        import httpcore2

        try:
            addresses = await asyncio.to_thread(self._pin, host, port)
        except OSError as error:
            raise httpcore2.ConnectError(str(error)) from error
        failure: Exception = httpcore2.ConnectError(f"{host} has no address to connect to")
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except httpcore2.ConnectError as error:
                failure = error
        raise failure

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> Any:
        import httpcore2

        raise httpcore2.ConnectError("unix sockets are not called")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


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
            asyncio.AbstractEventLoop, dict[tuple[str, str, float, bool], openai.AsyncOpenAI]
        ] = {}

    def client(self, endpoint: ModelEndpoint, api_key: str) -> openai.AsyncOpenAI:
        """The running loop's client for `endpoint`. Call from inside a coroutine."""
        import httpx2

        loop = asyncio.get_running_loop()
        pinned = endpoint.connect_addresses is not None
        key = (endpoint.base_url, endpoint.api_key_env, endpoint.timeout_seconds, pinned)
        with self._lock:
            for closed in [other for other in self._clients if other.is_closed()]:
                del self._clients[closed]
            clients = self._clients.setdefault(loop, {})
            if key not in clients:
                # Keep every connection alive: with fewer kept than calls in flight, each
                # call beyond the keep-alive cap opens a new TCP connection.
                limits = httpx2.Limits(max_connections=1000, max_keepalive_connections=1000)
                client = http_client(endpoint.connect_addresses, limits=limits)
                clients[key] = _new_client(endpoint, api_key, client)
            return clients[key]

    async def aclose(self) -> None:
        """Close the running loop's clients (call before the loop ends, e.g. at job end)."""
        with self._lock:
            clients = self._clients.pop(asyncio.get_running_loop(), {})
        for client in clients.values():
            await client.close()


def _new_client(
    endpoint: ModelEndpoint, api_key: str, client: httpx2.AsyncClient | None
) -> openai.AsyncOpenAI:
    import openai

    return openai.AsyncOpenAI(
        base_url=endpoint.base_url,
        api_key=api_key,
        max_retries=0,
        timeout=endpoint.timeout_seconds,
        http_client=client or http_client(endpoint.connect_addresses),
    )


class OpenAIChatModel:
    """A `ChatModel` (and `MultiSampleChatModel`) over an OpenAI-compatible endpoint.

    Retries 408/409/429/5xx, timeouts and connection errors `endpoint.max_retries` times with
    jittered exponential backoff (honouring Retry-After), then raises `LLMCallFailed`
    (transient); refused connections to an endpoint that has never answered are retried
    once. Other statuses (4xx, and 3xx: redirects are not followed) raise a
    non-transient `LLMCallFailed` at once. Each attempt ends after `endpoint.timeout_seconds`
    however the endpoint answers. Failed attempts are logged (never the key); the key is read
    from the environment. With a `pool`, connections are shared with every other model of
    the same endpoint on the running loop. Safe for concurrent use from one loop.
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
        self._answered = False  # has the endpoint answered at all (any HTTP status)?

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

        attempt, attempts = 0, self._endpoint.max_retries + 1
        while True:
            try:
                responses = await self._call_once(request, n)
                self._answered = True
                return responses
            except openai.APIStatusError as error:
                self._answered = True
                status = error.status_code
                self._log_failure(f"HTTP {status}", attempt)
                if status not in _TRANSIENT_STATUS and status < 500:
                    raise LLMCallFailed(
                        f"HTTP {status} from {self.identity}",
                        transient=False,
                        status=f"HTTP {status}",
                    ) from error
                last: Exception = error
            except (openai.APITimeoutError, openai.APIConnectionError, TimeoutError) as error:
                self._log_failure(_describe(error), attempt)
                last = error
                if _refused(error) and not self._answered:
                    # Nothing listens and nothing ever did: one retry, not minutes of backoff.
                    attempts = min(attempts, 2)
            except LLMCallFailed as error:
                self._log_failure(error.status, attempt)
                raise
            attempt += 1
            if attempt >= attempts:
                break
            await self._sleep(self._backoff(attempt - 1, last))
        raise LLMCallFailed(
            f"{_describe(last)} from {self.identity} after {attempts} tries",
            status=_describe(last),
        )

    def _log_failure(self, status: str, attempt: int) -> None:
        log.warning("llm.call.failed", endpoint=self.identity, status=status, attempt=attempt + 1)

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
        # A hard deadline per attempt: httpx's timeout is per read, which a drip never hits.
        async with asyncio.timeout(self._endpoint.timeout_seconds):
            # The raw response skips building pydantic models: about 12% less CPU per call.
            raw = await client.chat.completions.with_raw_response.create(
                model=self._endpoint.model,
                messages=[{"role": m.role, "content": m.content} for m in request.messages],  # type: ignore[misc]
                temperature=request.temperature,
                max_tokens=request.max_tokens,
                timeout=self._endpoint.timeout_seconds,
                n=n if n != 1 else openai.omit,
                logprobs=True if request.top_logprobs else openai.omit,
                top_logprobs=request.top_logprobs or openai.omit,
            )
        return _responses(raw.http_response.content, n, self.identity)

    def _pool_client(self) -> openai.AsyncOpenAI:
        assert self._pool is not None
        return self._pool.client(self._endpoint, self._read_api_key(self._endpoint.api_key_env))


def _token_count(value: object, name: str, identity: str) -> int:
    """A reported token count, clamped to [0, MAX_REPORTED_TOKENS]; nonsense is logged as
    such and counts 0 (the gateway then charges its own estimate)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str | None):
        count = -1
    else:
        try:
            count = int(float(value or 0))
        except (ValueError, OverflowError):
            count = -1
    if 0 <= count <= MAX_REPORTED_TOKENS:
        return count
    log.warning("llm.usage.clamped", endpoint=identity, field=name, reported=repr(value)[:40])
    return 0 if count < 0 else MAX_REPORTED_TOKENS


def _logprob_entry(entry: object) -> tuple[str, float] | None:
    """One top-logprob alternative, or None when it is not a string token with a finite
    logprob <= 0. The token text is cut to `MAX_LOGPROB_TOKEN_CHARS`."""
    if not isinstance(entry, dict):
        return None
    token, logprob = entry.get("token"), entry.get("logprob")
    if not isinstance(token, str) or isinstance(logprob, bool):
        return None
    if not isinstance(logprob, int | float) or not math.isfinite(logprob) or logprob > 0:
        return None
    return token[:MAX_LOGPROB_TOKEN_CHARS], float(logprob)


def _top_logprobs(choice: object) -> tuple[tuple[str, float], ...]:
    """The first generated position's alternatives of a choice, at most `MAX_TOP_LOGPROBS`;
    () when the endpoint sent none (it may ignore the request) or sent something else."""
    logprobs = choice.get("logprobs") if isinstance(choice, dict) else None
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(content, list) or not content or not isinstance(content[0], dict):
        return ()
    alternatives = content[0].get("top_logprobs")
    if not isinstance(alternatives, list):
        return ()
    entries = (_logprob_entry(entry) for entry in alternatives[:MAX_TOP_LOGPROBS])
    return tuple(entry for entry in entries if entry is not None)


def _responses(body: bytes, n: int, identity: str = "") -> list[ChatResponse]:
    """The `n` answers of a chat completion body; usage is carried by the first, and the
    first answer's top log probabilities by the first response."""
    try:
        completion = json.loads(body)
        choices = completion.get("choices") or []
        texts = [str((choice.get("message") or {}).get("content") or "") for choice in choices]
        top = _top_logprobs(choices[0]) if choices else ()
        usage = completion.get("usage") or {}
        if not isinstance(usage, dict):
            log.warning("llm.usage.clamped", endpoint=identity, reported=repr(usage)[:40])
            usage = {}
        prompt = _token_count(usage.get("prompt_tokens"), "prompt_tokens", identity)
        answer = _token_count(usage.get("completion_tokens"), "completion_tokens", identity)
    except (ValueError, AttributeError, TypeError) as error:
        raise LLMCallFailed(
            f"malformed chat completion: {error}", transient=False, status="malformed response"
        ) from error
    texts = (texts + [""] * n)[:n]
    first = ChatResponse(texts[0], prompt, answer, top)
    return [first, *(ChatResponse(text, 0, 0) for text in texts[1:])]


def _refused(error: Exception) -> bool:
    """A connection error that is not a timeout: nothing accepted the connection."""
    import openai

    return isinstance(error, openai.APIConnectionError) and not isinstance(
        error, openai.APITimeoutError
    )


def _describe(error: Exception) -> str:
    status = getattr(error, "status_code", None)
    if status is not None:
        return f"HTTP {status}"
    return "timeout" if isinstance(error, TimeoutError) else type(error).__name__


class OpenAIChatModels:
    """The service's `ChatModel` factory: `OpenAIChatModel`s sharing one client pool."""

    def __init__(self) -> None:
        self.pool = OpenAIClientPool()

    def __call__(self, endpoint: ModelEndpoint) -> ChatModel:
        return OpenAIChatModel(endpoint, pool=self.pool)
