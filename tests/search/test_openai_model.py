from __future__ import annotations

import email.utils
import json
import time

import httpx2
import pytest

from prompttune.contract import ChatMessage
from prompttune.search import (
    ChatRequest,
    FailedPrecondition,
    LLMCallFailed,
    ModelEndpoint,
    OpenAIChatModel,
    OpenAIClientPool,
    cache_key,
)

COMPLETION = {
    "id": "c1",
    "object": "chat.completion",
    "created": 0,
    "model": "m",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Positive"},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13},
}


class ScriptedServer:
    """An httpx2 transport handler answering with scripted status codes."""

    def __init__(self, statuses: list[int], headers: dict[str, str] | None = None) -> None:
        self.statuses = statuses
        self.headers = headers or {}
        self.bodies: list[dict[str, object]] = []
        self.auth: list[str] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.bodies.append(json.loads(request.content))
        self.auth.append(request.headers.get("authorization", ""))
        status = self.statuses.pop(0) if self.statuses else 200
        if status == 200:
            return httpx2.Response(200, json=COMPLETION)
        return httpx2.Response(status, json={"error": {"message": "x"}}, headers=self.headers)


def model(server: ScriptedServer, sleeps: list[float], retries: int = 2) -> OpenAIChatModel:
    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    endpoint = ModelEndpoint("http://llm.test/v1", "m", max_retries=retries)
    client = httpx2.AsyncClient(transport=httpx2.MockTransport(server))
    return OpenAIChatModel(endpoint, http_client=client, sleep=sleep)


REQUEST = ChatRequest((ChatMessage("user", "hi"),), 0.0, 5)


async def test_success_maps_text_usage_and_settings() -> None:
    server, sleeps = ScriptedServer([]), list[float]()
    response = await model(server, sleeps).complete(REQUEST)
    assert (response.text, response.prompt_tokens, response.completion_tokens) == (
        "Positive",
        11,
        2,
    )
    assert server.bodies[0]["max_tokens"] == 5 and server.bodies[0]["temperature"] == 0.0
    assert server.auth[0] == "Bearer unused"


async def test_retries_429_honouring_retry_after() -> None:
    server, sleeps = ScriptedServer([429, 503], {"retry-after": "3"}), list[float]()
    response = await model(server, sleeps).complete(REQUEST)
    assert response.text == "Positive"
    assert len(sleeps) == 2 and all(3.0 <= s <= 3.3 for s in sleeps)  # Retry-After + jitter


async def test_gives_up_after_max_retries() -> None:
    server, sleeps = ScriptedServer([500, 500, 500, 500]), list[float]()
    with pytest.raises(LLMCallFailed):
        await model(server, sleeps, retries=2).complete(REQUEST)
    assert len(server.bodies) == 3 and len(sleeps) == 2


async def test_client_error_fails_immediately() -> None:
    server, sleeps = ScriptedServer([400]), list[float]()
    with pytest.raises(LLMCallFailed, match="400"):
        await model(server, sleeps).complete(REQUEST)
    assert len(server.bodies) == 1 and sleeps == []


def test_api_key_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = ModelEndpoint("http://llm.test/v1", "m", api_key_env="PT_TEST_KEY")
    with pytest.raises(FailedPrecondition):
        OpenAIChatModel(endpoint)
    monkeypatch.setenv("PT_TEST_KEY", "secret")
    chat = OpenAIChatModel(endpoint)
    assert chat.identity == "http://llm.test/v1|m"
    assert "secret" not in repr(vars(chat))


async def test_retry_after_ms_and_http_date() -> None:
    server, sleeps = ScriptedServer([429], {"retry-after-ms": "250"}), list[float]()
    await model(server, sleeps).complete(REQUEST)
    assert 0.25 <= sleeps[0] <= 0.275
    date = email.utils.formatdate(time.time() + 2, usegmt=True)
    server, sleeps = ScriptedServer([503], {"retry-after": date}), list[float]()
    await model(server, sleeps).complete(REQUEST)
    assert 0.5 <= sleeps[0] <= 2.3


async def test_rejected_request_is_not_transient_and_retries_are_transient() -> None:
    with pytest.raises(LLMCallFailed) as rejected:
        await model(ScriptedServer([400]), []).complete(REQUEST)
    assert rejected.value.transient is False
    with pytest.raises(LLMCallFailed, match="HTTP 503") as down:
        await model(ScriptedServer([503] * 5), [], retries=1).complete(REQUEST)
    assert down.value.transient is True


async def test_n_samples_in_one_call() -> None:
    server = ScriptedServer([])
    responses = await model(server, []).complete_many(REQUEST, 3)
    assert server.bodies[0]["n"] == 3
    assert len(responses) == 3 and responses[0].prompt_tokens == 11
    assert all(r.prompt_tokens == 0 for r in responses[1:])


async def test_pool_shares_one_client_per_endpoint_and_loop() -> None:
    pool = OpenAIClientPool()
    endpoint = ModelEndpoint("http://llm.test/v1", "m")
    other = ModelEndpoint("http://other.test/v1", "m")
    assert pool.client(endpoint, "k") is pool.client(endpoint, "k")
    assert pool.client(endpoint, "k") is not pool.client(other, "k")
    chat = OpenAIChatModel(
        ModelEndpoint("http://llm.test/v1", "m", cache_identity="local|m|file"), pool=pool
    )
    assert chat.identity == "local|m|file"
    first = pool.client(endpoint, "k")
    await pool.aclose()
    assert first.is_closed() and pool.client(endpoint, "k") is not first


def test_cache_key_covers_everything_that_changes_the_answer() -> None:
    base = cache_key("e|m", REQUEST)
    variants = [
        cache_key("e|other", REQUEST),
        cache_key("e|m", ChatRequest((ChatMessage("system", "hi"),), 0.0, 5)),
        cache_key("e|m", ChatRequest((ChatMessage("user", "hi!"),), 0.0, 5)),
        cache_key("e|m", ChatRequest(REQUEST.messages, 0.7, 5)),
        cache_key("e|m", ChatRequest(REQUEST.messages, 0.0, 6)),
        cache_key("e|m", ChatRequest(REQUEST.messages, 0.0, 5, sample=1)),
    ]
    assert base == cache_key("e|m", ChatRequest((ChatMessage("user", "hi"),), 0.0, 5))
    assert len({base, *variants}) == 7
