from __future__ import annotations

import pytest

from prompttune.search import (
    STYLE_TIPS,
    Budget,
    ChatRequest,
    InstructionProposer,
    LLMGateway,
    parse_proposal,
)
from tests.fakes import SENTIMENT_TASK, FakeChatModel, sentiment_examples


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        (
            'Instruction: "Classify the review as positive or negative."',
            "Classify the review as positive or negative.",
        ),
        (
            "Sure! Here is an improved instruction:\n\nDecide if the review is positive.",
            "Decide if the review is positive.",
        ),
        (
            "```\n1. Read the sentence and answer positive or negative.\n```",
            "Read the sentence and answer positive or negative.",
        ),
        ("", None),
        ("ok", None),
        ("x" * 500, None),
    ],
)
def test_parse_proposal(text: str, parsed: str | None) -> None:
    assert parse_proposal(text) == parsed


JUNK = [
    "",
    "never used: this call fails",
    "Instruction: {{}}",
    "x" * 1000,
    "Label it positive or negative, please.",
    "Label it positive or negative, please!",
]


def junk_by_tip(request: ChatRequest) -> str:
    tip = request.messages[-1].content.split("Tip: ")[1].split("\n")[0]
    return JUNK[STYLE_TIPS.index(tip)]


async def test_proposer_survives_junk_failures_and_budget() -> None:
    model = FakeChatModel(junk_by_tip, fail_if=lambda r: "step by step" in str(r))
    gateway = LLMGateway(model, Budget(max_llm_calls=6))
    proposer = InstructionProposer(gateway)
    candidates = await proposer.propose(SENTIMENT_TASK, sentiment_examples(10), count=9)
    assert candidates[0] == SENTIMENT_TASK.seed_instruction
    assert candidates[1:] == ("Label it positive or negative, please.",)  # duplicate dropped
    assert model.calls == 6  # two proposals were refused by the budget without crashing


async def test_each_proposal_uses_a_different_tip() -> None:
    model = FakeChatModel(lambda r: r.messages[-1].content.split("Tip: ")[1][:60])
    proposer = InstructionProposer(LLMGateway(model, Budget()))
    candidates = await proposer.propose(SENTIMENT_TASK, sentiment_examples(10), count=5)
    assert len(candidates) == 6 and len(set(candidates)) == 6  # the seed plus five proposals
    assert all(r.temperature == 0.0 and r.max_tokens == 80 for r in model.requests)
