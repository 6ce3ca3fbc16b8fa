"""Label-probability scoring through the service: EvaluatePrompt applies a prompt's
calibration, RenderPrompt returns it, the response cache keeps log probabilities, and
search.scoring is validated."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from tests.fakes import FakeChatModel, biased_sentiment_logprobs, routing_responder
from tests.server.conftest import (
    FAKE_MODEL,
    SMALL_SEARCH,
    TASK,
    FakeModels,
    client_examples,
    small_dataset,
    start_server,
)

from prompttune.client import (
    Calibration,
    Client,
    InvalidArgumentError,
    Prompt,
    PromptFormat,
    Scoring,
    TaskSpec,
)
from prompttune.contract import wire
from prompttune.search import ChatModel, ChatResponse, ModelEndpoint
from prompttune.server import EmbeddedServer
from prompttune.server._cache import SqlResponseCache
from prompttune.server._db import create_db_engine
from prompttune.v1 import optimizer_pb2 as pb
from prompttune.v1 import optimizer_pb2_grpc as pb_grpc


class LogprobModels(FakeModels):
    """Fake endpoints that return the biased model's first-token log probabilities."""

    def __call__(self, endpoint: ModelEndpoint) -> ChatModel:
        model = FakeChatModel(
            routing_responder,
            identity=f"{endpoint.base_url}|{endpoint.model}",
            logprobs=biased_sentiment_logprobs,
        )
        self.models.append(model)
        return model


@pytest.fixture
def logprob_server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    with start_server(tmp_path, LogprobModels()) as server:
        yield server


@pytest.fixture
def logprob_client(logprob_server: EmbeddedServer) -> Iterator[Client]:
    with Client(logprob_server.target, timeout=10) as client:
        yield client


PROMPT = Prompt(
    instruction="Classify the sentiment as positive or negative.",
    format=PromptFormat(answer_prefix="Sentiment:"),
    output_name="sentiment",
    labels=("positive", "negative"),
)
# The weights that undo the fake's bias towards "positive" (see biased_sentiment_logprobs).
CALIBRATION = Calibration({"positive": 1 / 0.7, "negative": 1 / 0.3}, ("N/A",))


def test_evaluate_prompt_scores_by_label_probabilities_with_the_calibration(
    logprob_client: Client,
) -> None:
    examples = client_examples(12, "ev")
    raw = logprob_client.evaluate_prompt(PROMPT, TASK, examples, FAKE_MODEL)
    assert raw.score.scoring is Scoring.LABEL_PROBABILITIES
    assert {r.prediction for r in raw.results} == {"positive"}
    calibrated = dataclasses.replace(PROMPT, calibration=CALIBRATION)
    fixed = logprob_client.evaluate_prompt(calibrated, TASK, examples, FAKE_MODEL)
    assert fixed.score.mean == 1.0
    assert all(r.label_probabilities for r in fixed.results)


def test_compare_scores_both_sides_in_the_mode_the_caller_asks(logprob_client: Client) -> None:
    examples = client_examples(12, "cmpmode")
    auto = logprob_client.compare(TASK, examples, PROMPT, PROMPT, FAKE_MODEL, FAKE_MODEL)
    generated = logprob_client.compare(
        TASK, examples, PROMPT, PROMPT, FAKE_MODEL, FAKE_MODEL, scoring=Scoring.GENERATION
    )
    assert {auto.a.score.scoring, auto.b.score.scoring} == {Scoring.LABEL_PROBABILITIES}
    assert {generated.a.score.scoring, generated.b.score.scoring} == {Scoring.GENERATION}
    assert all(not r.label_probabilities for r in generated.a.results)


def test_render_prompt_returns_the_calibration(logprob_server: EmbeddedServer) -> None:
    calibrated = dataclasses.replace(PROMPT, calibration=CALIBRATION)
    request = pb.RenderPromptRequest(prompt=wire.to_message(calibrated), inputs={"input": "dull"})
    with grpc.insecure_channel(logprob_server.target) as channel:
        reply = pb_grpc.OptimizerServiceStub(channel).RenderPrompt(request, timeout=10)
        plain = pb.RenderPromptRequest(prompt=wire.to_message(PROMPT), inputs={"input": "dull"})
        uncalibrated = pb_grpc.OptimizerServiceStub(channel).RenderPrompt(plain, timeout=10)
    assert dict(reply.calibration.weights) == pytest.approx(dict(CALIBRATION.weights))
    assert "dull" in reply.messages[-1].content
    assert not uncalibrated.HasField("calibration")


def test_search_scoring_label_probabilities_needs_distinguishable_labels(
    logprob_client: Client,
) -> None:
    task = dataclasses.replace(TASK, labels=("card_arrival", "card_linking"))
    search = dataclasses.replace(SMALL_SEARCH, scoring=Scoring.LABEL_PROBABILITIES)
    with pytest.raises(InvalidArgumentError) as refused:
        logprob_client.create_job(task, small_dataset(), FAKE_MODEL, search)
    assert refused.value.field == "search.scoring"
    free_text = TaskSpec(description="Answer the question.")
    with pytest.raises(InvalidArgumentError) as refused:
        logprob_client.create_job(free_text, small_dataset(), FAKE_MODEL, search)
    assert refused.value.field == "search.scoring"


def test_invalid_calibration_weights_are_refused(logprob_client: Client) -> None:
    bad = dataclasses.replace(PROMPT, calibration=Calibration({"positive": -1.0}))
    with pytest.raises(InvalidArgumentError) as refused:
        logprob_client.evaluate_prompt(bad, TASK, client_examples(2, "x"), FAKE_MODEL)
    assert refused.value.field == "prompt.calibration.weights"
    huge = dataclasses.replace(PROMPT, calibration=Calibration({"positive": 1e300}))
    with pytest.raises(InvalidArgumentError) as refused:
        logprob_client.evaluate_prompt(huge, TASK, client_examples(2, "x"), FAKE_MODEL)
    assert refused.value.field == "prompt.calibration.weights"


def test_response_cache_keeps_top_logprobs(tmp_path: Path) -> None:
    cache = SqlResponseCache(create_db_engine(f"sqlite:///{tmp_path / 'c.db'}"))
    top = (("Positive", math.log(0.7)), (" neg", -1.2))
    cache.put("k1", ChatResponse("Pos", 3, 1, top))
    cache.put("k2", ChatResponse("plain", 3, 1))
    assert cache.get("k1") == ChatResponse("Pos", 3, 1, top)
    assert cache.get("k2") == ChatResponse("plain", 3, 1)
