from __future__ import annotations

import pytest

from prompttune.contract import Example
from prompttune.search import (
    STYLE_TIPS,
    CallBudget,
    ChatRequest,
    InstructionProposer,
    LLMGateway,
    parse_proposal,
)
from prompttune.search._proposer import (
    Mistake,
    ScoredInstruction,
    answers_instead_of_instructing,
    copies_example,
    parse_summary,
)
from tests.fakes import (
    DATASET_SUMMARY,
    SENTIMENT_TASK,
    FakeChatModel,
    FakeEmbedder,
    sentiment_examples,
)


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
        (
            "Task: Follow a chain of people who lie.\nDataset summary: Jamey tells the truth.",
            None,
        ),
        ('Instruction: "Answer yes or no."\nAccuracy: 60% (50 examples)', None),
        ("Tip:\nBe concise.", None),
        ("", None),
        ("ok", None),
        ("x" * 500, None),
    ],
)
def test_parse_proposal(text: str, parsed: str | None) -> None:
    assert parse_proposal(text) == parsed


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        (DATASET_SUMMARY, DATASET_SUMMARY.split("\n\n")[1]),
        ("{}", ""),
        ("", ""),
        ("Summary: " + "Reviews are short. " * 40, ("Reviews are short. " * 21).strip()),
    ],
)
def test_parse_summary(text: str, parsed: str) -> None:
    assert parse_summary(text) == parsed


def test_proposals_that_answer_instead_of_instructing_are_skipped() -> None:
    labels = SENTIMENT_TASK.labels
    assert answers_instead_of_instructing("The sentiment of the review is Positive.", labels)
    assert not answers_instead_of_instructing("Answer positive or negative.", labels)
    assert not answers_instead_of_instructing("Classify the review.", labels)
    assert not answers_instead_of_instructing("The answer is 4.", ())


REVIEWS = tuple(
    Example({"input": f"{text} Review number {index} of the set."}, label, id=f"r{index}")
    for index, (text, label) in enumerate(
        [
            ("A gripping, beautifully acted film about two brothers.", "positive"),
            ("Dull, overlong and badly written from start to finish.", "negative"),
            ("The best thing I have seen in a cinema this year.", "positive"),
            ("I walked out after an hour of this tedious mess.", "negative"),
        ]
    )
)


def test_text_that_quotes_an_example_verbatim_copies_it() -> None:
    quoted = "Label reviews like: a gripping beautifully acted film about two brothers"
    assert copies_example(quoted, REVIEWS)
    assert not copies_example("Decide whether a film review is positive or negative.", REVIEWS)
    assert not copies_example(quoted, [])


async def test_proposals_and_summaries_that_copy_an_example_are_skipped() -> None:
    def quote_a_shown_review(request: ChatRequest) -> str:
        prompt = request.messages[-1].content
        return next(
            (
                f"Reviews such as: {ex.inputs['input']}"
                for ex in REVIEWS
                if ex.inputs["input"] in prompt
            ),
            "Classify the review as positive or negative.",
        )

    model = FakeChatModel(quote_a_shown_review)
    proposer = InstructionProposer(LLMGateway(model, CallBudget(max_llm_calls=20)))
    assert await proposer.summarize(SENTIMENT_TASK, REVIEWS) == ""
    candidates = await proposer.propose(SENTIMENT_TASK, REVIEWS, count=3)
    assert candidates == (SENTIMENT_TASK.seed_instruction,)
    assert model.calls == 4  # the summary and three proposals were all asked for


def is_summary(request: ChatRequest) -> bool:
    return "You describe datasets" in request.messages[0].content


def tip_of(request: ChatRequest) -> str:
    return request.messages[-1].content.split("Tip: ")[1].split("\n")[0]


JUNK = [
    "",
    "never used: this call fails",
    "Instruction: {{}}",
    "x" * 1000,
    "Label it positive or negative, please.",
    "Label it positive or negative, please!",
    "{}",
    "```json\n{}\n```",
]


def junk_by_tip(request: ChatRequest) -> str:
    if is_summary(request):
        return "{}"  # an unusable summary: proposals go on without one
    return JUNK[STYLE_TIPS.index(tip_of(request)) % len(JUNK)]


async def test_proposer_survives_junk_failures_and_budget() -> None:
    model = FakeChatModel(junk_by_tip, fail_if=lambda r: "step by step" in str(r))
    gateway = LLMGateway(model, CallBudget(max_llm_calls=7))
    proposer = InstructionProposer(gateway)
    candidates = await proposer.propose(SENTIMENT_TASK, sentiment_examples(10), count=9)
    assert candidates[0] == SENTIMENT_TASK.seed_instruction
    assert candidates[1:] == ("Label it positive or negative, please.",)  # duplicate dropped
    assert model.calls == 7  # summary + six proposals; three were refused by the budget
    assert "Dataset summary" not in model.requests[1].messages[-1].content


async def test_summary_grounds_every_proposal_and_is_asked_once() -> None:
    def respond(request: ChatRequest) -> str:
        return DATASET_SUMMARY if is_summary(request) else f"Write this: {tip_of(request)}"

    model = FakeChatModel(respond)
    proposer = InstructionProposer(LLMGateway(model, CallBudget()))
    candidates = await proposer.propose(SENTIMENT_TASK, sentiment_examples(10), count=5)
    assert len(candidates) == 6 and len(set(candidates)) == 6  # the seed plus five proposals
    summaries = [r for r in model.requests if is_summary(r)]
    assert len(summaries) == 1 and summaries[0].max_tokens == 120
    proposals = [r for r in model.requests if not is_summary(r)]
    assert len({tip_of(r) for r in proposals}) == 5
    summary = DATASET_SUMMARY.split("\n\n")[1]
    for request in proposals:
        text = request.messages[-1].content
        assert f"Dataset summary: {summary}" in text and text.count("Example:") == 4
        assert request.temperature == 0.0 and request.max_tokens == 80
    await proposer.propose(SENTIMENT_TASK, sentiment_examples(10), count=1)
    assert len([r for r in model.requests if is_summary(r)]) == 1  # kept for the run


async def test_reflection_shows_scores_and_mistakes_and_returns_only_new_ones() -> None:
    def respond(request: ChatRequest) -> str:
        if is_summary(request):
            return DATASET_SUMMARY
        if tip_of(request) == STYLE_TIPS[3]:
            return "Instruction: Read the text and classify it."  # an existing one
        return "Decide whether the review praises or criticises the film: positive or negative."

    model = FakeChatModel(respond)
    proposer = InstructionProposer(LLMGateway(model, CallBudget()), embedder=FakeEmbedder())
    tried = [
        ScoredInstruction("Read the text and classify it.", 0.4, 16),
        ScoredInstruction("Say positive or negative.", 0.7, 32),
    ]
    example = sentiment_examples(3)[1]
    mistakes = [Mistake(example, "I think it is positive.")]
    existing = ("Read the text and classify it.", "Say positive or negative.")
    new = await proposer.reflect(
        SENTIMENT_TASK, sentiment_examples(6), tried, mistakes, existing, count=3
    )
    assert new == (
        "Decide whether the review praises or criticises the film: positive or negative.",
    )
    text = model.requests[1].messages[-1].content
    assert text.index("Accuracy: 40% (16 examples)") < text.index("Accuracy: 70% (32 examples)")
    assert example.inputs["input"] in text and "Model answer: I think it is positive." in text
    assert "Expected sentiment: negative" in text
    assert await proposer.reflect(SENTIMENT_TASK, (), [], [], existing, count=3) == ()
