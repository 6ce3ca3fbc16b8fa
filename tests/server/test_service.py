"""The service through the real SDK against a real in-process gRPC server (fake LLM)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
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
    Client,
    Dataset,
    Example,
    JobState,
    NotFoundError,
    Prompt,
    PromptFormat,
)
from prompttune.server import EmbeddedServer, SqlJobStore
from prompttune.server._db import create_db_engine


def test_optimize_completes_and_persists_result_and_events(
    client: Client, server: EmbeddedServer, tmp_path: Path
) -> None:
    events = []
    job = client.optimize(TASK, small_dataset(), FAKE_MODEL, SMALL_SEARCH, on_event=events.append)

    assert job.state is JobState.SUCCEEDED
    result = job.result
    assert result is not None
    assert result.best.validation.mean >= result.baseline.validation.mean
    assert result.best.test is not None and result.baseline.test is not None
    assert result.trials_completed >= 1
    assert set(result.baseline.validation.per_label) == {"positive", "negative"}
    sequences = [event.sequence for event in events]
    assert sequences == list(range(1, len(sequences) + 1))
    kinds = {event.kind for event in events}
    assert {"state_changed", "phase_changed", "trial_finished", "budget_used"} <= kinds
    assert events[-1].state_changed is not None
    assert events[-1].state_changed.state is JobState.SUCCEEDED

    # Persisted: a fresh store on the same database sees the result and every event.
    store = SqlJobStore(create_db_engine(f"sqlite:///{tmp_path / 'service.db'}"))
    stored = store.get(job.id)
    assert stored.result.best.validation.mean == pytest.approx(result.best.validation.mean)
    assert [e.sequence for e in store.events_after(job.id, 0, 1000)] == sequences


def test_rerun_makes_no_new_llm_calls_and_returns_the_same_prompt(
    client: Client, fake_models: FakeModels
) -> None:
    first = client.optimize(TASK, small_dataset(), FAKE_MODEL, SMALL_SEARCH)
    calls_after_first = fake_models.calls
    second = client.optimize(TASK, small_dataset(), FAKE_MODEL, SMALL_SEARCH)

    assert first.result is not None and second.result is not None
    assert fake_models.calls == calls_after_first
    assert second.result.usage.llm_calls == 0
    assert second.result.usage.cache_hits > 0
    assert second.result.best.prompt == first.result.best.prompt
    assert second.result.best.test == first.result.best.test


def test_create_job_is_idempotent_on_request_id(client: Client) -> None:
    first = client.create_job(TASK, small_dataset(), FAKE_MODEL, SMALL_SEARCH, request_id="r-1")
    again = client.create_job(TASK, small_dataset(), FAKE_MODEL, SMALL_SEARCH, request_id="r-1")
    other = client.create_job(TASK, small_dataset(), FAKE_MODEL, SMALL_SEARCH, request_id="r-2")
    assert again.id == first.id
    assert other.id != first.id


def test_dry_run_returns_an_estimate_without_creating_a_job(client: Client) -> None:
    estimate = client.create_job(TASK, small_dataset(), FAKE_MODEL, SMALL_SEARCH, dry_run=True)
    assert estimate.llm_calls > 0
    assert estimate.llm_calls <= 2000
    assert client.list_jobs().jobs == ()


def test_list_jobs_pages_and_filters(tmp_path: Path, fake_models: FakeModels) -> None:
    with start_server(tmp_path, fake_models, workers=0) as api_only, Client(api_only.target) as sdk:
        ids = [sdk.create_job(TASK, small_dataset(), FAKE_MODEL).id for _ in range(5)]
        sdk.cancel_job(ids[0])
        first_page = sdk.list_jobs(page_size=2)
        assert [job.id for job in first_page.jobs] == ids[::-1][:2]
        listed = [job.id for job in sdk.iter_jobs(page_size=2)]
        assert listed == ids[::-1]
        cancelled = sdk.list_jobs(state=JobState.CANCELLED).jobs
        assert [job.id for job in cancelled] == [ids[0]]
        assert len(sdk.list_jobs(state=JobState.QUEUED).jobs) == 4


def test_cancel_queued_job_and_watch_resumes_after_a_sequence(
    tmp_path: Path, fake_models: FakeModels
) -> None:
    with start_server(tmp_path, fake_models, workers=0) as api_only, Client(api_only.target) as sdk:
        job = sdk.create_job(TASK, small_dataset(), FAKE_MODEL)
        assert sdk.cancel_job(job.id).state is JobState.CANCELLED
        events = list(sdk.watch_job(job.id))
        assert [e.state_changed.state for e in events if e.state_changed] == [
            JobState.QUEUED,
            JobState.CANCELLED,
        ]
        resumed = list(sdk.watch_job(job.id, after_sequence=1))
        assert [e.sequence for e in resumed] == [2]


def test_cancel_running_job_stops_it(client: Client) -> None:
    search = dataclasses.replace(
        SMALL_SEARCH, budget=dataclasses.replace(SMALL_SEARCH.budget, max_trials=500)
    )
    dataset = Dataset.from_splits(
        client_examples(40, "train"), client_examples(300, "val"), client_examples(50, "test")
    )
    job = client.create_job(TASK, dataset, FAKE_MODEL, search)
    for event in client.watch_job(job.id):
        if event.trial_finished is not None:
            client.cancel_job(job.id)
            break
    final = list(client.watch_job(job.id))
    assert final[-1].state_changed is not None
    assert client.get_job(job.id).state is JobState.CANCELLED


def test_unknown_job_is_not_found(client: Client) -> None:
    with pytest.raises(NotFoundError):
        client.get_job("job-missing")
    with pytest.raises(NotFoundError):
        list(client.watch_job("job-missing"))


def test_evaluate_and_render_prompt(client: Client) -> None:
    prompt = Prompt(
        instruction="Classify the sentiment as positive or negative.",
        demos=(Example("the plot was {brilliant}", "positive"),),
        format=PromptFormat(answer_prefix="Sentiment:"),
        output_name="sentiment",
        labels=("positive", "negative"),
    )
    examples = client_examples(12, "ev")
    evaluation = client.evaluate_prompt(prompt, TASK, examples, FAKE_MODEL)
    assert evaluation.score.examples == 12
    assert len(evaluation.results) == 12
    assert 0.0 <= evaluation.score.mean <= 1.0
    assert evaluation.usage.llm_calls == 12 + 1  # and the probe for log probabilities

    messages = client.render_prompt(prompt, "a {0} {name} %s review")
    assert messages[0].role == "system"
    assert "a {0} {name} %s review" in messages[-1].content
    assert messages[-1].content.rstrip().endswith("Sentiment:")


def test_health_serving_and_reflection_lists_the_service(server: EmbeddedServer) -> None:
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        response = next(iter(reflection.ServerReflectionInfo(iter([request]), timeout=5)))
        names = {s.name for s in response.list_services_response.service}
        assert "prompttune.v1.OptimizerService" in names
