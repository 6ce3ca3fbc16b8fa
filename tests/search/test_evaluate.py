from __future__ import annotations

import pytest

from prompttune.contract import Prompt
from prompttune.search import BudgetExceeded, CallBudget, LLMGateway, evaluate_prompt
from tests.fakes import SENTIMENT_TASK, FakeChatModel, sentiment_examples


def gold_answer(request: object) -> str:
    text = str(request)
    return (
        "It is positive."
        if any(
            w in text
            for w in ("wonderful", "delightful", "moving", "brilliant", "charming", "superb")
        )
        else "negative"
    )


async def test_failed_calls_are_counted_not_scored_zero() -> None:
    examples = sentiment_examples(10)
    failing = {examples[1].inputs["input"], examples[4].inputs["input"]}
    model = FakeChatModel(gold_answer, fail_if=lambda r: r.messages[-1].content in failing)
    gateway = LLMGateway(model, CallBudget())
    evaluation = await evaluate_prompt(gateway, SENTIMENT_TASK, Prompt("Classify."), examples)
    assert evaluation.score.mean == 1.0
    assert (evaluation.score.examples, evaluation.score.failed) == (8, 2)
    errors = [r.id for r in evaluation.results if r.error]
    assert errors == [examples[1].id, examples[4].id]
    assert evaluation.score.per_label == {"negative": 1.0, "positive": 1.0}
    assert gateway.usage("task").failed_calls == 2


async def test_scores_with_ci_and_per_label() -> None:
    examples = sentiment_examples(20)
    model = FakeChatModel(lambda r: "positive")
    evaluation = await evaluate_prompt(
        LLMGateway(model, CallBudget()), SENTIMENT_TASK, Prompt("C."), examples
    )
    assert evaluation.score.mean == 0.5
    assert evaluation.score.ci_low < 0.5 < evaluation.score.ci_high
    assert evaluation.score.per_label == {"negative": 0.0, "positive": 1.0}


async def test_budget_exceeded_propagates() -> None:
    model = FakeChatModel(lambda r: "positive")
    gateway = LLMGateway(model, CallBudget(max_llm_calls=3))
    with pytest.raises(BudgetExceeded):
        await evaluate_prompt(gateway, SENTIMENT_TASK, Prompt("C."), sentiment_examples(5))
    assert model.calls == 3
