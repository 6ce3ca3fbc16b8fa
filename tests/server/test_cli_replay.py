"""Results that replay: a job whose winner retrieves kNN demonstrations and reasons step by
step, exported in every format and read back through the CLI and the SDK, renders the same
messages and gets the same evaluate scores as the job reported."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.fakes import (
    NEGATIVE_WORDS,
    POSITIVE_WORDS,
    TOPICS,
    FakeChatModel,
    FakeEmbedder,
    FakeResolver,
    request_text,
    routing_responder,
    unit_hash,
)
from tests.server.conftest import CALLER_ENDPOINTS

from prompttune.client import Client, Job, Prompt, from_document, render
from prompttune.contract import REASONING_CUE, ChatMessage, Evaluation
from prompttune.search import ChatModel, ChatRequest, ModelEndpoint
from prompttune.server import Adapters, EmbeddedServer, ServerConfig, WorkerConfig
from prompttune.server._logging import configure_logging
from prompttune.server._promptfile import read_prompt
from prompttune.server._taskfile import load_examples
from prompttune.server.cli import main

TASK_DOC = {
    "task": {
        "description": "Decide whether a movie review sentence is positive or negative.",
        "seed_instruction": "Classify the review.",
        "labels": ["positive", "negative"],
        "metric": "label_choice",
        "output_name": "sentiment",
    },
    "model": {"kind": "openai_compatible", "base_url": "http://fake.invalid/v1", "model": "m"},
    "search": {
        "seed": 0,
        "num_instruction_candidates": 1,
        "max_demos": 3,
        "minibatch_size": 8,
        "allow_reasoning": True,
        "num_demo_sets": 1,
        "budget": {"max_trials": 24},
    },
    "data": {"train": "train.jsonl", "validation": "validation.jsonl", "test": "test.jsonl"},
}


def topic(line: str) -> str:
    """The topic of a line holding a review (its topic word three times), else ""."""
    return next((word for word in TOPICS if line.count(word) >= 3), "")


def knn_reasoning_responder(request: ChatRequest) -> str:
    """Right with probability 0.1, plus 0.5 when the demonstration next to the input (the
    most similar one, for a kNN prompt) is about the input's topic, plus 0.4 when the prompt
    asks for reasoning: only kNN demonstrations with reasoning are always right."""
    first = request.messages[0].content
    if "You write clear instructions" in first or "You describe datasets" in first:
        return routing_responder(request)
    reviews = [line for line in request_text(request).splitlines() if topic(line)]
    similar = len(reviews) > 1 and topic(reviews[-2]) == topic(reviews[-1])
    reasoning = REASONING_CUE in request.messages[-1].content
    gold = _gold(reviews[-1]) or "positive"
    if unit_hash(request_text(request)) < 0.1 + 0.5 * similar + 0.4 * reasoning:
        return f"The review is about the {topic(reviews[-1])}.\nAnswer: {gold}"
    return "Answer: " + ("negative" if gold == "positive" else "positive")


def _gold(text: str) -> str | None:
    if any(word in text for word in POSITIVE_WORDS):
        return "positive"
    if any(word in text for word in NEGATIVE_WORDS):
        return "negative"
    return None


class Models:
    def __call__(self, endpoint: ModelEndpoint) -> ChatModel:
        return FakeChatModel(knn_reasoning_responder, identity=f"{endpoint.base_url}|m")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    configure_logging("WARNING")  # the server's logs on stderr, as in its own process
    config = ServerConfig(
        db_url=f"sqlite:///{tmp_path / 'replay.db'}",
        workers=1,
        worker=WorkerConfig(poll_seconds=0.05, cancel_check_seconds=0.05),
        endpoint_config=CALLER_ENDPOINTS,
    )
    adapters = Adapters(Models(), FakeEmbedder, host_resolver=FakeResolver())
    with EmbeddedServer(config, adapters) as embedded:
        yield embedded


def reviews(count: int, prefix: str) -> list[dict[str, str]]:
    """Reviews whose topic word, said three times, dominates their bag-of-words embedding, so
    that the nearest reviews of an input are about its topic."""
    rows = []
    for index in range(count):
        positive = (index // len(TOPICS)) % 2 == 0
        words = POSITIVE_WORDS if positive else NEGATIVE_WORDS
        topic = TOPICS[index % len(TOPICS)]
        text = f"{topic} {topic} {topic} {words[index % len(words)]} #{prefix}{index}"
        label = "positive" if positive else "negative"
        rows.append({"id": f"{prefix}{index:03d}", "input": text, "output": label})
    return rows


def write_task(folder: Path) -> Path:
    for name, count in (("train", 32), ("validation", 16), ("test", 16)):
        lines = [json.dumps(row) for row in reviews(count, name)]
        (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    path = folder / "task.yaml"
    path.write_text(yaml.safe_dump(TASK_DOC), encoding="utf-8")
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    """Runs the CLI; returns its stdout parsed as JSON (or YAML)."""
    assert main(list(argv)) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    return yaml.safe_load(out)


def test_exported_knn_reasoning_winner_replays_exactly(
    tmp_path: Path, server: EmbeddedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    task_file = write_task(tmp_path)
    target = ["--server", server.target]
    result_file = tmp_path / "result.json"
    best_document = run(capsys, "optimize", str(task_file), "--out", str(result_file), *target)

    job = from_document(Job, json.loads(result_file.read_text()))
    assert job.result is not None and job.result.best.test is not None
    best = job.result.best.prompt
    assert best.knn_k > 0 and best.demo_pool and best.format.reasoning, best
    assert from_document(Prompt, best_document) == best
    reported = job.result.best.test

    files = {"stdout": tmp_path / "best.json", "result": result_file}
    files["stdout"].write_text(json.dumps(best_document), encoding="utf-8")
    for fmt in ("json", "yaml", "openai"):
        files[fmt] = tmp_path / f"export.{fmt}"
        assert main(["export", job.id, "--format", fmt, "--out", str(files[fmt]), *target]) == 0
    capsys.readouterr()

    review = "the acting was superb {really} and the ending moving"
    with Client(server.target) as client:
        served = client.render_prompt(best, review)
        test_examples = load_examples(tmp_path / "test.jsonl", job.task.input_fields)
        for name, path in files.items():
            prompt = read_prompt(path)
            assert prompt == best, name
            assert render(prompt, review, FakeEmbedder()) == served, name
            cli_messages = run(capsys, "render", "--prompt", str(path), review, *target)
            assert [from_document(ChatMessage, m) for m in cli_messages] == list(served), name

            evaluation = from_document(
                Evaluation,
                run(capsys, "evaluate", str(task_file), "--prompt", str(path),
                    "--data", str(tmp_path / "test.jsonl"), *target),
            )  # fmt: skip
            assert evaluation.score == reported, name
            sdk = client.evaluate_prompt(prompt, job.task, test_examples, job.model)
            assert sdk.score == reported, name
