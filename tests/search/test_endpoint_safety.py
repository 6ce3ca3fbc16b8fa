"""An endpoint is hostile until checked: it cannot redirect calls elsewhere, hold a call past
its deadline by dripping bytes, break accounting with nonsense usage, or flood the cache and
the study with huge answers; failed calls are logged without the key."""

from __future__ import annotations

import time

import optuna
import pytest
from structlog.testing import capture_logs

from prompttune.contract import ChatMessage, Prompt
from prompttune.search import (
    MAX_ANSWER_CHARS,
    CallBudget,
    ChatRequest,
    LLMCallFailed,
    LLMGateway,
    ModelEndpoint,
    OpenAIChatModel,
    Runner,
    RunnerDeps,
    evaluate_prompt,
)
from prompttune.search._resume import RESULTS_ATTR
from tests.fakes import (
    SENTIMENT_TASK,
    FakeChatModel,
    FakeEmbedder,
    InMemoryResponseCache,
    RecordingObserver,
    Reply,
    ScriptedEndpoint,
    completion_body,
    routing_responder,
    search_spec,
    sentiment_examples,
    sentiment_splits,
)

REQUEST = ChatRequest((ChatMessage("user", "the plot was dull"),), 0.0, 8)


def model(url: str, **options: object) -> OpenAIChatModel:
    endpoint = ModelEndpoint(url, "m", retry_backoff_seconds=0.01, **options)  # type: ignore[arg-type]
    return OpenAIChatModel(endpoint)


async def test_redirects_are_not_followed() -> None:
    async with ScriptedEndpoint(lambda: Reply(body=completion_body())) as internal:
        location = {"Location": f"{internal.url}/chat/completions"}
        async with ScriptedEndpoint(lambda: Reply(307, headers=location)) as bouncer:
            with pytest.raises(LLMCallFailed) as failed:
                await model(bouncer.url, max_retries=0).complete(REQUEST)
    assert failed.value.status == "HTTP 307" and not failed.value.transient
    assert bouncer.requests == 1 and internal.requests == 0


async def test_a_pinned_endpoint_connects_only_to_the_addresses_its_pin_returns() -> None:
    """The URL's host is never looked up in DNS: `rebound.invalid` does not resolve, yet the
    call reaches the address the pin checked; a pin that refuses fails the call unsent."""
    asked: list[tuple[str, int]] = []

    def pin(host: str, port: int) -> tuple[str, ...]:
        asked.append((host, port))
        return ("127.0.0.1",)

    def refuse(host: str, port: int) -> tuple[str, ...]:
        raise OSError(f"{host} is not an address this server may call")

    async with ScriptedEndpoint(lambda: Reply(body=completion_body("negative"))) as server:
        url = f"http://rebound.invalid:{server.port}/v1"
        answer = await model(url, connect_addresses=pin).complete(REQUEST)
        assert answer.text == "negative" and server.requests == 1
        assert asked == [("rebound.invalid", server.port)]
        with pytest.raises(LLMCallFailed) as failed:
            await model(url, connect_addresses=refuse, max_retries=0).complete(REQUEST)
    assert server.requests == 1 and "connection" in failed.value.status.lower()


async def test_a_dripping_answer_is_cut_at_the_attempt_deadline() -> None:
    drip = Reply(body=completion_body("positive " * 20), drip_seconds=0.2)
    async with ScriptedEndpoint(lambda: drip) as endpoint:
        started = time.monotonic()
        with pytest.raises(LLMCallFailed) as failed:
            await model(endpoint.url, timeout_seconds=0.5, max_retries=1).complete(REQUEST)
    assert time.monotonic() - started < 2.5  # two attempts of 0.5 s, not 50 s of drip
    assert failed.value.status == "timeout" and endpoint.requests == 2


@pytest.mark.parametrize(
    ("usage", "tokens"),
    [
        ({"prompt_tokens": -5, "completion_tokens": "many"}, (0, 0)),
        ({"prompt_tokens": 10**15, "completion_tokens": 3}, (1_000_000, 3)),
        ({"prompt_tokens": [1], "completion_tokens": True}, (0, 0)),
        ("lots", (0, 0)),
    ],
)
async def test_nonsense_usage_is_clamped_and_logged_not_fatal(
    usage: object, tokens: tuple[int, int]
) -> None:
    async with ScriptedEndpoint(lambda: Reply(body=completion_body("positive", usage))) as endpoint:
        with capture_logs() as logs:
            response = await model(endpoint.url).complete(REQUEST)
    assert response.text == "positive"
    assert (response.prompt_tokens, response.completion_tokens) == tokens
    assert any(entry["event"] == "llm.usage.clamped" for entry in logs)


async def test_failed_calls_are_logged_with_endpoint_status_and_attempt_never_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("PROMPTTUNE_TEST_KEY", secret)
    async with ScriptedEndpoint(lambda: Reply(503, b"{}")) as endpoint:
        with capture_logs() as logs, pytest.raises(LLMCallFailed):
            await model(endpoint.url, max_retries=2, api_key_env="PROMPTTUNE_TEST_KEY").complete(
                REQUEST
            )
    failures = [entry for entry in logs if entry["event"] == "llm.call.failed"]
    assert [(f["status"], f["attempt"]) for f in failures] == [
        ("HTTP 503", 1),
        ("HTTP 503", 2),
        ("HTTP 503", 3),
    ]
    assert all(endpoint.url in f["endpoint"] for f in failures)
    assert secret not in repr(logs)


async def test_huge_answers_are_cut_before_they_are_cached_or_scored() -> None:
    model = FakeChatModel(lambda r: "positive " + "x" * 10_000)
    cache = InMemoryResponseCache()
    gateway = LLMGateway(model, CallBudget(), cache)
    response = await gateway.complete(REQUEST, "task")
    assert len(response.text) == MAX_ANSWER_CHARS
    assert [len(r.text) for r in cache.entries.values()] == [MAX_ANSWER_CHARS]


async def test_an_evaluation_reports_the_usage_it_spent() -> None:
    examples = sentiment_examples(6)
    model = FakeChatModel(lambda r: "positive")
    gateway = LLMGateway(model, CallBudget(), InMemoryResponseCache())
    first = await evaluate_prompt(gateway, SENTIMENT_TASK, Prompt("Classify."), examples)
    again = await evaluate_prompt(gateway, SENTIMENT_TASK, Prompt("Classify."), examples)
    assert (first.usage.llm_calls, first.usage.cache_misses) == (6, 6)
    assert first.usage.prompt_tokens > 0
    assert (again.usage.llm_calls, again.usage.cache_hits) == (0, 6)


async def test_the_study_stores_answers_cut_to_the_bound() -> None:
    def verbose(request: ChatRequest) -> str:
        return routing_responder(request) + " " + "y" * 9_000

    model = FakeChatModel(verbose)
    store = optuna.storages.InMemoryStorage()
    deps = RunnerDeps(model, model, FakeEmbedder(), RecordingObserver(), InMemoryResponseCache())
    spec = search_spec(max_trials=3, num_instruction_candidates=1, max_demos=1, minibatch_size=4)
    data = sentiment_splits(train=4, validation=8, test=0)
    await Runner(deps, store).run(SENTIMENT_TASK, data, spec, "job")
    trials = optuna.load_study(study_name="job", storage=store).trials
    answers = [row[3] for t in trials for row in t.user_attrs.get(RESULTS_ATTR, [])]
    assert answers and max(len(answer) for answer in answers) == MAX_ANSWER_CHARS
