"""Gateway features through the service: judge metric, usage per role, prices and cost caps,
and an endpoint outage failing the job with a clear reason."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from tests.fakes import FakeChatModel, routing_responder
from tests.server.conftest import (
    CALLER_ENDPOINTS,
    FAKE_MODEL,
    SMALL_SEARCH,
    TASK,
    fake_adapters,
    small_dataset,
)

from prompttune.client import Budget, Client, JobFailedError, JobState, Metric, ModelSpec
from prompttune.search import ChatModel, ChatRequest, ModelEndpoint
from prompttune.server import EmbeddedServer, ServerConfig, WorkerConfig
from prompttune.server._endpoints import EndpointDefaults


def judging_responder(request: ChatRequest) -> str:
    """Grades by whether the graded answer contains the reference label; else the task fake."""
    if request.messages[0].content.startswith("You grade answers"):
        text = request.messages[-1].content
        reference = text.split("Reference answer:\n", 1)[1].split("\n", 1)[0].lower()
        answer = text.rsplit("Answer to grade:\n", 1)[1].lower()
        return "Matches. Score: 5/5" if reference in answer else "Wrong label. Score: 0/5"
    return routing_responder(request)


class JudgingModels:
    def __init__(self, fail: bool = False) -> None:
        self.endpoints: list[ModelEndpoint] = []
        self._fail = fail

    def __call__(self, endpoint: ModelEndpoint) -> ChatModel:
        self.endpoints.append(endpoint)
        identity = f"{endpoint.base_url}|{endpoint.model}"
        fail_if = (lambda r: True) if self._fail else None
        return FakeChatModel(judging_responder, identity=identity, fail_if=fail_if)


def serve(tmp_path: Path, models: JudgingModels, outage: float = 300.0) -> EmbeddedServer:
    config = ServerConfig(
        db_url=f"sqlite:///{tmp_path / 'service.db'}",
        workers=1,
        worker=WorkerConfig(poll_seconds=0.05, cancel_check_seconds=0.05),
        endpoints=EndpointDefaults(requests_per_minute=100_000, max_outage_seconds=outage),
        endpoint_config=CALLER_ENDPOINTS,
    )
    return EmbeddedServer(config, fake_adapters(models))


def test_judge_metric_job_reports_usage_by_role_and_cost(tmp_path: Path) -> None:
    models = JudgingModels()
    priced = dataclasses.replace(
        FAKE_MODEL,
        usd_per_million_prompt_tokens=1.0,
        usd_per_million_completion_tokens=4.0,
        tokens_per_minute=10_000_000,
    )
    judge = ModelSpec.openai_compatible("http://judge.invalid/v1", "judge-model")
    task = dataclasses.replace(
        TASK, metric=Metric.LLM_JUDGE, rubric="Names the correct sentiment.", judge=judge
    )
    search = dataclasses.replace(SMALL_SEARCH, budget=Budget(max_trials=4, max_cost_usd=1.0))
    with serve(tmp_path, models) as server, Client(server.target, timeout=10) as client:
        job = client.optimize(task, small_dataset(), priced, search)
    assert job.state is JobState.SUCCEEDED, job.error
    result = job.result
    assert result is not None
    assert set(result.usage_by_role) == {"task", "proposer", "judge"}
    judged = result.usage_by_role["judge"]
    assert judged.llm_calls > 0 and judged.cost_usd == 0.0  # the judge has no price
    assert 0 < result.usage.cost_usd <= 1.0
    assert result.usage.cost_usd == sum(u.cost_usd for u in result.usage_by_role.values())
    assert result.best.validation.mean > 0.5
    assert {e.model for e in models.endpoints} >= {"fake-model", "judge-model"}
    task_endpoint = next(e for e in models.endpoints if e.model == "fake-model")
    assert task_endpoint.job_tokens_per_minute == 10_000_000  # the spec's, for its job
    assert task_endpoint.requests_per_minute == 100_000  # the server default, shared


def test_endpoint_down_longer_than_the_limit_fails_the_job(tmp_path: Path) -> None:
    with (
        serve(tmp_path, JudgingModels(fail=True), outage=0.01) as server,
        Client(server.target, timeout=10) as client,
        pytest.raises(JobFailedError) as failed,
    ):
        client.optimize(TASK, small_dataset(), FAKE_MODEL, SMALL_SEARCH)
    job = failed.value.job
    assert job.state is JobState.FAILED
    # The cause names the endpoint and how its calls failed, whichever limit tripped first:
    # the outage limit or the run of failures without a success.
    assert "every call" in job.error and "fake.invalid" in job.error
    assert "fake failure" in job.error
