"""The search-space options over gRPC: new SearchSpec fields, kNN and reasoning prompts."""

from __future__ import annotations

import pytest
from tests.server.conftest import FAKE_MODEL, TASK, client_examples

from prompttune.client import Client, Example, Prompt, PromptFormat, SearchSpec
from prompttune.contract.wire import from_message, to_message
from prompttune.search import InvalidArgument
from prompttune.server._convert import prompt_from_proto as server_prompt
from prompttune.server._convert import prompt_to_proto as server_prompt_to_proto
from prompttune.server._convert import search_config_from_proto
from prompttune.server._limits import Limits

POOL = (
    Example({"input": "the plot was dull"}, "negative", "p1"),
    Example({"input": "the acting was superb"}, "positive", "p2"),
    Example({"input": "a charming score"}, "positive", "p3"),
)
KNN = Prompt(
    instruction="Classify the sentiment.",
    input_fields=("input",),
    output_name="sentiment",
    labels=("positive", "negative"),
    demo_pool=POOL,
    knn_k=1,
    format=PromptFormat(reasoning=True),
)


def test_search_spec_fields_reach_the_engine_config() -> None:
    default = search_config_from_proto(to_message(SearchSpec()), Limits())
    assert default.allow_reasoning is None and not default.multi_objective
    assert default.num_reflection_candidates == 2
    spec = SearchSpec(allow_reasoning=False, multi_objective=True, num_reflection_candidates=0)
    config = search_config_from_proto(to_message(spec), Limits())
    assert config.allow_reasoning is False and config.multi_objective
    assert config.num_reflection_candidates == 0


def test_parallelism_reaches_the_engine_and_is_range_checked() -> None:
    assert search_config_from_proto(to_message(SearchSpec()), Limits()).parallelism == 1
    spec = SearchSpec(parallelism=4)
    assert search_config_from_proto(to_message(spec), Limits()).parallelism == 4
    assert from_message(SearchSpec, to_message(spec)).parallelism == 4
    for wrong in (SearchSpec(parallelism=0), SearchSpec(parallelism=17)):
        with pytest.raises(InvalidArgument, match=r"search\.parallelism"):
            search_config_from_proto(to_message(wrong), Limits())
    uncached = SearchSpec(parallelism=2, disable_cache=True)
    with pytest.raises(InvalidArgument, match="response cache"):
        search_config_from_proto(to_message(uncached), Limits())


def test_knn_and_reasoning_prompts_round_trip() -> None:
    assert from_message(Prompt, to_message(KNN)) == KNN
    engine = server_prompt(to_message(KNN), Limits())
    assert engine.knn_k == 1 and len(engine.demo_pool) == 3 and engine.format.reasoning
    assert from_message(Prompt, server_prompt_to_proto(engine)) == KNN


def test_render_prompt_retrieves_knn_demos_and_adds_the_reasoning_cue(client: Client) -> None:
    messages = client.render_prompt(KNN, "a charming score indeed")
    assert [m.role for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[1].content.startswith("a charming score")
    assert messages[2].content == "Answer: positive"
    assert "Answer: <answer>" in messages[-1].content


def test_evaluate_prompt_scores_the_text_after_answer(client: Client) -> None:
    examples = client_examples(6, "ev")
    evaluation = client.evaluate_prompt(KNN, TASK, examples, FAKE_MODEL)
    assert evaluation.score.examples == 6 and evaluation.usage.llm_calls == 6
