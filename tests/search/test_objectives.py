"""Optimising the worst label instead of the mean, on an imbalanced task (SMS spam)."""

from __future__ import annotations

import pytest

from prompttune.contract import JobResult, Objective
from prompttune.search import DatasetSplits, Runner, RunnerDeps
from tests.fakes import (
    SMS_SPAM,
    SPAM_TASK,
    FakeChatModel,
    FakeEmbedder,
    InMemoryResponseCache,
    RecordingObserver,
    fixed_clock,
    search_spec,
    sms_spam_examples,
    spam_responder,
)

pytestmark = pytest.mark.skipif(not SMS_SPAM.exists(), reason="needs ../shared/datasets")


def spam_splits() -> DatasetSplits:
    return DatasetSplits(
        train=sms_spam_examples("train", 60),
        validation=sms_spam_examples("dev", 80),
        test=sms_spam_examples("test", 150),
    )


async def optimise(splits: DatasetSplits, objective: Objective) -> JobResult:
    examples = (*splits.train, *splits.validation, *splits.test)
    model = FakeChatModel(spam_responder({e.inputs["input"]: e.output for e in examples}))
    deps = RunnerDeps(
        model,
        model,
        FakeEmbedder(),
        RecordingObserver(),
        InMemoryResponseCache(),
        clock=fixed_clock(),
    )
    spec = search_spec(
        objective=objective,
        max_trials=16,
        max_llm_calls=20_000,
        num_instruction_candidates=0,
        max_demos=4,
        minibatch_size=20,
        num_demo_sets=2,
        seed=3,
    )
    return await Runner(deps).run(SPAM_TASK, splits, spec, study_name=f"spam-{objective}")


def worst_recall(result: JobResult) -> float:
    test = result.best.test
    assert test is not None
    return min(m.recall for m in test.label_metrics.values())


async def test_optimising_the_worst_label_raises_its_recall_over_optimising_the_mean() -> None:
    splits = spam_splits()
    spam_share = sum(e.output == "spam" for e in splits.test) / len(splits.test)
    assert 0.05 < spam_share < 0.25  # imbalanced: about 13% spam

    by_mean = await optimise(splits, Objective.MEAN)
    by_worst = await optimise(splits, Objective.WORST_LABEL)

    assert by_mean.improved and by_worst.improved
    mean_test, worst_test = by_mean.best.test, by_worst.best.test
    assert mean_test is not None and worst_test is not None
    # the mean objective prefers the majority-biased prompt: higher mean, spam mostly missed
    assert mean_test.mean > worst_test.mean
    assert mean_test.label_metrics["spam"].recall < 0.3
    # the worst-label objective prefers the prompt that catches spam
    assert worst_recall(by_worst) > worst_recall(by_mean) + 0.4
    assert worst_test.confusion is not None
    assert worst_test.confusion.count("spam", "spam") > mean_test.confusion.count("spam", "spam")  # type: ignore[union-attr]
