"""Metrics through the gateway: the LLM judge and embedding similarity; usage by role."""

from __future__ import annotations

import pytest

from prompttune.contract import Example, Metric, Prompt, TaskSpec
from prompttune.search import (
    CallBudget,
    CallSettings,
    ChatRequest,
    ChatResponse,
    EmbeddingScorer,
    FailedPrecondition,
    InvalidArgument,
    JudgeScorer,
    LLMGateway,
    UsageLedger,
    build_scorer,
    evaluate_prompt,
    parse_judge_score,
    score_answer,
    validate_task,
)
from tests.fakes import FakeChatModel, FakeEmbedder, InMemoryResponseCache


@pytest.mark.parametrize(
    ("verdict", "expected"),
    [
        ("The answer is right. Score: 4/5", 0.8),
        ("Score: 5", 1.0),
        ("score is 3", 0.6),
        ("Rating: 0.25", 0.25),
        ("I'd give it 7 out of 10.", 0.7),
        ("**Score:** 2/5 because it misses the point", 0.4),
        ("90%", 0.9),
        ("Yes, it matches the reference.", 1.0),
        ("Incorrect: the reference says otherwise.", 0.0),
        ("No.", 0.0),
        ("Score: 9/5", 1.0),
        ("I cannot tell.", None),
        ("", None),
    ],
)
def test_parse_judge_score(verdict: str, expected: float | None) -> None:
    assert parse_judge_score(verdict) == (None if expected is None else pytest.approx(expected))


JUDGE_TASK = TaskSpec(
    description="Summarise the text in one sentence.",
    seed_instruction="Summarise the text.",
    metric=Metric.LLM_JUDGE,
    rubric="Faithful to the text and at most one sentence.",
)
EXAMPLES = (
    Example({"input": "cats purr when content"}, "Cats purr when happy.", id="a"),
    Example({"input": "dogs bark at strangers"}, "Dogs bark at strangers.", id="b"),
)


def judge_verdict(request: ChatRequest) -> str:
    answer = request.messages[-1].content.rsplit("Answer to grade:\n", 1)[-1]
    return "Looks faithful. Score: 4/5" if "cats" in answer else "Hmm."


async def test_judge_metric_scores_through_the_gateway_with_role_judge() -> None:
    budget, ledger, cache = CallBudget(max_llm_calls=10), UsageLedger(), InMemoryResponseCache()
    task_model = FakeChatModel(lambda r: r.messages[-1].content)
    judge_model = FakeChatModel(judge_verdict, identity="judge|m")
    task = LLMGateway(task_model, budget, cache, ledger=ledger)
    judge = LLMGateway(judge_model, budget, cache, ledger=ledger)
    settings = CallSettings(scorer=build_scorer(JUDGE_TASK, judge))
    evaluation = await evaluate_prompt(task, JUDGE_TASK, Prompt("Summarise."), EXAMPLES, settings)
    first, second = evaluation.results
    assert first.score == pytest.approx(0.8) and not first.error
    assert second.error.startswith("judge verdict has no score") and second.answer
    assert evaluation.score.failed == 1 and evaluation.score.mean == pytest.approx(0.8)
    roles = ledger.by_role()
    assert roles["task"].llm_calls == 2 and roles["judge"].llm_calls == 2
    assert budget.calls_used == 4
    # Judge verdicts are cached like any call: a rerun costs nothing.
    await evaluate_prompt(task, JUDGE_TASK, Prompt("Summarise."), EXAMPLES, settings)
    assert budget.calls_used == 4 and ledger.role("judge").cache_hits == 2


def test_judge_prompt_carries_rubric_reference_and_answer() -> None:
    gateway = LLMGateway(FakeChatModel(lambda r: ""), CallBudget())
    request = JudgeScorer(JUDGE_TASK, gateway).request(EXAMPLES[0], "Cats purr.")
    text = "\n".join(m.content for m in request.messages)
    assert JUDGE_TASK.rubric in text and EXAMPLES[0].output in text and "Cats purr." in text
    assert request.temperature == 0.0


def test_judge_metric_needs_rubric_and_judge() -> None:
    with pytest.raises(InvalidArgument, match="rubric"):
        validate_task(TaskSpec("d", seed_instruction="s", metric=Metric.LLM_JUDGE))
    with pytest.raises(FailedPrecondition):
        build_scorer(JUDGE_TASK)
    with pytest.raises(FailedPrecondition):
        score_answer(JUDGE_TASK, "a", "b")


async def test_embedding_similarity_metric() -> None:
    scorer = EmbeddingScorer(FakeEmbedder())
    example = Example({"input": "q"}, "the cat sat on the mat", id="x")
    assert await scorer.score(example, "the cat sat on the mat") == pytest.approx(1.0)
    partial = await scorer.score(example, "the cat sat somewhere else")
    assert 0.2 < partial < 1.0
    assert await scorer.score(example, "") == 0.0
    task = TaskSpec("d", seed_instruction="s", metric=Metric.EMBEDDING_SIMILARITY)
    assert isinstance(build_scorer(task, embedder=FakeEmbedder()), EmbeddingScorer)
    with pytest.raises(FailedPrecondition):
        build_scorer(task)


async def test_text_metrics_keep_their_behaviour_through_the_scorer() -> None:
    task = TaskSpec("d", seed_instruction="s", labels=("yes", "no"), metric=Metric.LABEL_CHOICE)
    scorer = build_scorer(task)
    example = Example({"input": "q"}, "yes", id="x")
    assert await scorer.score(example, "I would say Yes.") == 1.0
    assert await scorer.score(example, "no") == 0.0


class MultiSampleFake(FakeChatModel):
    """A fake that also serves `n` samples per call."""

    async def complete_many(self, request: ChatRequest, n: int) -> list[ChatResponse]:
        self.calls += 1
        return [ChatResponse(f"s{i}", 3 if i == 0 else 0, 1 if i == 0 else 0) for i in range(n)]


async def test_complete_samples_uses_n_and_caches_each_sample() -> None:
    cache, budget = InMemoryResponseCache(), CallBudget()
    model = MultiSampleFake(lambda r: "single")
    gateway = LLMGateway(model, budget, cache)
    request = ChatRequest(EXAMPLES_MESSAGES, 0.8, 5)
    samples = await gateway.complete_samples(request, 3, "proposer")
    assert [s.text for s in samples] == ["s0", "s1", "s2"] and model.calls == 1
    assert budget.calls_used == 1 and gateway.usage().prompt_tokens == 3
    again = await gateway.complete_samples(request, 3, "proposer")
    assert again == samples and model.calls == 1
    plain = LLMGateway(FakeChatModel(lambda r: f"one-{r.sample}"), CallBudget(), cache=None)
    texts = [s.text for s in await plain.complete_samples(request, 2, "proposer")]
    assert texts == ["one-0", "one-1"]


EXAMPLES_MESSAGES = (
    JudgeScorer(JUDGE_TASK, LLMGateway(FakeChatModel(lambda r: ""), CallBudget()))
    .request(EXAMPLES[0], "x")
    .messages
)
