"""Rendering a `Prompt` and one example's inputs into chat messages.

Static parts come first (instruction, then demonstrations) and the example's input last, so
that servers with prefix caching reuse the shared prefix. User data is only ever concatenated,
never passed through `str.format` or a template engine, so braces in data are harmless.
"""

from __future__ import annotations

from collections.abc import Mapping

from prompttune.search._types import ChatMessage, DemoLayout, Example, InstructionPlacement, Prompt


def field_title(name: str) -> str:
    """Display name of a field: ``question_text`` -> ``Question text``."""
    words = name.replace("_", " ").strip()
    return words[:1].upper() + words[1:]


def format_inputs(
    inputs: Mapping[str, str], fields: tuple[str, ...], labelled: bool = False
) -> str:
    """One field named ``input`` is plain text; several fields are ``Field: value`` lines.

    `labelled` forces ``Field: value`` lines even for a single field (inline examples).
    """
    if fields == ("input",) and not labelled:
        return inputs.get("input", "")
    return "\n".join(f"{field_title(name)}: {inputs.get(name, '')}" for name in fields)


def _with_prefix(text: str, answer_prefix: str) -> str:
    return f"{text}\n{answer_prefix}" if answer_prefix else text


def _inline_block(prompt: Prompt) -> str:
    blocks = [
        f"{format_inputs(demo.inputs, prompt.input_fields, labelled=True)}\n"
        f"{field_title(prompt.output_name)}: {demo.output}"
        for demo in prompt.demos
    ]
    return "Examples:\n\n" + "\n\n".join(blocks)


def _demo_turns(prompt: Prompt, demos: tuple[Example, ...]) -> list[ChatMessage]:
    turns: list[ChatMessage] = []
    for demo in demos:
        user_text = _with_prefix(
            format_inputs(demo.inputs, prompt.input_fields), prompt.format.answer_prefix
        )
        turns.append(ChatMessage("user", user_text))
        turns.append(ChatMessage("assistant", demo.output))
    return turns


def _final_user_text(prompt: Prompt, inputs: Mapping[str, str]) -> str:
    inline = prompt.format.demo_layout is DemoLayout.INLINE and bool(prompt.demos)
    parts = [_inline_block(prompt)] if inline else []
    parts.append(format_inputs(inputs, prompt.input_fields, labelled=inline))
    return _with_prefix("\n\n".join(parts), prompt.format.answer_prefix)


def render_messages(prompt: Prompt, inputs: Mapping[str, str]) -> tuple[ChatMessage, ...]:
    """Chat messages for one example: instruction, demonstrations, then the input.

    SYSTEM placement puts the instruction in a system message; USER placement puts it at the
    top of the first user message. CHAT_TURNS demos are user/assistant turn pairs; INLINE demos
    form one "Examples:" block in the final user message. A non-empty answer prefix ends every
    user message that expects an answer.
    """
    messages: list[ChatMessage] = []
    instruction = prompt.instruction.strip()
    if instruction and prompt.format.instruction_placement is InstructionPlacement.SYSTEM:
        messages.append(ChatMessage("system", instruction))
    if prompt.format.demo_layout is DemoLayout.CHAT_TURNS:
        messages.extend(_demo_turns(prompt, prompt.demos))
    messages.append(ChatMessage("user", _final_user_text(prompt, inputs)))
    if instruction and prompt.format.instruction_placement is InstructionPlacement.USER:
        first = next(i for i, message in enumerate(messages) if message.role == "user")
        messages[first] = ChatMessage("user", f"{instruction}\n\n{messages[first].content}")
    return tuple(messages)


def prompt_token_count(prompt: Prompt) -> int:
    """Whitespace-token estimate of the prompt's static part (everything but the input)."""
    empty = {name: "" for name in prompt.input_fields}
    return sum(len(message.content.split()) for message in render_messages(prompt, empty))
