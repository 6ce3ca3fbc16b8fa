from __future__ import annotations

import json

import httpx2
import pytest

from prompttune.search import (
    ChatMessage,
    ChatRequest,
    FailedPrecondition,
    LLMCallFailed,
    ModelEndpoint,
    OpenAIChatModel,
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
    assert sleeps == [3.0, 3.0]


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
