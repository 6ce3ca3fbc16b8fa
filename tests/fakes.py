"""Test fakes implementing the engine's protocols: deterministic, prompt-sensitive, countable."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import ipaddress
import re
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from prompttune.search import (
    ChatRequest,
    ChatResponse,
    DatasetSplits,
    Example,
    LLMCallFailed,
    MetricName,
    SearchEvent,
    TaskSpec,
)

Responder = Callable[[ChatRequest], str]
EventT = TypeVar("EventT")


def unit_hash(*parts: str) -> float:
    """A deterministic number in [0, 1) from strings."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def request_text(request: ChatRequest) -> str:
    return "\n".join(f"{m.role}: {m.content}" for m in request.messages)


class FakeChatModel:
    """A `ChatModel` answering through `responder`; counts calls and can fail on purpose.

    `fail_if(request)` True makes the call raise `LLMCallFailed`, as the real adapter does
    after its retries. `delay` seconds are awaited per call so calls genuinely overlap.
    """

    def __init__(
        self,
        responder: Responder,
        identity: str = "fake|model",
        fail_if: Callable[[ChatRequest], bool] | None = None,
        delay: float = 0.0,
    ) -> None:
        self._responder = responder
        self._identity = identity
        self._fail_if = fail_if
        self._delay = delay
        self.calls = 0
        self.failures = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.requests: list[ChatRequest] = []

    @property
    def identity(self) -> str:
        return self._identity

    async def complete(self, request: ChatRequest) -> ChatResponse:
        self.calls += 1
        self.requests.append(request)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self._delay)
            if self._fail_if is not None and self._fail_if(request):
                self.failures += 1
                raise LLMCallFailed("fake failure")
            text = self._responder(request)
        finally:
            self.in_flight -= 1
        prompt_tokens = sum(len(m.content.split()) for m in request.messages)
        return ChatResponse(text, prompt_tokens, len(text.split()))


POSITIVE_WORDS = ("wonderful", "delightful", "moving", "brilliant", "charming", "superb")
NEGATIVE_WORDS = ("dull", "tedious", "awful", "clumsy", "boring", "painful")
TOPICS = ("plot", "acting", "script", "ending", "score", "pacing", "cast", "dialogue")

SENTIMENT_TASK = TaskSpec(
    description="Decide whether a movie review sentence is positive or negative.",
    seed_instruction="Read the text and classify it.",
    labels=("positive", "negative"),
    metric=MetricName.LABEL_CHOICE,
    output_name="sentiment",
)


def sentiment_examples(count: int, prefix: str = "ex") -> tuple[Example, ...]:
    examples = []
    for index in range(count):
        positive = index % 2 == 0
        words = POSITIVE_WORDS if positive else NEGATIVE_WORDS
        word = words[(index // 2) % len(words)]
        topic = TOPICS[index % len(TOPICS)]
        text = f"the {topic} was {word} {{really}} #{index}"
        label = "positive" if positive else "negative"
        examples.append(Example(f"{prefix}{index:03d}", {"input": text}, label))
    return tuple(examples)


def sentiment_splits(train: int = 24, validation: int = 32, test: int = 16) -> DatasetSplits:
    return DatasetSplits(
        train=sentiment_examples(train, "tr"),
        validation=sentiment_examples(validation, "va"),
        test=sentiment_examples(test, "te"),
    )


def _gold(text: str) -> str | None:
    if any(word in text for word in POSITIVE_WORDS):
        return "positive"
    if any(word in text for word in NEGATIVE_WORDS):
        return "negative"
    return None


def sentiment_responder(request: ChatRequest) -> str:
    """Answers the sentiment task; better with demos, label-naming instructions and a prefix.

    Accuracy rises from about 35% (bare prompt) to about 90% (all three helpers).
    """
    final = request.messages[-1].content
    static = request_text(request)[: -len(final)] + final.rsplit("\n\n", 1)[0]
    gold = _gold(final.rsplit("\n\n", 1)[-1]) or "positive"
    wrong = "negative" if gold == "positive" else "positive"
    has_demos = any(m.role == "assistant" for m in request.messages) or "Examples:" in final
    names_labels = "positive" in static.lower() and "negative" in static.lower()
    has_prefix = final.rstrip().endswith("Sentiment:")
    accuracy = 0.35 + 0.25 * has_demos + 0.2 * names_labels + 0.1 * has_prefix
    draw = unit_hash(request_text(request))
    if draw < accuracy:
        return (f"The sentiment of this review is {gold.capitalize()}.", gold)[int(draw * 100) % 2]
    return ("Hmm, that is hard to say.", f"I think it is {wrong}.", wrong.upper())[
        int(draw * 1000) % 3
    ]


PROPOSALS = (
    'Instruction: "Classify the sentiment of the review as positive or negative."',
    "Sure! Here is an improved instruction:\n\nDecide if the review is positive or negative.",
    "",
    "ok",
    "1. Read the sentence carefully and reply with one word: positive or negative.",
    "{{junk}} ```",
)


def proposer_responder(request: ChatRequest) -> str:
    """A proposer that answers with a mix of usable, decorated and junk proposals."""
    text = request_text(request)
    tip = re.search(r"Tip: (.*)", text)
    index = int(unit_hash(tip.group(1) if tip else text) * len(PROPOSALS))
    return PROPOSALS[index]


DATASET_SUMMARY = (
    "Here is a summary:\n\nShort movie review sentences, each labelled positive or negative. "
    "The label follows the adjective describing the film."
)


def routing_responder(request: ChatRequest) -> str:
    """Proposer meta-prompts go to `proposer_responder`, dataset-summary requests get
    `DATASET_SUMMARY`, everything else goes to the task."""
    if "You write clear instructions" in request.messages[0].content:
        return proposer_responder(request)
    if "You describe datasets" in request.messages[0].content:
        return DATASET_SUMMARY
    return sentiment_responder(request)


class FakeEmbedder:
    """Hashed bag-of-words embeddings (64 dims), L2-normalised; counts texts embedded."""

    def __init__(self, dims: int = 64) -> None:
        self.dims = dims
        self.texts_embedded = 0

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.texts_embedded += len(texts)
        rows = np.zeros((len(texts), self.dims), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                rows[row, int(unit_hash(word) * self.dims)] += 1.0
            if not rows[row].any():
                rows[row, 0] = 1.0
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        normalised: npt.NDArray[np.float32] = (rows / norms).astype(np.float32)
        return normalised


class InMemoryResponseCache:
    """A thread-safe dict-backed `ResponseCache` counting hits and misses."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.entries: dict[str, ChatResponse] = {}
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> ChatResponse | None:
        with self._lock:
            found = self.entries.get(key)
            if found is None:
                self.misses += 1
            else:
                self.hits += 1
            return found

    def put(self, key: str, response: ChatResponse) -> None:
        with self._lock:
            self.entries[key] = response


@dataclass
class RecordingObserver:
    """Records events; `cancel_after_events` > 0 makes it ask for cancellation after that many."""

    events: list[SearchEvent] = field(default_factory=list)
    cancel_after_events: int = 0

    def on_event(self, event: SearchEvent) -> None:
        self.events.append(event)

    def cancelled(self) -> bool:
        return 0 < self.cancel_after_events <= len(self.events)

    def of_type(self, kind: type[EventT]) -> list[EventT]:
        return [event for event in self.events if isinstance(event, kind)]


def fixed_clock(value: float = 0.0) -> Callable[[], float]:
    return lambda: value


def gold_by_id(examples: Sequence[Example]) -> Mapping[str, str]:
    return {example.id: example.output for example in examples}


def load_fake_openai() -> ModuleType:
    """benchmarks/fake_openai.py (the OpenAI-compatible fake HTTP endpoint), loaded once."""
    if "fake_openai" in sys.modules:
        return sys.modules["fake_openai"]
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "fake_openai.py"
    spec = importlib.util.spec_from_file_location("fake_openai", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fake_openai"] = module
    spec.loader.exec_module(module)
    return module


class FakeResolver:
    """A `HostResolver` from a fixed table; names ending in ``.invalid`` resolve to a
    documentation address (192.0.2.1, never routed), unknown names to nothing. Literal
    addresses resolve to themselves."""

    def __init__(self, table: Mapping[str, Sequence[str]] | None = None) -> None:
        self.table = dict(table or {})
        self.lookups: list[str] = []

    def addresses(
        self, host: str, port: int
    ) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
        self.lookups.append(host)
        host = host.strip("[]")
        if host in self.table:
            return tuple(ipaddress.ip_address(a) for a in self.table[host])
        if host.endswith(".invalid"):
            return (ipaddress.ip_address("192.0.2.1"),)
        try:
            return (ipaddress.ip_address(host),)
        except ValueError:
            return ()
