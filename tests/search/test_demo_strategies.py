"""Bootstrapped and kNN demonstrations, label-balanced ordering and kNN rendering."""

from __future__ import annotations

import dataclasses

from prompttune.search import (
    Budget,
    ChatMessage,
    DemoLayout,
    Example,
    LLMGateway,
    Prompt,
    PromptFormat,
    build_demo_sets,
    render_messages,
    score_examples,
)
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
    Example("p1", {"input": "the plot was dull"}, "negative"),
    Example("p2", {"input": "the acting was superb"}, "positive"),
    Example("p3", {"input": "the ending was dull and slow"}, "negative"),
    Example("p4", {"input": "a charming score"}, "positive"),
)


def test_balance_labels_alternates_in_order_of_first_appearance() -> None:
    examples = [Example(f"e{i}", {"input": str(i)}, label) for i, label in enumerate("nnnpp")]
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
    messages = render_messages(prompt, {"input": "the plot was dull"}, FakeEmbedder())
    demos = [m.content for m in messages if m.role == "user"][:-1]
    # the identical pool example is skipped; the most similar comes last
    assert demos == ["the acting was superb", "the ending was dull and slow"]
    other = render_messages(prompt, {"input": "a charming score indeed"}, FakeEmbedder())
    assert [m.content for m in other if m.role == "user"][-2] == "a charming score"
    assert len(render_messages(prompt, {"input": "x"})) == 1 + 2 * 2 + 1  # no embedder: first k


def test_knn_inline_layout_and_static_demos_come_first() -> None:
    fixed = Example("f", {"input": "fixed demo"}, "positive")
    prompt = Prompt(
        "Classify.",
        demos=(fixed,),
        format=PromptFormat(demo_layout=DemoLayout.INLINE),
        demo_pool=POOL,
        knn_k=1,
    )
    (system, user) = render_messages(prompt, {"input": "dull plot"}, FakeEmbedder())
    assert system == ChatMessage("system", "Classify.")
    assert user.content.index("fixed demo") < user.content.index("the plot was dull")


async def test_bootstrapped_set_keeps_what_the_model_answers_correctly() -> None:
    train = sentiment_examples(20)
    tried = bootstrap_candidates(train, max_demos=3, seed=1)
    assert len(tried) == 3 * BOOTSTRAP_FACTOR and tried == bootstrap_candidates(train, 3, 1)
    # the model answers "negative" to everything: only negative examples are correct
    model = FakeChatModel(lambda r: "negative")
    gateway = LLMGateway(model, Budget(max_llm_calls=100))
    prompt = Prompt(SENTIMENT_TASK.seed_instruction, labels=SENTIMENT_TASK.labels)
    results = await score_examples(gateway, SENTIMENT_TASK, prompt, tried, CallSettings())
    correct = {r.example_id for r in results if r.score == 1.0}
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
