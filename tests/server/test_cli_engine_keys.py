"""Task-file keys that change what the engine does, run end to end through `prompttune
optimize --server`: prices with `max_cost_usd` stop a job on cost, and `llm_judge` with a
`rubric` and a `judge` model grades answers with judge calls."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.fakes import FakeChatModel, FakeEmbedder, FakeResolver, routing_responder
from tests.server.conftest import CALLER_ENDPOINTS

from prompttune.client import Client, Job, JobState
from prompttune.search import ChatModel, ChatRequest, ModelEndpoint
from prompttune.server import Adapters, EmbeddedServer, ServerConfig, WorkerConfig
from prompttune.server._logging import configure_logging
from prompttune.server.cli import main

FAKE = {"kind": "openai_compatible", "base_url": "http://fake.invalid/v1", "model": "m"}
POSITIVE = ("great", "wonderful", "superb", "lovely")


def judging_responder(request: ChatRequest) -> str:
    """Grades like a judge (5/5 when the graded answer equals the reference), else answers
    like the sentiment fake."""
    if "You grade answers" in request.messages[0].content:
        user = request.messages[-1].content
        reference = user.split("Reference answer:\n", 1)[1].split("\n", 1)[0]
        graded = user.rsplit("Answer to grade:\n", 1)[1].strip()
        return f"Looks {'right' if reference in graded else 'wrong'}. Score: " + (
            "5/5" if reference in graded else "0/5"
        )
    return routing_responder(request)


class Models:
    def __call__(self, endpoint: ModelEndpoint) -> ChatModel:
        return FakeChatModel(judging_responder, identity=f"{endpoint.base_url}|{endpoint.model}")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    configure_logging("WARNING")
    config = ServerConfig(
        db_url=f"sqlite:///{tmp_path / 'keys.db'}",
        workers=1,
        worker=WorkerConfig(poll_seconds=0.05, cancel_check_seconds=0.05),
        endpoint_config=CALLER_ENDPOINTS,
    )
    adapters = Adapters(Models(), FakeEmbedder, host_resolver=FakeResolver())
    with EmbeddedServer(config, adapters) as embedded:
        yield embedded


def write_task(folder: Path, document: dict[str, Any]) -> Path:
    words = ("great", "dull", "wonderful", "awful", "superb", "boring", "lovely", "bland")
    for name, count in (("train", 16), ("validation", 16), ("test", 8)):
        rows = [
            {
                "id": f"{name}{i}",
                "input": f"a {words[i % 8]} film #{name}{i}",
                "output": "positive" if words[i % 8] in POSITIVE else "negative",
            }
            for i in range(count)
        ]
        text = "\n".join(json.dumps(row) for row in rows) + "\n"
        (folder / f"{name}.jsonl").write_text(text, encoding="utf-8")
    path = folder / "task.yaml"
    data = {"train": "train.jsonl", "validation": "validation.jsonl", "test": "test.jsonl"}
    path.write_text(yaml.safe_dump({**document, "data": data}), encoding="utf-8")
    return path


def optimize(server: EmbeddedServer, task_file: Path, tmp_path: Path) -> Job:
    out = tmp_path / "result.json"
    assert main(["optimize", str(task_file), "--server", server.target, "--out", str(out)]) == 0
    with Client(server.target) as client:
        (job,) = client.list_jobs().jobs
    return job


def test_prices_with_max_cost_usd_stop_a_job_on_cost(
    server: EmbeddedServer, tmp_path: Path
) -> None:
    document = {
        "task": {"description": "Classify the review.", "metric": "label_choice",
                 "labels": ["positive", "negative"]},
        "model": {**FAKE, "usd_per_million_prompt_tokens": 100.0,
                  "usd_per_million_completion_tokens": 100.0},
        "search": {"num_instruction_candidates": 1, "num_reflection_candidates": 0,
                   "budget": {"max_trials": 200, "max_cost_usd": 0.3}},
    }  # fmt: skip

    job = optimize(server, write_task(tmp_path, document), tmp_path)

    assert job.result is not None
    assert job.result.stop_reason == "max_cost_usd"
    assert 0 < job.result.usage.cost_usd <= 0.3


def test_llm_judge_with_rubric_and_judge_runs_from_a_task_file(
    server: EmbeddedServer, tmp_path: Path
) -> None:
    document = {
        "task": {"description": "Say whether the review is positive or negative.",
                 "metric": "llm_judge", "rubric": "The answer names the right sentiment.",
                 "judge": {**FAKE, "model": "judge"}},
        "model": FAKE,
        "search": {"num_instruction_candidates": 1, "num_reflection_candidates": 0,
                   "max_demos": 1, "budget": {"max_trials": 3}},
    }  # fmt: skip

    job = optimize(server, write_task(tmp_path, document), tmp_path)

    assert job.state is JobState.SUCCEEDED, job.error
    assert job.result is not None
    assert job.result.usage_by_role["judge"].llm_calls > 0
    graded = job.result.best.validation
    assert graded.failed == 0 and graded.mean > 0  # the judge's 5/5 grades were read
