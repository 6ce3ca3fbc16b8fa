"""Jobs with several target models through the real in-process gRPC server and SDK: one
entry per model, the quality/cost frontier, the recommendation, the budget split, a failing
model, and template jobs within and across tenants."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from tests.fakes import (
    FakeChatModel,
    FakeEmbedder,
    FakeResolver,
    Responder,
    flat_responder,
    gold_responder,
    routing_responder,
)
from tests.server.conftest import SMALL_SEARCH, TASK, small_dataset
from tests.server.test_cli_batch import write_batch

from prompttune.client import (
    Budget,
    Client,
    InvalidArgumentError,
    Job,
    JobState,
    ModelSpec,
    NotFoundError,
    SearchSpec,
    Usage,
    from_document,
)
from prompttune.search import ChatModel, ModelEndpoint
from prompttune.server import Adapters, EmbeddedServer, ServerConfig, WorkerConfig
from prompttune.server._auth import TokenRegistry
from prompttune.server._endpoints import EndpointConfig, EndpointEntry
from prompttune.server._multimodel import remaining_share
from prompttune.server.cli import main

# Endpoint name -> (how its fake model answers, USD per million prompt tokens).
ENDPOINTS: dict[str, tuple[Responder, float]] = {
    "pricey": (routing_responder, 10.0),
    "cheap": (routing_responder, 1.0),
    "gold": (gold_responder, 10.0),
    "flat": (flat_responder, 1.0),
    "down": (routing_responder, 1.0),
}
TOKENS = {"token-alpha": "alpha", "token-beta": "beta"}


class EndpointModels:
    """One fake model per endpoint, answering as `ENDPOINTS` says; "down" fails every call."""

    def __init__(self) -> None:
        self.models: list[FakeChatModel] = []

    def __call__(self, endpoint: ModelEndpoint) -> ChatModel:
        name = (urllib.parse.urlparse(endpoint.base_url).hostname or "").split(".")[0]
        responder, _ = ENDPOINTS[name]
        fail = (lambda _request: True) if name == "down" else None
        model = FakeChatModel(
            responder, identity=f"{endpoint.base_url}|{endpoint.model}", fail_if=fail
        )
        self.models.append(model)
        return model


def registry() -> EndpointConfig:
    return EndpointConfig(
        endpoints={
            name: EndpointEntry(
                base_url=f"http://{name}.invalid/v1",
                models=("m",),
                usd_per_million_prompt_tokens=price,
                usd_per_million_completion_tokens=price,
            )
            for name, (_, price) in ENDPOINTS.items()
        }
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    path: Path = tmp_path_factory.mktemp("models")
    config = ServerConfig(
        db_url=f"sqlite:///{path / 'service.db'}",
        workers=1,
        worker=WorkerConfig(poll_seconds=0.05, cancel_check_seconds=0.05),
        endpoint_config=registry(),
        auth=TokenRegistry.from_mapping(TOKENS),
    )
    adapters = Adapters(
        chat_models=EndpointModels(), embedder_factory=FakeEmbedder, host_resolver=FakeResolver()
    )
    with EmbeddedServer(config, adapters) as embedded:
        yield embedded


@pytest.fixture
def alpha(server: EmbeddedServer) -> Iterator[Client]:
    with Client(server.target, timeout=30, token="token-alpha") as sdk:
        yield sdk


def named(name: str) -> ModelSpec:
    return ModelSpec.named(name)


def run(client: Client, first: str, *others: str, search: SearchSpec = SMALL_SEARCH) -> Job:
    return client.optimize(
        TASK, small_dataset(), named(first), search, models=[named(o) for o in others]
    )


def test_bad_model_lists_are_refused_naming_the_field(alpha: Client) -> None:
    cases = [
        (("cheap", "pricey", "gold", "flat", "down"), "models"),
        (("cheap", "pricey", "cheap"), "models[1]"),
        (("cheap", "pricey", "nowhere"), "models[1].endpoint"),
    ]
    for names, field in cases:
        with pytest.raises(InvalidArgumentError) as refused:
            alpha.create_job(
                TASK, small_dataset(), named(names[0]), models=[named(n) for n in names[1:]]
            )
        assert refused.value.field == field
    too_long = replace(named("gold"), max_tokens=100_000)
    with pytest.raises(InvalidArgumentError) as refused:
        alpha.create_job(TASK, small_dataset(), named("cheap"), models=[named("flat"), too_long])
    assert refused.value.field == "models[1].max_tokens"


def test_a_call_budget_too_small_for_every_model_to_search_is_refused(alpha: Client) -> None:
    tiny = replace(SMALL_SEARCH, budget=replace(SMALL_SEARCH.budget, max_llm_calls=60))
    with pytest.raises(InvalidArgumentError) as refused:
        alpha.create_job(TASK, small_dataset(), named("cheap"), tiny, models=[named("flat")])
    assert refused.value.field == "search.budget.max_llm_calls"
    assert "gives each of the 2 models 30 calls" in str(refused.value)
    # the same budget for one model is its own choice: the job runs (and reports its stop)
    alpha.create_job(TASK, small_dataset(), named("cheap"), tiny, dry_run=True)


def test_the_estimate_covers_every_model(alpha: Client) -> None:
    half = replace(SMALL_SEARCH, budget=replace(SMALL_SEARCH.budget, max_llm_calls=1000))
    one = alpha.create_job(TASK, small_dataset(), named("cheap"), half, dry_run=True)
    two = alpha.create_job(
        TASK, small_dataset(), named("cheap"), SMALL_SEARCH, models=[named("gold")], dry_run=True
    )
    assert two.llm_calls == 2 * one.llm_calls
    assert [(check.endpoint, check.field) for check in two.endpoints] == [
        ("cheap", "model"),
        ("gold", "models[0]"),
    ]


def test_equal_models_recommend_the_cheaper_one(alpha: Client) -> None:
    events: list[str] = []
    job = alpha.optimize(
        TASK,
        small_dataset(),
        named("pricey"),
        SMALL_SEARCH,
        models=[named("cheap")],
        on_event=lambda e: events.append(e.phase_changed.phase) if e.phase_changed else None,
    )
    result = job.result
    assert job.state is JobState.SUCCEEDED and result is not None
    assert job.models == (named("cheap"),)
    pricey, cheap = result.models
    assert (pricey.model, cheap.model) == (named("pricey"), named("cheap"))
    assert pricey.result.best.test == cheap.result.best.test  # same answers, same prompts
    assert result.recommendation is not None and result.recommendation.model_index == 1
    reason = result.recommendation.reason
    assert reason.startswith("cheap: test") and "paired 95% interval [+0.00, +0.00]" in reason
    assert "costs 90% less" in reason
    assert (pricey.on_frontier, cheap.on_frontier) == (False, True)
    assert result.best == cheap.result.best and result.baseline == cheap.result.baseline
    assert result.usage.llm_calls == pricey.result.usage.llm_calls + cheap.result.usage.llm_calls
    # The first model proposed for both: the second's proposals all came from the cache.
    assert cheap.result.usage_by_role["proposer"].llm_calls == 0
    assert cheap.result.usage_by_role["proposer"].cache_hits > 0
    assert "searching model 1/2 (pricey)" in events
    assert "testing model 2/2 (cheap)" in events
    assert pricey.seconds_per_example >= 0 and cheap.seconds_per_example >= 0


def test_a_clearly_better_model_is_recommended_over_a_cheaper_one(alpha: Client) -> None:
    job = run(alpha, "flat", "gold")
    result = job.result
    assert result is not None and result.recommendation is not None
    flat, gold = result.models
    assert flat.result.best.test is not None and gold.result.best.test is not None
    assert gold.result.best.test.mean == 1.0 and flat.result.best.test.mean == 0.5
    assert result.recommendation.model_index == 1
    assert "no cheaper model is within noise" in result.recommendation.reason
    assert (flat.on_frontier, gold.on_frontier) == (True, True)  # cheaper, or better


def test_the_budget_is_split_between_models_and_leftovers_go_to_the_next(alpha: Client) -> None:
    budget = Budget(max_trials=6, max_llm_calls=300)
    # Without the cache: earlier tests' answers would otherwise cost nothing.
    search = replace(SMALL_SEARCH, budget=budget, disable_cache=True)
    job = run(alpha, "pricey", "gold", search=search)
    assert job.state is JobState.SUCCEEDED and job.result is not None
    first, second = (entry.result.usage.llm_calls for entry in job.result.models)
    assert 0 < first <= 150 and 0 < second <= 300 - first, (first, second)
    assert first + second > 150  # the job as a whole spent more than one share
    assert job.result.usage.llm_calls == first + second


def test_what_a_model_leaves_unused_goes_to_the_models_after_it() -> None:
    budget = Budget(max_trials=6, max_llm_calls=300, max_wall_seconds=900.0, max_cost_usd=1.0)
    first = remaining_share(budget, Usage(), 0.0, 2)
    assert (first.max_llm_calls, first.max_wall_seconds, first.max_cost_usd) == (150, 450.0, 0.5)
    second = remaining_share(budget, Usage(llm_calls=100, cost_usd=0.25), 300.0, 1)
    assert (second.max_llm_calls, second.max_wall_seconds) == (200, 600.0)
    assert second.max_cost_usd == pytest.approx(0.75)
    # a spent budget leaves the next model the smallest limit, never an unlimited one
    spent = remaining_share(budget, Usage(llm_calls=300, cost_usd=1.0), 950.0, 1)
    assert (spent.max_llm_calls, spent.max_wall_seconds) == (1, 1.0)
    assert 0 < spent.max_cost_usd < 1e-6
    unlimited = remaining_share(Budget(max_tokens=0), Usage(prompt_tokens=50), 10.0, 2)
    assert unlimited.max_tokens == 0 and unlimited.max_cost_usd == 0.0


def test_a_failing_model_keeps_the_other_models_result(alpha: Client) -> None:
    job = run(alpha, "gold", "down")
    result = job.result
    assert job.state is JobState.SUCCEEDED and result is not None
    gold, down = result.models
    assert down.result.stop_reason == "failed" and down.result.summary.startswith("failed: ")
    assert down.result.partial and not down.on_frontier
    assert gold.result.stop_reason != "failed" and gold.on_frontier
    assert result.recommendation is not None and result.recommendation.model_index == 0
    assert "only model whose search succeeded" in result.recommendation.reason


def test_a_template_job_copies_task_data_and_search_and_takes_overrides(
    alpha: Client, server: EmbeddedServer
) -> None:
    first = alpha.optimize(TASK, small_dataset(), named("cheap"), SMALL_SEARCH)
    copy = alpha.optimize(None, None, named("gold"), template_job_id=first.id)
    assert copy.state is JobState.SUCCEEDED and copy.template_job_id == first.id
    assert (copy.task, copy.search, copy.model) == (first.task, first.search, named("gold"))
    assert copy.result is not None and copy.result.best.test is not None
    assert copy.result.best.test.examples == 16  # the template's test split
    other_search = replace(SMALL_SEARCH, seed=9)
    changed = alpha.create_job(None, None, named("flat"), other_search, template_job_id=first.id)
    assert changed.search.seed == 9 and changed.task == first.task
    with pytest.raises(InvalidArgumentError) as refused:
        alpha.create_job(None, None, template_job_id=first.id)
    assert refused.value.field == "model"
    with Client(server.target, timeout=30, token="token-beta") as beta:
        with pytest.raises(NotFoundError):
            beta.create_job(None, None, named("gold"), template_job_id=first.id)
        with pytest.raises(NotFoundError):
            beta.create_job(None, None, named("gold"), template_job_id="no-such-job")


def test_the_cli_runs_two_models_and_prints_the_table_and_recommendation(
    server: EmbeddedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_batch(tmp_path)
    argv = ["optimize", str(tmp_path / "task.yaml"), "--model", "flat", "--models", "gold"]
    connection = ["--server", server.target, "--token", "token-alpha", "--quiet"]
    out = tmp_path / "result.json"
    assert main([*argv, *connection, "--out", str(out)]) == 0
    stderr = capsys.readouterr().err
    assert "  * 0: flat" in stderr and "  * 1: gold" in stderr
    assert "recommended: gold: the best test score, 1.00" in stderr
    job = from_document(Job, json.loads(out.read_text()))
    assert job.models == (named("gold"),) and job.model == named("flat")
    rerun = ["optimize", "--template", job.id, "--model", "cheap", *connection]
    assert main([*rerun, "--out", str(tmp_path / "rerun.json")]) == 0
    again = from_document(Job, json.loads((tmp_path / "rerun.json").read_text()))
    assert again.template_job_id == job.id and again.task == job.task
    assert main(["optimize", "--template", job.id, *connection]) == 2
    assert "--template needs --model" in capsys.readouterr().err
