"""A hostile client's tools: a listener that records every HTTP request it receives (with its
Authorization header), a real in-process server on 127.0.0.1:0 with the real OpenAI client,
and raw protobuf requests that can set any field, whatever the SDK would allow."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest

from prompttune.contract import (
    Budget,
    Dataset,
    Example,
    Metric,
    ModelSpec,
    Prompt,
    SearchSpec,
    TaskSpec,
    wire,
)
from prompttune.server import Adapters, EmbeddedServer, ServerConfig, WorkerConfig
from prompttune.server._auth import TokenRegistry
from prompttune.server._endpoints import EndpointConfig
from prompttune.v1 import optimizer_pb2 as pb
from prompttune.v1 import optimizer_pb2_grpc as pb_grpc
from tests.fakes import FakeEmbedder

TOKENS = {"token-alpha": "alpha", "token-beta": "beta"}
# Server environment variables a hostile caller would like to read.
SECRETS = {
    "OPERATOR_API_KEY": "sk-OPERATOR-0b9f3c2a71d4e5f6",
    "PROMPTTUNE_AUTH_TOKENS": "token-alpha=alpha,token-beta=beta",
    "DATABASE_PASSWORD": "pg-PASSWORD-5e8a1c",
}
POSITIVE = ("great", "wonderful", "superb")


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    authorization: str
    body: bytes


@dataclass
class Listener:
    """An HTTP server recording every request. It answers chat completions by keyword, or
    with a redirect to `redirect_to` when set."""

    url: str = ""
    received: list[Received] = field(default_factory=list)
    redirect_to: str = ""

    def authorizations(self) -> set[str]:
        return {item.authorization for item in self.received}

    def completions(self) -> int:
        """Chat completion calls received (pre-flight GETs of the model list excluded)."""
        return sum(item.method == "POST" for item in self.received)


def _handler(listener: Listener) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self._record(body)
            if listener.redirect_to:
                self.send_response(307)
                self.send_header("Location", listener.redirect_to + "/chat/completions")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self._answer(json.loads(body))

        def do_GET(self) -> None:
            self._record(b"")
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _record(self, body: bytes) -> None:
            authorization = self.headers.get("Authorization", "")
            listener.received.append(Received(self.command, self.path, authorization, body))

        def _answer(self, request: dict[str, Any]) -> None:
            text = request["messages"][-1]["content"]
            answer = "positive" if any(word in text for word in POSITIVE) else "negative"
            payload = {
                "id": "listener",
                "object": "chat.completion",
                "created": 0,
                "model": request.get("model", ""),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13},
            }
            data = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def listener_factory() -> Iterator[Any]:
    servers: list[ThreadingHTTPServer] = []

    def start() -> Listener:
        listener = Listener()
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(listener))
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        listener.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
        return listener

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def listener(listener_factory: Any) -> Listener:
    return listener_factory()  # type: ignore[no-any-return]


@pytest.fixture
def server_secrets(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    return SECRETS


@dataclass(frozen=True)
class Hostile:
    """A running server and raw stubs onto it, one per token (None: no token)."""

    server: EmbeddedServer

    def stub(self, token: str | None = None) -> Any:
        channel = grpc.insecure_channel(
            self.server.target, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
        )
        return _Stub(pb_grpc.OptimizerServiceStub(channel), token)


@dataclass(frozen=True)
class _Stub:
    """Calls RPCs with the bearer token; returns the reply or the grpc.RpcError raised."""

    stub: Any
    token: str | None

    def __getattr__(self, rpc: str) -> Any:
        method = getattr(self.stub, rpc)
        metadata = (("authorization", f"Bearer {self.token}"),) if self.token else ()

        def call(request: Any) -> Any:
            try:
                return method(request, metadata=metadata, timeout=30)
            except grpc.RpcError as error:
                return error

        return call


def start_server(
    tmp_path: Path,
    endpoints: EndpointConfig,
    *,
    auth: bool,
    db_url: str = "",
    host_resolver: Any = None,
    **config: Any,
) -> EmbeddedServer:
    """A real server with the real OpenAI-compatible client (only the embedder is fake, and
    with `host_resolver` the DNS)."""
    settings = ServerConfig(
        db_url=db_url or f"sqlite:///{tmp_path / 'hostile.db'}",
        workers=1,
        worker=WorkerConfig(poll_seconds=0.05, cancel_check_seconds=0.05),
        auth=TokenRegistry.from_mapping(TOKENS) if auth else None,
        endpoint_config=endpoints,
    )
    adapters = Adapters(embedder_factory=FakeEmbedder)
    if host_resolver is not None:
        adapters = replace(adapters, host_resolver=host_resolver)
    return EmbeddedServer(replace(settings, **config), adapters)


@pytest.fixture
def hostile_factory(tmp_path: Path) -> Iterator[Any]:
    running: list[EmbeddedServer] = []

    def start(endpoints: EndpointConfig, *, auth: bool, **config: Any) -> Hostile:
        folder = tmp_path / f"server-{len(running)}"
        folder.mkdir()
        server = start_server(folder, endpoints, auth=auth, **config)
        server.__enter__()
        running.append(server)
        return Hostile(server)

    yield start
    for server in running:
        server.__exit__(None, None, None)


# ---- raw requests -------------------------------------------------------------------------

TASK = TaskSpec(
    description="Decide whether a movie review sentence is positive or negative.",
    metric=Metric.LABEL_CHOICE,
    seed_instruction="Classify the review.",
    labels=("positive", "negative"),
    output_name="sentiment",
)
JUDGED_TASK = replace(TASK, metric=Metric.LLM_JUDGE, labels=(), rubric="Is it right?")


def examples(count: int, prefix: str) -> tuple[Example, ...]:
    words = ("great", "dull", "wonderful", "awful")
    return tuple(
        Example(f"{prefix} {index}: a {words[index % 4]} film", "", f"{prefix}-{index}")
        for index in range(count)
    )


def labelled(count: int, prefix: str) -> tuple[Example, ...]:
    return tuple(
        replace(
            e, output="positive" if any(w in e.inputs["input"] for w in POSITIVE) else "negative"
        )
        for e in examples(count, prefix)
    )


def model(**fields: Any) -> pb.ModelSpec:
    return wire.to_message(ModelSpec(**fields))


def create_request(
    task_model: pb.ModelSpec,
    *,
    proposer: pb.ModelSpec | None = None,
    judge: pb.ModelSpec | None = None,
) -> pb.CreateJobRequest:
    task = JUDGED_TASK if judge is not None else TASK
    request = pb.CreateJobRequest(
        task=wire.to_message(task),
        dataset=wire.to_message(
            Dataset.from_splits(labelled(8, "train"), labelled(8, "val"), labelled(4, "test"))
        ),
        model=task_model,
        search=wire.to_message(SearchSpec(budget=Budget(max_trials=2), max_demos=1)),
    )
    if proposer is not None:
        request.search.proposer.CopyFrom(proposer)
    if judge is not None:
        request.task.judge.CopyFrom(judge)
    return request


def evaluate_request(
    task_model: pb.ModelSpec, *, judge: pb.ModelSpec | None = None, count: int = 6
) -> pb.EvaluatePromptRequest:
    task = JUDGED_TASK if judge is not None else TASK
    request = pb.EvaluatePromptRequest(
        task=wire.to_message(task),
        prompt=wire.to_message(Prompt(instruction="Classify the review.")),
        examples=[wire.to_message(e) for e in labelled(count, "eval")],
        model=task_model,
    )
    if judge is not None:
        request.task.judge.CopyFrom(judge)
    return request
