"""The search-space options over gRPC: new SearchSpec fields, kNN and reasoning prompts."""

from __future__ import annotations

import pytest
from tests.server.conftest import FAKE_MODEL, TASK, client_examples

from prompttune.client import Client, Example, Prompt, PromptFormat, SearchSpec
from prompttune.contract import Prompt as ContractPrompt
from prompttune.contract import SearchSpec as ContractSearch
from prompttune.contract import wire
from prompttune.search import InvalidArgument
from prompttune.server._limits import Limits
from prompttune.server._validate import validate_prompt, validate_search

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


def decoded_search(spec: SearchSpec) -> ContractSearch:
    return wire.from_message(ContractSearch, wire.to_message(spec), "search")


def test_search_spec_fields_reach_the_engine_spec() -> None:
    default = decoded_search(SearchSpec())
    assert default.allow_reasoning is None and not default.multi_objective
    assert default.num_reflection_candidates == 2
    spec = SearchSpec(allow_reasoning=False, multi_objective=True, num_reflection_candidates=0)
    decoded = decoded_search(spec)
    assert decoded.allow_reasoning is False and decoded.multi_objective
    assert decoded.num_reflection_candidates == 0


def test_parallelism_reaches_the_engine_and_is_range_checked() -> None:
    assert decoded_search(SearchSpec()).parallelism == 1
    assert decoded_search(SearchSpec(parallelism=4)).parallelism == 4
    validate_search(decoded_search(SearchSpec(parallelism=4)), Limits())
    for wrong in (SearchSpec(parallelism=0), SearchSpec(parallelism=17)):
        with pytest.raises(InvalidArgument, match=r"search\.parallelism"):
            validate_search(ContractSearch(parallelism=wrong.parallelism or 0), Limits())
    uncached = decoded_search(SearchSpec(parallelism=2, disable_cache=True))
    with pytest.raises(InvalidArgument, match="response cache"):
        validate_search(uncached, Limits())


def test_knn_and_reasoning_prompts_round_trip() -> None:
    decoded = wire.from_message(ContractPrompt, wire.to_message(KNN), "prompt")
    validate_prompt(decoded, Limits())
    assert decoded.knn_k == 1 and len(decoded.demo_pool) == 3 and decoded.format.reasoning
    assert wire.to_message(decoded) == wire.to_message(KNN)


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
