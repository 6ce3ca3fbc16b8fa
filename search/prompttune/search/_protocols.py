"""The seams where the outside world enters the engine.

Real adapters (the OpenAI client, sentence-transformers, the service database) and the test
fakes implement the same protocols and are passed in through constructors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from prompttune.contract import ChatMessage, SearchEvent


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion call. `sample` distinguishes repeated samples of one prompt.
    `top_logprobs` > 0 asks for that many alternatives (with log probabilities) of the first
    generated token; 0 asks for none."""

    messages: tuple[ChatMessage, ...]
    temperature: float
    max_tokens: int
    sample: int = 0
    top_logprobs: int = 0


@dataclass(frozen=True)
class ChatResponse:
    """A model's answer. `top_logprobs`: the first generated position's alternatives as
    (token text, natural-log probability), when asked for and the endpoint returned them."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    top_logprobs: tuple[tuple[str, float], ...] = ()


class ChatModel(Protocol):
    """A chat model endpoint. Raises `LLMCallFailed` after its own retries are exhausted."""

    @property
    def identity(self) -> str:
        """Stable name of endpoint + model, part of every cache key."""
        ...

    async def complete(self, request: ChatRequest) -> ChatResponse: ...


@runtime_checkable
class MultiSampleChatModel(ChatModel, Protocol):
    """A chat model that returns `n` samples of one prompt in one call (OpenAI's `n`).

    The call's token usage is carried by the first response; the others report 0 tokens.
    """

    async def complete_many(self, request: ChatRequest, n: int) -> list[ChatResponse]: ...


class Embedder(Protocol):
    """Sentence embeddings. Returns an (n, d) float32 array of L2-normalised rows."""

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]: ...


class ResponseCache(Protocol):
    """Content-addressed store of chat responses, shared across jobs. Thread-safe."""

    def get(self, key: str) -> ChatResponse | None: ...

    def put(self, key: str, response: ChatResponse) -> None: ...


class SearchObserver(Protocol):
    """Receives the runner's events and tells it when to stop early (cancellation)."""

    def on_event(self, event: SearchEvent) -> None: ...

    def cancelled(self) -> bool: ...
