"""`prompttune demo`'s report: the baseline as a person writes it, the optimised prompt in
plain words, and validation, selection and test scores of both with optimism and gain."""

from __future__ import annotations

import io

from tests.fakes import sentiment_examples

from prompttune.contract import (
    DemoLayout,
    InstructionPlacement,
    JobResult,
    Prompt,
    PromptFormat,
    PromptScores,
    Score,
    Usage,
)
from prompttune.server._commands import write_demo_report

BASELINE = Prompt(
    "Classify the sentiment of the movie review.",
    format=PromptFormat(InstructionPlacement.USER, answer_prefix="Sentiment:"),
    output_name="sentiment",
    labels=("positive", "negative"),
)
BEST = Prompt(
    "Decide whether the review is positive or negative.",
    demos=sentiment_examples(3),
    format=PromptFormat(InstructionPlacement.USER, DemoLayout.INLINE, "Sentiment:"),
    output_name="sentiment",
    labels=("positive", "negative"),
)


def scores(prompt: Prompt, validation: float, selection: float, test: float) -> PromptScores:
    return PromptScores(
        prompt,
        Score(validation, 0.0, 1.0, 25),
        Score(test, 0.0, 1.0, 100),
        selection=Score(selection, 0.0, 1.0, 25),
        optimism=validation - selection,
    )


def test_the_report_shows_both_prompts_their_scores_optimism_and_gain() -> None:
    result = JobResult(
        baseline=scores(BASELINE, 0.56, 0.52, 0.57),
        best=scores(BEST, 0.80, 0.72, 0.69),
        improved=True,
        summary="winner: the best of 3 finalists on selection (0.720)",
        usage=Usage(),
        trials_completed=12,
        trials_pruned=4,
        wall_seconds=60.0,
        stop_reason="max_trials",
    )
    out = io.StringIO()
    write_demo_report(result, out)
    text = out.getvalue()
    assert "[user] Classify the sentiment of the movie review.\n    \n    <input>\n" in text
    assert "Sentiment:" in text.split("Optimised prompt:")[0]
    assert "Instruction: Decide whether the review is positive or negative." in text
    assert (
        "Format: instruction in the user message, before the input; 3 demos (inline); "
        'answer cue "Sentiment:"'
    ) in text
    assert "baseline         0.560       0.520       0.570" in text
    assert "optimised        0.800       0.720       0.690" in text
    assert "Optimism (validation - selection) of the optimised prompt: +0.080" in text
    assert "Gain on test: +12.0 points" in text
    assert "Why: winner: the best of 3 finalists on selection" in text
