"""Pure-Python rendering of a prompt into OpenAI chat messages, without a server round trip.

Mirrors the server's renderer (``RenderPrompt``) exactly; a test checks they agree. User data
is only concatenated, never formatted or templated, so braces and markers in it are inert.
"""

from __future__ import annotations

from collections.abc import Mapping

from prompttune.client._types import ChatMessage, DemoLayout, Example, InstructionPlacement, Prompt


def _title(name: str) -> str:
    words = name.replace("_", " ").strip()
    return words[:1].upper() + words[1:]


def _inputs_text(inputs: Mapping[str, str], fields: tuple[str, ...], labelled: bool) -> str:
    if fields == ("input",) and not labelled:
        return inputs.get("input", "")
    return "\n".join(f"{_title(name)}: {inputs.get(name, '')}" for name in fields)


def _with_prefix(text: str, prefix: str) -> str:
    return f"{text}\n{prefix}" if prefix else text


def _inline_block(demos: tuple[Example, ...], fields: tuple[str, ...], output: str) -> str:
    blocks = [
        f"{_inputs_text(demo.inputs, fields, True)}\n{_title(output)}: {demo.output}"
        for demo in demos
    ]
    return "Examples:\n\n" + "\n\n".join(blocks)


def render(prompt: Prompt, inputs: Mapping[str, str] | str) -> list[ChatMessage]:
    """The chat messages for one new input, as the server's ``RenderPrompt`` returns them.

    A plain string is short for ``{"input": text}``. Raises KeyError naming a missing field.
    Use ``[{"role": m.role, "content": m.content} for m in messages]`` for the OpenAI API.
    """
    values = {"input": inputs} if isinstance(inputs, str) else dict(inputs)
    fields = prompt.input_fields or ("input",)
    missing = [name for name in fields if name not in values]
    if missing:
        raise KeyError(f"missing input field(s) {missing}")
    prefix, output = prompt.format.answer_prefix, prompt.output_name or "answer"
    messages: list[ChatMessage] = []
    instruction = prompt.instruction.strip()
    placement = prompt.format.instruction_placement
    if instruction and placement is InstructionPlacement.SYSTEM:
        messages.append(ChatMessage("system", instruction))
    inline = prompt.format.demo_layout is DemoLayout.INLINE
    if not inline:
        for demo in prompt.demos:
            user = _with_prefix(_inputs_text(demo.inputs, fields, False), prefix)
            messages += [ChatMessage("user", user), ChatMessage("assistant", demo.output)]
    parts = [_inline_block(prompt.demos, fields, output)] if inline and prompt.demos else []
    parts.append(_inputs_text(values, fields, inline and bool(prompt.demos)))
    messages.append(ChatMessage("user", _with_prefix("\n\n".join(parts), prefix)))
    if instruction and placement is InstructionPlacement.USER:
        first = next(i for i, message in enumerate(messages) if message.role == "user")
        messages[first] = ChatMessage("user", f"{instruction}\n\n{messages[first].content}")
    return messages


def to_openai_messages(messages: list[ChatMessage]) -> list[dict[str, str]]:
    """``[{"role": ..., "content": ...}]``, ready for ``client.chat.completions.create``."""
    return [{"role": message.role, "content": message.content} for message in messages]
