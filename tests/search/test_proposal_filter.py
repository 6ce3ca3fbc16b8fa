"""Proposals that do not read as an instruction for the task are dropped before any trial,
each with the reason; the seed instruction never is."""

from __future__ import annotations

import dataclasses

import pytest

from prompttune.contract import Metric, TaskSpec
from prompttune.search import CallBudget, ChatRequest, InstructionProposer, LLMGateway
from prompttune.search._proposer import STYLE_TIPS, instruction_problem
from tests.fakes import FakeChatModel, FakeEmbedder, sentiment_examples

SST2 = TaskSpec(
    description="Classify the sentiment of a movie review sentence.",
    seed_instruction="Classify the sentiment of the movie review as positive or negative.",
    labels=("positive", "negative"),
    metric=Metric.LABEL_CHOICE,
    output_name="sentiment",
)
HEALTHY = "Classify the sentiment of the movie review as positive or negative."


def test_the_old_demo_winner_is_mostly_numbers_or_labels() -> None:
    text = "Positive: 100% Positive Negative: 89.7% Negative Neutral:"
    assert instruction_problem(text, SST2) == "mostly numbers or labels"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Classify it.", "too short (2 words)"),
        ("Classify " + "the review " * 50, "too long (101 words)"),
        ("Positive, negative, 50%, 12", "mostly numbers or labels"),
        ("The best instruction gets higher than every instruction above.", "no verb"),
    ],
)
def test_each_problem_is_named(text: str, reason: str) -> None:
    assert instruction_problem(text, SST2) == reason


@pytest.mark.parametrize(
    "text",
    [
        HEALTHY,
        "Is the sentence positive or negative?",
        "Answer positive or negative.",
        "Read the review carefully and reply with one word.",
    ],
)
def test_instructions_for_the_task_pass(text: str) -> None:
    assert instruction_problem(text, SST2) is None


REPLIES = {
    STYLE_TIPS[0]: HEALTHY,
    STYLE_TIPS[1]: "Positive: 100% Positive Negative: 89.7% Negative Neutral:",
    STYLE_TIPS[2]: "Your entire dataset needs to be processed now.",
    STYLE_TIPS[3]: "Write a poem about the ocean and the moon at night.",
    STYLE_TIPS[4]: "Classify the sentiment of the movie review as positive or negative!",
    STYLE_TIPS[5]: "ok",
}


def scripted_proposer(request: ChatRequest) -> str:
    if "You describe datasets" in request.messages[0].content:
        return ""
    tip = request.messages[-1].content.split("Tip: ")[1].split("\n")[0]
    return REPLIES[tip]


async def test_dropped_proposals_are_recorded_with_their_reasons() -> None:
    model = FakeChatModel(scripted_proposer)
    proposer = InstructionProposer(LLMGateway(model, CallBudget()), embedder=FakeEmbedder())
    task = dataclasses.replace(SST2, seed_instruction="Label it.")  # too short, yet kept
    kept = await proposer.propose(task, sentiment_examples(8), count=len(REPLIES))
    assert kept == ("Label it.", HEALTHY)
    reasons = {d.instruction: d.reason for d in proposer.dropped}
    assert reasons["Positive: 100% Positive Negative: 89.7% Negative Neutral:"] == (
        "mostly numbers or labels"
    )
    assert reasons["Your entire dataset needs to be processed now."] == "no verb"
    assert reasons["Write a poem about the ocean and the moon at night."].startswith(
        "unrelated to the task (similarity"
    )
    assert reasons[REPLIES[STYLE_TIPS[4]]] == "duplicate of a kept instruction"
    assert reasons["ok"] == "too short (1 word)"
    assert HEALTHY not in reasons and "Label it." not in reasons


async def test_near_duplicates_are_dropped_by_embedding_similarity() -> None:
    long = (
        "Read the movie review sentence carefully and classify its sentiment as positive or "
        "negative, replying with exactly one of those two words and nothing else at all."
    )
    replies = {STYLE_TIPS[0]: long, STYLE_TIPS[1]: long + " Always."}

    def respond(request: ChatRequest) -> str:
        tip = request.messages[-1].content.split("Tip: ")[1].split("\n")[0]
        return replies.get(tip, "")

    proposer = InstructionProposer(
        LLMGateway(FakeChatModel(respond), CallBudget()), embedder=FakeEmbedder()
    )
    kept = await proposer.propose(SST2, (), count=2)
    assert kept == (SST2.instruction, long)
    assert [d.reason.split(" (")[0] for d in proposer.dropped] == ["near duplicate of a kept one"]
