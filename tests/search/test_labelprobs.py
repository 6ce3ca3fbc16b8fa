"""Label-probability scoring and contextual calibration: the shared contract functions, the
OpenAI adapter's log probabilities, and runs that use (or cannot use) them."""

from __future__ import annotations

import dataclasses
import json
import math

import httpx2
import optuna
import pytest

from prompttune.contract import (
    Calibration,
    ChatMessage,
    Example,
    Metric,
    Prompt,
    PromptFormat,
    Scoring,
    apply_calibration,
    calibrated_prediction,
    calibration_from,
    label_probabilities,
    labels_distinguishable,
    predict_label,
)
from prompttune.search import (
    CallBudget,
    CallSettings,
    ChatRequest,
    FailedPrecondition,
    LLMGateway,
    ModelEndpoint,
    OpenAIChatModel,
    Runner,
    RunnerDeps,
    cache_key,
    calibrate,
    estimate,
    evaluate_prompt,
)
from tests.fakes import (
    SENTIMENT_TASK,
    FakeChatModel,
    FakeEmbedder,
    InMemoryResponseCache,
    RecordingObserver,
    biased_sentiment_logprobs,
    fixed_clock,
    routing_responder,
    search_spec,
    sentiment_examples,
    sentiment_splits,
)

LN = math.log
LABELS = ("positive", "negative")


def test_tokens_map_to_labels_by_first_word_or_unique_prefix() -> None:
    top = [("Positive", LN(0.5)), (" neg", LN(0.2)), ("pos.", LN(0.1)), ("The", LN(0.2))]
    found = label_probabilities(LABELS, top)
    assert found is not None
    assert found == pytest.approx({"positive": 0.6 / 0.8, "negative": 0.2 / 0.8})
    assert list(found) == list(LABELS)


def test_ambiguous_empty_and_hostile_tokens_get_no_mass() -> None:
    labels = ("no", "none", "yes")
    top = [("n", LN(0.5)), (" ", LN(0.2)), ("no", LN(0.1)), ("Yes", float("nan")), ("y", 0.5)]
    assert label_probabilities(labels, top) == {"no": 1.0, "none": 0.0, "yes": 0.0}
    assert label_probabilities(LABELS, [("The", LN(0.9)), ("!", LN(0.1))]) is None
    assert label_probabilities(LABELS, []) is None


def test_labels_sharing_a_first_word_are_not_distinguishable() -> None:
    assert labels_distinguishable(("positive", "negative"))
    assert not labels_distinguishable(("card_arrival", "card_linking"))
    assert not labels_distinguishable(("Yes", "yes!"))
    assert not labels_distinguishable(("positive", "..."))
    assert not labels_distinguishable(())


def test_calibration_divides_by_the_content_free_bias() -> None:
    content_free = [{"positive": 0.7, "negative": 0.3}, {"positive": 0.9, "negative": 0.1}]
    calibration = calibration_from(content_free, ("N/A", ""))
    weights = calibration.weights
    assert weights["negative"] / weights["positive"] == pytest.approx(0.8 / 0.2)
    assert sum(weights.values()) / len(weights) == pytest.approx(1.0)
    assert calibration.content_free_inputs == ("N/A", "")
    biased = {"positive": 0.7, "negative": 0.3}
    assert calibrated_prediction(None, biased) == "positive"
    assert calibrated_prediction(calibration, biased) == "negative"
    assert sum(apply_calibration(calibration, biased).values()) == pytest.approx(1.0)


def test_a_label_never_chosen_gets_a_capped_weight_and_ties_go_to_label_order() -> None:
    calibration = calibration_from([{"positive": 1.0, "negative": 0.0}], ("N/A",))
    assert math.isfinite(calibration.weights["negative"])
    assert calibration.weights["negative"] / calibration.weights["positive"] == pytest.approx(1e3)
    assert calibrated_prediction(None, {"positive": 0.5, "negative": 0.5}) == "positive"
    assert calibration_from([], ("N/A",)).weights == {}


def test_predict_label_applies_the_prompts_calibration() -> None:
    prompt = Prompt("Classify.", labels=LABELS)
    top = [("Positive", LN(0.6)), ("Negative", LN(0.4))]
    assert predict_label(prompt, top) == "positive"
    calibrated = dataclasses.replace(prompt, calibration=Calibration({"negative": 2.0}))
    assert predict_label(calibrated, top) == "negative"
    assert predict_label(prompt, [("The", LN(0.9))]) == ""


def _completion(logprobs: object) -> dict[str, object]:
    choice = {"index": 0, "message": {"role": "assistant", "content": "Pos"}, "logprobs": logprobs}
    return {"choices": [choice], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}


def _adapter(body: dict[str, object], sent: list[dict[str, object]]) -> OpenAIChatModel:
    def handle(request: httpx2.Request) -> httpx2.Response:
        sent.append(json.loads(request.content))
        # json.dumps writes NaN and Infinity as Python's parser (and some servers) do
        content = json.dumps(body).encode()
        return httpx2.Response(200, content=content, headers={"content-type": "application/json"})

    client = httpx2.AsyncClient(transport=httpx2.MockTransport(handle))
    return OpenAIChatModel(ModelEndpoint("http://llm.test/v1", "m"), http_client=client)


LABEL_REQUEST = ChatRequest((ChatMessage("user", "hi"),), 0.0, 1, top_logprobs=20)


async def test_adapter_asks_for_and_parses_top_logprobs() -> None:
    top = [{"token": "Positive", "logprob": -0.3}, {"token": " neg", "logprob": -1.5}]
    sent: list[dict[str, object]] = []
    body = _completion({"content": [{"token": "Pos", "logprob": -0.3, "top_logprobs": top}]})
    response = await _adapter(body, sent).complete(LABEL_REQUEST)
    assert response.top_logprobs == (("Positive", -0.3), (" neg", -1.5))
    assert sent[0]["logprobs"] is True and sent[0]["top_logprobs"] == 20
    plain: list[dict[str, object]] = []
    await _adapter(body, plain).complete(dataclasses.replace(LABEL_REQUEST, top_logprobs=0))
    assert "logprobs" not in plain[0] and "top_logprobs" not in plain[0]


@pytest.mark.parametrize(
    "logprobs",
    [None, "x", {"content": "x"}, {"content": []}, {"content": [{"top_logprobs": {"a": 1}}]}],
)
async def test_adapter_without_usable_logprobs_returns_none(logprobs: object) -> None:
    response = await _adapter(_completion(logprobs), []).complete(LABEL_REQUEST)
    assert response.text == "Pos" and response.top_logprobs == ()


async def test_adapter_drops_hostile_entries_and_bounds_the_rest() -> None:
    hostile = [
        {"token": "a", "logprob": 0.5},
        {"token": "b", "logprob": "NaN"},
        {"token": 7, "logprob": -1.0},
        {"token": "c", "logprob": True},
        {"token": "d", "logprob": float("-inf")},
        "junk",
        {"token": "x" * 500, "logprob": -2.0},
    ] + [{"token": f"t{i}", "logprob": -3.0} for i in range(40)]
    body = _completion({"content": [{"top_logprobs": hostile}]})
    response = await _adapter(body, []).complete(LABEL_REQUEST)
    assert response.top_logprobs[0] == ("x" * 64, -2.0)
    assert len(response.top_logprobs) == 20 - 6
    assert all(math.isfinite(lp) and lp <= 0 for _, lp in response.top_logprobs)


def test_cache_key_includes_top_logprobs_only_when_asked() -> None:
    plain = dataclasses.replace(LABEL_REQUEST, top_logprobs=0)
    assert cache_key("m", LABEL_REQUEST) != cache_key("m", plain)
    assert cache_key("m", LABEL_REQUEST) != cache_key(
        "m", dataclasses.replace(LABEL_REQUEST, top_logprobs=5)
    )


def _gateway(model: FakeChatModel, cache: InMemoryResponseCache | None = None) -> LLMGateway:
    return LLMGateway(model, CallBudget(max_llm_calls=1000), cache)


def _biased_model() -> FakeChatModel:
    return FakeChatModel(routing_responder, logprobs=biased_sentiment_logprobs)


PROMPT = Prompt(
    "Classify the sentiment as positive or negative.",
    format=PromptFormat(answer_prefix="Sentiment:"),
    output_name="sentiment",
    labels=LABELS,
)


async def test_evaluation_by_label_probabilities_applies_the_prompts_calibration() -> None:
    model = _biased_model()
    gateway = _gateway(model, InMemoryResponseCache())
    examples = sentiment_examples(20, "lp")
    settings = CallSettings(scoring=Scoring.LABEL_PROBABILITIES)
    raw = await evaluate_prompt(gateway, SENTIMENT_TASK, PROMPT, examples, settings)
    positives = sum(ex.output == "positive" for ex in examples) / len(examples)
    assert raw.score.mean == pytest.approx(positives)
    assert raw.score.scoring is Scoring.LABEL_PROBABILITIES
    assert all(r.prediction == "positive" for r in raw.results)
    assert all(req.max_tokens == 1 and req.top_logprobs == 20 for req in model.requests)

    calibrated = await calibrate(gateway, PROMPT, None)
    assert calibrated.calibration is not None
    assert calibrated.calibration.content_free_inputs == ("N/A", "", "[MASK]")
    fixed = await evaluate_prompt(gateway, SENTIMENT_TASK, calibrated, examples, settings)
    assert fixed.score.mean == 1.0
    assert {r.prediction for r in fixed.results} == set(LABELS)
    assert all(sum(r.label_probabilities.values()) == pytest.approx(1) for r in fixed.results)


async def test_examples_without_a_label_token_fall_back_to_generation() -> None:
    model = _biased_model()
    examples = (*sentiment_examples(3, "lp"), Example("no label here", "positive", id="odd"))
    settings = CallSettings(scoring=Scoring.LABEL_PROBABILITIES)
    evaluation = await evaluate_prompt(_gateway(model), SENTIMENT_TASK, PROMPT, examples, settings)
    generated = [r for r in model.requests if r.top_logprobs == 0]
    assert len(generated) == 1 and generated[0].max_tokens == 32
    assert evaluation.results[-1].label_probabilities == {}
    assert evaluation.score.examples == 4


CONFIG = search_spec(
    max_trials=8,
    max_llm_calls=3000,
    num_instruction_candidates=0,
    max_demos=2,
    minibatch_size=8,
    num_demo_sets=1,
    num_finalists=2,
    num_reflection_candidates=0,
)
DATA = sentiment_splits(train=12, validation=24, test=12)


def _runner(model: FakeChatModel) -> Runner:
    deps = RunnerDeps(
        model,
        model,
        FakeEmbedder(),
        RecordingObserver(),
        InMemoryResponseCache(),
        clock=fixed_clock(),
    )
    return Runner(deps)


async def test_a_run_on_an_endpoint_with_logprobs_scores_by_label_probabilities() -> None:
    model = _biased_model()
    result = await _runner(model).run(SENTIMENT_TASK, DATA, CONFIG, "lp-1")
    assert result.scoring is Scoring.LABEL_PROBABILITIES
    assert result.best.validation.scoring is Scoring.LABEL_PROBABILITIES
    assert result.baseline.test is not None
    assert result.baseline.test.scoring is Scoring.LABEL_PROBABILITIES
    task_calls = [r for r in model.requests if "You write clear" not in r.messages[0].content]
    assert task_calls and all(r.max_tokens == 1 for r in task_calls)
    # calibration is searched and wins on this biased model
    assert result.best.prompt.calibration is not None
    assert result.best.validation.mean == 1.0


async def test_calibrate_true_puts_weights_on_every_searched_prompt() -> None:
    model = _biased_model()
    spec = dataclasses.replace(CONFIG, calibrate=True)
    result = await _runner(model).run(SENTIMENT_TASK, DATA, spec, "lp-2")
    assert result.improved
    weights = result.best.prompt.calibration.weights if result.best.prompt.calibration else {}
    assert weights["negative"] > weights["positive"]
    assert result.baseline.prompt.calibration is None


async def test_each_warm_start_demo_set_is_followed_by_its_calibrated_twin() -> None:
    """Under label probabilities the warm start tries every demo set raw and then calibrated;
    the twin's label calls are the raw trial's (answered by the cache), so it pays only the
    content-free calls."""
    model = _biased_model()
    storage = optuna.storages.InMemoryStorage()
    deps = RunnerDeps(
        model, model, FakeEmbedder(), RecordingObserver(), InMemoryResponseCache(),
        clock=fixed_clock(),
    )  # fmt: skip
    await Runner(deps, storage=storage).run(SENTIMENT_TASK, DATA, CONFIG, "twins")
    trials = optuna.load_study(study_name="twins", storage=storage).trials
    queued = [t for t in trials[1:] if "fixed_params" in t.system_attrs]
    pairs = [(t.params["demo_set"], t.params["calibrate"]) for t in queued]
    assert pairs[:4] == [(0, False), (0, True), (1, False), (1, True)]
    first, twin = queued[0], queued[1]
    assert {k: v for k, v in twin.params.items() if k != "calibrate"} == {
        k: v for k, v in first.params.items() if k != "calibrate"
    }
    masked = [r for r in model.requests if any("[MASK]" in m.content for m in r.messages)]
    assert masked  # the twins estimated their calibration ...
    keys = [cache_key("fake", r) for r in model.requests]
    assert len(keys) == len(set(keys))  # ... and no call was paid twice


async def test_a_run_on_an_endpoint_without_logprobs_falls_back_with_a_note() -> None:
    model = FakeChatModel(routing_responder)
    result = await _runner(model).run(SENTIMENT_TASK, DATA, CONFIG, "gen-1")
    assert result.scoring is Scoring.GENERATION
    assert "no log probabilities" in result.scoring_note
    assert result.best.validation.scoring is Scoring.GENERATION
    assert result.best.prompt.calibration is None


async def test_asked_label_probabilities_without_logprobs_fail_naming_search_scoring() -> None:
    spec = dataclasses.replace(CONFIG, scoring=Scoring.LABEL_PROBABILITIES)
    with pytest.raises(FailedPrecondition, match=r"search\.scoring"):
        await _runner(FakeChatModel(routing_responder)).run(SENTIMENT_TASK, DATA, spec, "x")


async def test_indistinguishable_labels_use_generation_with_a_reason() -> None:
    task = dataclasses.replace(
        SENTIMENT_TASK, labels=("pos_review", "pos_other"), metric=Metric.LABEL_CHOICE
    )
    data = sentiment_splits(train=4, validation=8, test=0)
    data = dataclasses.replace(
        data,
        train=tuple(dataclasses.replace(e, output="pos_review") for e in data.train),
        validation=tuple(dataclasses.replace(e, output="pos_other") for e in data.validation),
    )
    spec = search_spec(CONFIG, max_trials=2)
    result = await _runner(_biased_model()).run(task, data, spec, "gen-2")
    assert result.scoring is Scoring.GENERATION
    assert "first words" in result.scoring_note


def test_the_estimate_counts_the_probe_fallbacks_and_calibration_calls() -> None:
    """An upper bound: the probe, a generation fallback for every example the label
    probabilities might not answer, and the content-free calls of every calibrated trial."""
    big = search_spec(CONFIG, max_llm_calls=0)
    generation = estimate(
        SENTIMENT_TASK, DATA, dataclasses.replace(big, scoring=Scoring.GENERATION)
    )
    auto = estimate(SENTIMENT_TASK, DATA, big)
    never = estimate(SENTIMENT_TASK, DATA, dataclasses.replace(big, calibrate=False))
    assert big.num_instruction_candidates == big.num_reflection_candidates == 0
    scored = generation.llm_calls  # no proposer calls: every call scores one example
    assert auto.llm_calls - generation.llm_calls == 1 + scored + 3 * big.budget.max_trials
    assert never.llm_calls - generation.llm_calls == 1 + scored
