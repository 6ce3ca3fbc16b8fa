"""A real in-process gRPC server on 127.0.0.1:0 with fake LLM and embedder adapters."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.fakes import (
    FakeChatModel,
    FakeEmbedder,
    FakeResolver,
    Responder,
    routing_responder,
    sentiment_examples,
)

from prompttune.client import Budget as ClientBudget
from prompttune.client import Client, Dataset, Example, Metric, ModelSpec, SearchSpec, TaskSpec
from prompttune.search import ChatModel, ModelEndpoint
from prompttune.server import Adapters, EmbeddedServer, ServerConfig, WorkerConfig
from prompttune.server._endpoints import EndpointConfig, EndpointEntry

# These tests call caller-supplied endpoints (FAKE_MODEL), which servers refuse by default.
CALLER_ENDPOINTS = EndpointConfig(allow_caller_endpoints=True)


class FakeModels:
    """Hands out one FakeChatModel per endpoint so tests can count calls across jobs."""

    def __init__(self, responder: Responder = routing_responder) -> None:
        self.models: list[FakeChatModel] = []
        self._responder = responder

    def __call__(self, endpoint: ModelEndpoint) -> ChatModel:
        model = FakeChatModel(self._responder, identity=f"{endpoint.base_url}|{endpoint.model}")
        self.models.append(model)
        return model

    @property
    def calls(self) -> int:
        return sum(model.calls for model in self.models)


@pytest.fixture
def fake_models() -> FakeModels:
    return FakeModels()


def start_server(tmp_path: Path, models: FakeModels, workers: int = 1) -> EmbeddedServer:
    config = ServerConfig(
        db_url=f"sqlite:///{tmp_path / 'service.db'}",
        workers=workers,
        worker=WorkerConfig(poll_seconds=0.05, cancel_check_seconds=0.05),
        endpoint_config=CALLER_ENDPOINTS,
    )
    return EmbeddedServer(config, fake_adapters(models))


def fake_adapters(models: FakeModels) -> Adapters:
    """Fake models and embedder; caller hosts such as fake.invalid resolve to 192.0.2.1."""
    return Adapters(chat_models=models, embedder_factory=FakeEmbedder, host_resolver=FakeResolver())


@pytest.fixture
def server(tmp_path: Path, fake_models: FakeModels) -> Iterator[EmbeddedServer]:
    with start_server(tmp_path, fake_models) as embedded:
        yield embedded


@pytest.fixture
def client(server: EmbeddedServer) -> Iterator[Client]:
    with Client(server.target, timeout=10) as sdk:
        yield sdk


FAKE_MODEL = ModelSpec.openai_compatible("http://fake.invalid/v1", "fake-model")
# Under authentication a request must name a registry endpoint: in this registry the entry
# "local" (what ModelSpec.local() names) is the fake endpoint.
FAKE_REGISTRY = EndpointConfig(
    endpoints={"local": EndpointEntry(base_url="http://fake.invalid/v1", models=("fake-model",))}
)
REGISTRY_MODEL = ModelSpec.local()
TASK = TaskSpec(
    description="Decide whether a movie review sentence is positive or negative.",
    metric=Metric.LABEL_CHOICE,
    seed_instruction="Read the text and classify it.",
    labels=("positive", "negative"),
    output_name="sentiment",
)
SMALL_SEARCH = SearchSpec(
    budget=ClientBudget(max_trials=6, max_llm_calls=2000),
    num_instruction_candidates=2,
    max_demos=2,
    minibatch_size=8,
    seed=3,
)


def client_examples(count: int, prefix: str) -> tuple[Example, ...]:
    return tuple(
        Example(inputs=dict(e.inputs), output=e.output, id=e.id)
        for e in sentiment_examples(count, prefix)
    )


def small_dataset() -> Dataset:
    return Dataset.from_splits(
        client_examples(16, "train"), client_examples(24, "val"), client_examples(16, "test")
    )
