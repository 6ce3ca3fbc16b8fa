from __future__ import annotations

from prompttune.contract import (
    ChatMessage,
    DemoLayout,
    Example,
    InstructionPlacement,
    Prompt,
    PromptFormat,
    prompt_token_count,
    render,
)

DEMOS = (
    Example({"input": "great {film}"}, "positive", id="d1"),
    Example({"input": "bad {0} movie"}, "negative", id="d2"),
)


def prompt(**fmt: object) -> Prompt:
    return Prompt("Classify {sentiment}.", DEMOS, PromptFormat(**fmt), output_name="sentiment")  # type: ignore[arg-type]


def test_system_chat_turns_static_first_input_last() -> None:
    messages = render(prompt(), {"input": "so {so} {0}"})
    assert messages == (
        ChatMessage("system", "Classify {sentiment}."),
        ChatMessage("user", "great {film}"),
        ChatMessage("assistant", "positive"),
        ChatMessage("user", "bad {0} movie"),
        ChatMessage("assistant", "negative"),
        ChatMessage("user", "so {so} {0}"),
    )


def test_user_placement_and_answer_prefix() -> None:
    messages = render(
        prompt(instruction_placement=InstructionPlacement.USER, answer_prefix="Sentiment:"),
        {"input": "fine"},
    )
    assert [m.role for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert messages[0].content == "Classify {sentiment}.\n\ngreat {film}\nSentiment:"
    assert messages[-1].content == "fine\nSentiment:"


def test_inline_layout_one_examples_block_before_input() -> None:
    messages = render(prompt(demo_layout=DemoLayout.INLINE), {"input": "ok"})
    assert messages[0] == ChatMessage("system", "Classify {sentiment}.")
    assert messages[1].role == "user"
    assert messages[1].content == (
        "Examples:\n\nInput: great {film}\nSentiment: positive\n\n"
        "Input: bad {0} movie\nSentiment: negative\n\nInput: ok"
    )
    assert len(messages) == 2


def test_several_fields_render_as_lines_in_order() -> None:
    qa = Prompt("Answer.", input_fields=("question", "context"))
    messages = render(qa, {"context": "c {x}", "question": "q?"})
    assert messages[-1].content == "Question: q?\nContext: c {x}"


def test_prompt_token_count_counts_static_part_only() -> None:
    short = Prompt("Classify.")
    long = Prompt("Classify the sentiment.", DEMOS)
    assert prompt_token_count(short) == 1
    assert prompt_token_count(long) == 3 + (2 + 1) + (3 + 1)
