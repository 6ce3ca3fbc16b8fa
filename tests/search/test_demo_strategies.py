"""Bootstrapped and kNN demonstrations, label-balanced ordering and kNN rendering."""

from __future__ import annotations

import dataclasses

import pytest

from prompttune.contract import (
    ChatMessage,
    DemoLayout,
    Example,
    MissingEmbedder,
    Prompt,
    PromptFormat,
    prompt_token_count,
    render,
)
from prompttune.search import CallBudget, LLMGateway, build_demo_sets, score_examples
from prompttune.search._demos import (
    BOOTSTRAP_FACTOR,
    balance_labels,
    bootstrap_candidates,
    bootstrapped_demo_set,
    knn_demo_set,
)
from prompttune.search._evaluate import CallSettings
from tests.fakes import SENTIMENT_TASK, FakeChatModel, FakeEmbedder, sentiment_examples

POOL = (
    Example({"input": "the plot was dull"}, "negative", id="p1"),
    Example({"input": "the acting was superb"}, "positive", id="p2"),
    Example({"input": "the ending was dull and slow"}, "negative", id="p3"),
    Example({"input": "a charming score"}, "positive", id="p4"),
)


def test_balance_labels_alternates_in_order_of_first_appearance() -> None:
    examples = [Example({"input": str(i)}, label, id=f"e{i}") for i, label in enumerate("nnnpp")]
    assert [e.output for e in balance_labels(examples)] == list("npnpn")
    assert [e.id for e in balance_labels(examples)] == ["e0", "e3", "e1", "e4", "e2"]


def test_random_and_diverse_sets_are_label_balanced_for_classification() -> None:
    train = sentiment_examples(9)[:1] + tuple(e for e in sentiment_examples(40) if e.id > "ex010")
    sets = build_demo_sets(SENTIMENT_TASK, train, FakeEmbedder(), num_sets=3, max_demos=4, seed=2)
    for demo_set in sets:
        assert demo_set.examples == balance_labels(demo_set.examples)
        assert len({e.output for e in demo_set.examples[:2]}) == 2


def test_knn_prompt_retrieves_the_nearest_pool_examples_per_input() -> None:
    prompt = Prompt("Classify.", demo_pool=POOL, knn_k=2, output_name="sentiment")
    messages = render(prompt, {"input": "the plot was dull"}, FakeEmbedder())
    demos = [m.content for m in messages if m.role == "user"][:-1]
    # the identical pool example is skipped; the most similar comes last
    assert demos == ["the acting was superb", "the ending was dull and slow"]
    other = render(prompt, {"input": "a charming score indeed"}, FakeEmbedder())
    assert [m.content for m in other if m.role == "user"][-2] == "a charming score"
    with pytest.raises(MissingEmbedder):
        render(prompt, {"input": "x"})
    assert prompt_token_count(prompt) > 0  # estimates need no embedder


def test_knn_inline_layout_and_static_demos_come_first() -> None:
    fixed = Example({"input": "fixed demo"}, "positive", id="f")
    prompt = Prompt(
        "Classify.",
        demos=(fixed,),
        format=PromptFormat(demo_layout=DemoLayout.INLINE),
        demo_pool=POOL,
        knn_k=1,
    )
    (system, user) = render(prompt, {"input": "dull plot"}, FakeEmbedder())
    assert system == ChatMessage("system", "Classify.")
    assert user.content.index("fixed demo") < user.content.index("the plot was dull")


async def test_bootstrapped_set_keeps_what_the_model_answers_correctly() -> None:
    train = sentiment_examples(20)
    tried = bootstrap_candidates(train, max_demos=3, seed=1)
    assert len(tried) == 3 * BOOTSTRAP_FACTOR and tried == bootstrap_candidates(train, 3, 1)
    # the model answers "negative" to everything: only negative examples are correct
    model = FakeChatModel(lambda r: "negative")
    gateway = LLMGateway(model, CallBudget(max_llm_calls=100))
    prompt = Prompt(SENTIMENT_TASK.seed_instruction, labels=SENTIMENT_TASK.labels)
    results = await score_examples(gateway, SENTIMENT_TASK, prompt, tried, CallSettings())
    correct = {r.id for r in results if r.score == 1.0}
    demo_set = bootstrapped_demo_set(SENTIMENT_TASK, tried, correct, max_demos=3)
    assert demo_set is not None and demo_set.name == "bootstrapped"
    assert [e.output for e in demo_set.examples] == ["negative"] * 3
    assert bootstrapped_demo_set(SENTIMENT_TASK, tried, set(), 3) is None
    assert model.calls == len(tried)


def test_knn_pool_is_capped_and_deterministic() -> None:
    train = sentiment_examples(260)
    pool = knn_demo_set(train, seed=4)
    assert pool is not None and pool.knn and len(pool.examples) == 200
    assert pool == knn_demo_set(tuple(reversed(train)), seed=4)
    assert knn_demo_set(train[:1]) is None
    assert dataclasses.replace(pool, knn=False) != pool
