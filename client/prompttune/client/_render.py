"""Pure-Python rendering of a prompt into OpenAI chat messages, without a server round trip.

Mirrors the server's renderer (``RenderPrompt``) exactly; a test checks they agree. User data
is only concatenated, never formatted or templated, so braces and markers in it are inert.
"""

from __future__ import annotations

from collections.abc import Mapping

from prompttune.client._types import ChatMessage, DemoLayout, InstructionPlacement, Prompt


def _title(name: str) -> str:
    words = name.replace("_", " ").strip()
    return words[:1].upper() + words[1:]


def _inputs_text(inputs: Mapping[str, str], fields: tuple[str, ...], labelled: bool) -> str:
    if fields == ("input",) and not labelled:
        return inputs.get("input", "")
    return "\n".join(f"{_title(name)}: {inputs.get(name, '')}" for name in fields)


REASONING_CUE = (
    'Think step by step, then write the final answer on the last line as "Answer: <answer>".'
)


def _with_cue(text: str, prompt: Prompt) -> str:
    if prompt.format.reasoning:
        return f"{text}\n\n{REASONING_CUE}"
    prefix = prompt.format.answer_prefix
    return f"{text}\n{prefix}" if prefix else text


def _inline_block(prompt: Prompt, fields: tuple[str, ...]) -> str:
    title = "Answer" if prompt.format.reasoning else _title(prompt.output_name or "answer")
    blocks = [
        f"{_inputs_text(demo.inputs, fields, True)}\n{title}: {demo.output}"
        for demo in prompt.demos
    ]
    return "Examples:\n\n" + "\n\n".join(blocks)


def render(prompt: Prompt, inputs: Mapping[str, str] | str) -> list[ChatMessage]:
    """The chat messages for one new input, as the server's ``RenderPrompt`` returns them.

    A plain string is short for ``{"input": text}``. Raises KeyError naming a missing field,
    and ValueError for dynamic kNN prompts (``knn_k`` > 0): their demonstrations are retrieved
    with the server's embedder, so use ``Client.render_prompt`` for them.
    Use ``[{"role": m.role, "content": m.content} for m in messages]`` for the OpenAI API.
    """
    values = {"input": inputs} if isinstance(inputs, str) else dict(inputs)
    fields = prompt.input_fields or ("input",)
    missing = [name for name in fields if name not in values]
    if missing:
        raise KeyError(f"missing input field(s) {missing}")
    if prompt.knn_k > 0 and prompt.demo_pool:
        raise ValueError("dynamic kNN prompts are rendered by the server: use render_prompt")
    messages: list[ChatMessage] = []
    instruction = prompt.instruction.strip()
    placement = prompt.format.instruction_placement
    if instruction and placement is InstructionPlacement.SYSTEM:
        messages.append(ChatMessage("system", instruction))
    inline = prompt.format.demo_layout is DemoLayout.INLINE
    if not inline:
        reasoning = prompt.format.reasoning
        for demo in prompt.demos:
            user = _with_cue(_inputs_text(demo.inputs, fields, False), prompt)
            answer = f"Answer: {demo.output}" if reasoning else demo.output
            messages += [ChatMessage("user", user), ChatMessage("assistant", answer)]
    parts = [_inline_block(prompt, fields)] if inline and prompt.demos else []
    parts.append(_inputs_text(values, fields, inline and bool(prompt.demos)))
    messages.append(ChatMessage("user", _with_cue("\n\n".join(parts), prompt)))
    if instruction and placement is InstructionPlacement.USER:
        first = next(i for i, message in enumerate(messages) if message.role == "user")
        messages[first] = ChatMessage("user", f"{instruction}\n\n{messages[first].content}")
    return messages


def to_openai_messages(messages: list[ChatMessage]) -> list[dict[str, str]]:
    """``[{"role": ..., "content": ...}]``, ready for ``client.chat.completions.create``."""
    return [{"role": message.role, "content": message.content} for message in messages]
