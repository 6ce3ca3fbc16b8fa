"""An OpenAI-compatible fake endpoint: a real HTTP/1.1 server on loopback (asyncio streams).

`POST /v1/chat/completions` answers after `latency` seconds with a deterministic answer computed
from the request's messages only (so a run with injected faults can match a fault-free run),
and reports usage figures. Faults are drawn per HTTP request from a seeded generator: a share
of 5xx answers and of 429 answers carrying `Retry-After`. Keep-alive connections are reused.
`GET /stats` returns the request count per status.

Run standalone (prints ``PORT <n>`` once listening):
    python benchmarks/fake_openai.py --latency 0.1 --error-rate 0.2 --rate-limit-rate 0.1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

Messages = list[dict[str, str]]
Responder = Callable[[Messages], str]

POSITIVE_WORDS = ("wonderful", "delightful", "moving", "brilliant", "charming", "superb")
NEGATIVE_WORDS = ("dull", "tedious", "awful", "clumsy", "boring", "painful")
PROPOSALS = (
    "Classify the sentiment of the review as positive or negative.",
    "Decide if the review is positive or negative and answer with that one word.",
    "ok",
    "Read the sentence carefully and reply with one word: positive or negative.",
)


def unit_hash(text: str) -> float:
    """A deterministic number in [0, 1) from a string."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64


def sentiment_responder(messages: Messages) -> str:
    """Answers a movie-review sentiment task better with demos, label names and a cue; answers
    instruction-proposal meta-prompts with one of a few proposals. Pure function of `messages`.
    """
    everything = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
    if messages[0]["content"].startswith("You describe datasets"):
        return "Short movie review sentences, each labelled positive or negative."
    if messages[0]["content"].startswith("You write clear instructions"):
        return PROPOSALS[int(unit_hash(everything) * len(PROPOSALS))]
    final = messages[-1]["content"]
    query = final.rsplit("\n\n", 1)[-1]
    positive = any(word in query for word in POSITIVE_WORDS)
    gold, wrong = ("positive", "negative") if positive else ("negative", "positive")
    static = everything[: -len(query)].lower() if query else everything.lower()
    has_demos = any(m["role"] == "assistant" for m in messages) or "examples:" in static
    names_labels = "positive" in static and "negative" in static
    cue = final.rstrip().lower().endswith("sentiment:")
    accuracy = 0.4 + 0.25 * has_demos + 0.2 * names_labels + 0.1 * cue
    draw = unit_hash(everything)
    if draw < accuracy:
        return f"The sentiment is {gold}." if int(draw * 100) % 2 else gold
    return f"I think it is {wrong}." if int(draw * 1000) % 2 else "Hard to say."


@dataclass(frozen=True)
class FakeConfig:
    """Behaviour of the fake: latency (s), fault shares in [0, 1], usage figures.

    `prompt_tokens` / `completion_tokens` of 0 mean "count whitespace words".
    """

    latency: float = 0.1
    error_rate: float = 0.0
    rate_limit_rate: float = 0.0
    retry_after: float = 0.05
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seed: int = 0


@dataclass
class FakeStats:
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)


_HEADER_END = b"\r\n\r\n"
_CONTENT_LENGTH = re.compile(rb"(?i)content-length:\s*(\d+)")
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 429: "Too Many Requests"}


class FakeOpenAIServer:
    """The fake endpoint. `start()` binds `host:port` (0 = any free port) on the running loop."""

    def __init__(self, config: FakeConfig, responder: Responder = sentiment_responder) -> None:
        self.config = config
        self.stats = FakeStats()
        self._responder = responder
        self._rng = random.Random(config.seed)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self.port = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._server = await asyncio.start_server(self._serve, host, port, backlog=1024)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while True:
                head = await reader.readuntil(_HEADER_END)
                found = _CONTENT_LENGTH.search(head)
                length = int(found[1]) if found else 0
                body = await reader.readexactly(length) if length else b""
                status, payload, headers = await self._answer(head, body)
                writer.write(_response(status, payload, headers))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()

    async def _answer(self, head: bytes, body: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
        if head.startswith(b"GET /stats "):
            statuses = {str(code): count for code, count in self.stats.statuses.items()}
            return 200, {"requests": self.stats.requests, "statuses": statuses}, {}
        self.stats.requests += 1
        draw = self._rng.random()
        await asyncio.sleep(self.config.latency)
        if not head.startswith(b"POST ") or b"/chat/completions" not in head.split(b"\r\n")[0]:
            return self._count(404, {"error": {"message": "not found"}}, {})
        if draw < self.config.error_rate:
            return self._count(503, {"error": {"message": "injected outage"}}, {})
        if draw < self.config.error_rate + self.config.rate_limit_rate:
            headers = {"retry-after": f"{self.config.retry_after:g}"}
            return self._count(429, {"error": {"message": "injected rate limit"}}, headers)
        try:
            request = json.loads(body)
        except ValueError:
            return self._count(400, {"error": {"message": "bad json"}}, {})
        return self._count(200, self._completion(request), {})

    def _count(
        self, status: int, payload: dict[str, Any], headers: dict[str, str]
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        self.stats.statuses[status] += 1
        return status, payload, headers

    def _completion(self, request: dict[str, Any]) -> dict[str, Any]:
        messages: Messages = request["messages"]
        n = int(request.get("n") or 1)
        text = self._responder(messages)
        texts = [text] + [f"{text} ({index})" for index in range(1, n)]
        prompt = self.config.prompt_tokens or sum(len(m["content"].split()) for m in messages)
        completion = self.config.completion_tokens or sum(len(t.split()) for t in texts)
        return {
            "id": "fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.get("model", "fake"),
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": t},
                    "finish_reason": "stop",
                }
                for i, t in enumerate(texts)
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }


def _response(status: int, payload: dict[str, Any], headers: dict[str, str]) -> bytes:
    body = json.dumps(payload).encode()
    lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: keep-alive",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@contextlib.contextmanager
def serve_in_thread(
    config: FakeConfig, responder: Responder = sentiment_responder
) -> Iterator[FakeOpenAIServer]:
    """Run a fake on 127.0.0.1 (free port) in a daemon thread with its own loop."""
    server = FakeOpenAIServer(config, responder)
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


async def _main(args: argparse.Namespace) -> None:
    config = FakeConfig(
        latency=args.latency,
        error_rate=args.error_rate,
        rate_limit_rate=args.rate_limit_rate,
        retry_after=args.retry_after,
        seed=args.seed,
    )
    server = FakeOpenAIServer(config)
    port = await server.start(port=args.port)
    print(f"PORT {port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--rate-limit-rate", type=float, default=0.0)
    parser.add_argument("--retry-after", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    asyncio.run(_main(parser.parse_args()))
