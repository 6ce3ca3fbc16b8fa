"""Test fakes implementing the engine's protocols: deterministic, prompt-sensitive, countable."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import importlib.util
import ipaddress
import json
import math
import re
import socket
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from prompttune.contract import (
    Budget,
    Example,
    Metric,
    PromptScores,
    SearchEvent,
    SearchSpec,
    TaskSpec,
)
from prompttune.search import ChatRequest, ChatResponse, DatasetSplits, LLMCallFailed

Responder = Callable[[ChatRequest], str]
LogprobResponder = Callable[[ChatRequest], tuple[tuple[str, float], ...]]
EventT = TypeVar("EventT")


def unit_hash(*parts: str) -> float:
    """A deterministic number in [0, 1) from strings."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def request_text(request: ChatRequest) -> str:
    return "\n".join(f"{m.role}: {m.content}" for m in request.messages)


class FakeChatModel:
    """A `ChatModel` answering through `responder`; counts calls and can fail on purpose.

    `fail_if(request)` True makes the call raise `LLMCallFailed` (with `status`), as the real
    adapter does after its retries. `hang_if(request)` True makes the call hang until it is
    cancelled (counted in `hung` and `cancelled`). `delay` seconds are awaited per call so
    calls genuinely overlap. `logprobs(request)` gives the top log probabilities returned
    when a request asks for them (without it the model, like many endpoints, returns none).
    """

    def __init__(
        self,
        responder: Responder,
        identity: str = "fake|model",
        fail_if: Callable[[ChatRequest], bool] | None = None,
        delay: float = 0.0,
        *,
        hang_if: Callable[[ChatRequest], bool] | None = None,
        status: str = "",
        logprobs: LogprobResponder | None = None,
    ) -> None:
        self._responder = responder
        self._logprobs = logprobs
        self._identity = identity
        self._fail_if = fail_if
        self._hang_if = hang_if
        self._status = status
        self._delay = delay
        self.calls = 0
        self.failures = 0
        self.hung = 0
        self.cancelled = 0
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
            if self._hang_if is not None and self._hang_if(request):
                await self._hang()
            if self._fail_if is not None and self._fail_if(request):
                self.failures += 1
                raise LLMCallFailed("fake failure", status=self._status)
            text = self._responder(request)
        finally:
            self.in_flight -= 1
        prompt_tokens = sum(len(m.content.split()) for m in request.messages)
        top = self._logprobs(request) if self._logprobs and request.top_logprobs else ()
        return ChatResponse(text, prompt_tokens, len(text.split()), top[: request.top_logprobs])

    async def _hang(self) -> None:
        self.hung += 1
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


POSITIVE_WORDS = ("wonderful", "delightful", "moving", "brilliant", "charming", "superb")
NEGATIVE_WORDS = ("dull", "tedious", "awful", "clumsy", "boring", "painful")
TOPICS = ("plot", "acting", "script", "ending", "score", "pacing", "cast", "dialogue")

SENTIMENT_TASK = TaskSpec(
    description="Decide whether a movie review sentence is positive or negative.",
    seed_instruction="Read the text and classify it.",
    labels=("positive", "negative"),
    metric=Metric.LABEL_CHOICE,
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
        examples.append(Example({"input": text}, label, id=f"{prefix}{index:03d}"))
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


def demo_following_responder(request: ChatRequest) -> str:
    """Answers like the prompt's demonstrations: the label of a demo (chat turns or an inline
    "Examples:" block) whose text has the input's sentiment; "positive" without one. So a
    prompt whose demos are labelled wrongly gets wrong answers."""
    final = request.messages[-1].content
    wanted = _gold(final.rsplit("\n\n", 1)[-1])
    pairs = [
        (question.content, answer.content.strip())
        for question, answer in zip(request.messages, request.messages[1:], strict=False)
        if question.role == "user" and answer.role == "assistant"
    ]
    inline = re.findall(r"Input: (.*)\n\w[\w ]*: (.*)", final)
    for text, label in (*pairs, *inline):
        if label and wanted is not None and _gold(text) == wanted:
            return label
    return "positive"


PROPOSALS = (
    'Instruction: "Classify the sentiment of the review as positive or negative."',
    "Sure! Here is an improved instruction:\n\nDecide if the review is positive or negative.",
    "",
    "ok",
    "1. Read the sentence carefully and reply with one word: positive or negative.",
    "{{junk}} ```",
)


def biased_sentiment_logprobs(request: ChatRequest) -> tuple[tuple[str, float], ...]:
    """First-token log probabilities of a model biased towards "positive": its raw argmax is
    always positive (P = 0.8 on positive inputs, 0.6 on negative ones, 0.7 on content-free
    ones), so uncalibrated accuracy is the share of positive examples and calibration on the
    content-free inputs makes every answer right. Inputs whose text is "no label" get tokens
    that name no label."""
    final = request.messages[-1].content
    text = final.rsplit("\n\n", 1)[-1]
    if "no label" in text:
        return (("Hmm", math.log(0.6)), ("The", math.log(0.3)))
    positive = {"positive": 0.8, "negative": 0.6}.get(_gold(text) or "", 0.7)
    return (
        ("Positive", math.log(positive * 0.9)),
        (" neg", math.log((1 - positive) * 0.9)),
        ("The", math.log(0.1)),
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


def gold_responder(request: ChatRequest) -> str:
    """Like `routing_responder`, but every task answer is the correct label."""
    if "You write clear instructions" in request.messages[0].content:
        return proposer_responder(request)
    if "You describe datasets" in request.messages[0].content:
        return DATASET_SUMMARY
    return _gold(request.messages[-1].content.rsplit("\n\n", 1)[-1]) or "positive"


def flat_responder(request: ChatRequest) -> str:
    """Like `routing_responder`, but every task answer is "positive" (half right)."""
    if "You write clear instructions" in request.messages[0].content:
        return proposer_responder(request)
    if "You describe datasets" in request.messages[0].content:
        return DATASET_SUMMARY
    return "positive"


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


BUDGET_CAPS = frozenset(field.name for field in dataclasses.fields(Budget))


def search_spec(base: SearchSpec | None = None, **changes: Any) -> SearchSpec:
    """`base` (default `SearchSpec()`) with `changes`; budget caps such as ``max_trials`` or
    ``max_llm_calls`` go into its `Budget`."""
    base = base or SearchSpec()
    caps = {name: value for name, value in changes.items() if name in BUDGET_CAPS}
    rest = {name: value for name, value in changes.items() if name not in BUDGET_CAPS}
    return dataclasses.replace(base, budget=dataclasses.replace(base.budget, **caps), **rest)


def fixed_clock(value: float = 0.0) -> Callable[[], float]:
    return lambda: value


def examples_scored(scores: PromptScores) -> int:
    """Validation examples a final score covers: the search's part and the selection part."""
    return scores.validation.examples + (scores.selection.examples if scores.selection else 0)


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


@dataclass(frozen=True)
class Reply:
    """One HTTP answer of a `ScriptedEndpoint`. With `drip_seconds` the body is sent one
    byte at a time, pausing that long before each byte."""

    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    drip_seconds: float = 0.0


def completion_body(text: str = "positive", usage: object = None) -> bytes:
    """A chat completion; `usage` is sent as given (None: a plausible one)."""
    reported = usage if usage is not None else {"prompt_tokens": 5, "completion_tokens": 1}
    choice = {"index": 0, "message": {"role": "assistant", "content": text}}
    return json.dumps(
        {"id": "x", "object": "chat.completion", "choices": [choice], "usage": reported}
    ).encode()


class ScriptedEndpoint:
    """An HTTP endpoint on 127.0.0.1 (port 0) answering every request with `reply()`:
    errors, malformed bodies, redirects, slow drips. Counts requests. Use as
    ``async with ScriptedEndpoint(...) as endpoint`` inside the test's event loop."""

    def __init__(self, reply: Callable[[], Reply]) -> None:
        self._reply = reply
        self.requests = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def __aenter__(self) -> ScriptedEndpoint:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for handler in list(self._handlers):
            handler.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length:\s*(\d+)", head)
                await reader.readexactly(int(length.group(1)) if length else 0)
                self.requests += 1
                await self._answer(writer, self._reply())
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()

    @staticmethod
    async def _answer(writer: asyncio.StreamWriter, reply: Reply) -> None:
        headers = {"Content-Type": "application/json", "Content-Length": str(len(reply.body))}
        headers.update(reply.headers)
        lines = [f"HTTP/1.1 {reply.status} Status"] + [f"{k}: {v}" for k, v in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        if not reply.drip_seconds:
            writer.write(reply.body)
        for byte in reply.body if reply.drip_seconds else b"":
            await writer.drain()
            await asyncio.sleep(reply.drip_seconds)
            writer.write(bytes([byte]))
        await writer.drain()


def closed_port() -> int:
    """A local port nothing listens on (connections are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


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


# ---- an imbalanced label task: SMS spam (about 13% spam) --------------------------------

SMS_SPAM = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "sms_spam"
SPAM_TASK = TaskSpec(
    description="Decide whether an SMS message is spam or ham (a normal message).",
    labels=("ham", "spam"),
    metric=Metric.LABEL_CHOICE,
    output_name="label",
)


def sms_spam_examples(split: str, count: int) -> tuple[Example, ...]:
    """The first `count` examples of an SMS spam split ("train", "dev" or "test")."""
    lines = (SMS_SPAM / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()[:count]
    rows = [json.loads(line) for line in lines]
    return tuple(Example(row["input"], row["output"], id=row["id"]) for row in rows)


@dataclass(frozen=True)
class SpamHabits:
    """How often the fake spam model answers right, by what its prompt shows it."""

    spam_recall: float
    ham_recall: float


# No demos: it guesses. Fewer than two spam demos: it hardly dares to say spam (high mean on
# an imbalanced task, poor spam recall). Two or more: it catches spam but flags some ham.
GUESSING = SpamHabits(0.5, 0.5)
MAJORITY_BIASED = SpamHabits(0.1, 1.0)
BALANCED = SpamHabits(0.9, 0.8)


def spam_habits(request: ChatRequest) -> SpamHabits:
    """The behaviour a prompt elicits: demos are assistant turns or inline "Label: x" lines."""
    final = request.messages[-1].content
    answers = [m.content.strip() for m in request.messages[:-1] if m.role == "assistant"]
    answers += re.findall(r"^Label: (\w+)$", final, re.MULTILINE)
    if not answers:
        return GUESSING
    return BALANCED if answers.count("spam") >= 2 else MAJORITY_BIASED


def spam_responder(gold: Mapping[str, str]) -> Responder:
    """A deterministic task model for `SPAM_TASK` whose answers follow `spam_habits`; `gold`
    maps each message text it may see to its label."""
    texts = sorted(gold, key=len, reverse=True)  # the longest text found is the input

    def respond(request: ChatRequest) -> str:
        final = request.messages[-1].content
        # the input follows the last blank line (inline demos come before it)
        text = next((t for t in texts if t in final.rsplit("\n\n", 1)[-1]), None)
        text = text or next(t for t in texts if t in final)
        habits = spam_habits(request)
        recall = habits.spam_recall if gold[text] == "spam" else habits.ham_recall
        right = unit_hash(text, str(habits)) < recall
        other = "ham" if gold[text] == "spam" else "spam"
        return gold[text] if right else other

    return respond
