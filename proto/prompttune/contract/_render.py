"""Rendering a `Prompt` and one input into chat messages: the only renderer there is.

The SDK, `RenderPrompt`, exports and the engine's scoring all call `render`. Static parts come
first (instruction, then demonstrations) and the input last, so that servers with prefix
caching reuse the shared prefix. User data is only concatenated, never passed through
`str.format` or a template engine, so braces and markers in data are inert.

A prompt with ``knn_k`` > 0 retrieves its demonstrations per input: the pool examples most
similar to the input by embedding cosine, most similar last (next to the input). That needs an
`Embedder`; without one `render` raises `MissingEmbedder`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from prompttune.contract._types import (
    ChatMessage,
    DemoLayout,
    Example,
    InstructionPlacement,
    Prompt,
)

REASONING_CUE = (
    'Think step by step, then write the final answer on the last line as "Answer: <answer>".'
)
_ANSWER_MARK = re.compile(r"answer\s*:", re.IGNORECASE)


class Embedder(Protocol):
    """Sentence embeddings: one L2-normalised vector per text, as rows of a 2-D array (a numpy
    array or nested sequences of floats)."""

    def embed(self, texts: Sequence[str]) -> Any: ...


class MissingEmbedder(ValueError):
    """A kNN prompt was rendered without an embedder to retrieve its demonstrations."""


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


def _with_cue(text: str, prompt: Prompt) -> str:
    if prompt.format.reasoning:
        return f"{text}\n\n{REASONING_CUE}"
    prefix = prompt.format.answer_prefix
    return f"{text}\n{prefix}" if prefix else text


def _demo_answer(prompt: Prompt, demo: Example) -> str:
    return f"Answer: {demo.output}" if prompt.format.reasoning else demo.output


def _inline_block(prompt: Prompt, demos: tuple[Example, ...]) -> str:
    title = "Answer" if prompt.format.reasoning else field_title(prompt.output_name)
    blocks = [
        f"{format_inputs(demo.inputs, prompt.input_fields, labelled=True)}\n{title}: {demo.output}"
        for demo in demos
    ]
    return "Examples:\n\n" + "\n\n".join(blocks)


def _demo_turns(prompt: Prompt, demos: tuple[Example, ...]) -> list[ChatMessage]:
    turns: list[ChatMessage] = []
    for demo in demos:
        user_text = _with_cue(format_inputs(demo.inputs, prompt.input_fields), prompt)
        turns.append(ChatMessage("user", user_text))
        turns.append(ChatMessage("assistant", _demo_answer(prompt, demo)))
    return turns


def _final_user_text(prompt: Prompt, demos: tuple[Example, ...], inputs: Mapping[str, str]) -> str:
    inline = prompt.format.demo_layout is DemoLayout.INLINE and bool(demos)
    parts = [_inline_block(prompt, demos)] if inline else []
    parts.append(format_inputs(inputs, prompt.input_fields, labelled=inline))
    return _with_cue("\n\n".join(parts), prompt)


def _similarities(vectors: Any) -> list[float]:
    # A numpy array multiplies in one call; nested sequences (an SDK embedder) loop in Python.
    if hasattr(vectors, "__matmul__"):
        return [float(value) for value in vectors[1:] @ vectors[0]]
    query = vectors[0]
    return [sum(a * b for a, b in zip(row, query, strict=True)) for row in vectors[1:]]


def retrieve_demos(
    prompt: Prompt, inputs: Mapping[str, str], embedder: Embedder | None
) -> tuple[Example, ...]:
    """The ``knn_k`` pool examples nearest to `inputs`, most similar last; pool examples with
    the very same input are skipped. Raises `MissingEmbedder` for a kNN prompt without one."""
    if prompt.knn_k <= 0 or not prompt.demo_pool:
        return ()
    query = format_inputs(inputs, prompt.input_fields)
    pool = [ex for ex in prompt.demo_pool if format_inputs(ex.inputs, prompt.input_fields) != query]
    k = min(prompt.knn_k, len(pool))
    if k == 0:
        return ()
    if embedder is None:
        raise MissingEmbedder(
            "this prompt retrieves kNN demonstrations: render it with an embedder "
            "(the server's RenderPrompt has one)"
        )
    texts = [query, *(format_inputs(ex.inputs, prompt.input_fields) for ex in pool)]
    similarity = _similarities(embedder.embed(texts))
    nearest = sorted(range(len(pool)), key=lambda i: (-similarity[i], pool[i].id))[:k]
    return tuple(pool[i] for i in reversed(nearest))


def render_with_demos(
    prompt: Prompt, inputs: Mapping[str, str], demos: tuple[Example, ...]
) -> tuple[ChatMessage, ...]:
    """Chat messages for one input with these demonstrations (the static ones plus any
    retrieved). SYSTEM placement puts the instruction in a system message; USER placement at
    the top of the first user message. CHAT_TURNS demos are user/assistant pairs; INLINE demos
    form one "Examples:" block in the final user message. The answer prefix (or the reasoning
    cue) ends every user message that expects an answer."""
    messages: list[ChatMessage] = []
    instruction = prompt.instruction.strip()
    if instruction and prompt.format.instruction_placement is InstructionPlacement.SYSTEM:
        messages.append(ChatMessage("system", instruction))
    if prompt.format.demo_layout is DemoLayout.CHAT_TURNS:
        messages.extend(_demo_turns(prompt, demos))
    messages.append(ChatMessage("user", _final_user_text(prompt, demos, inputs)))
    if instruction and prompt.format.instruction_placement is InstructionPlacement.USER:
        first = next(i for i, message in enumerate(messages) if message.role == "user")
        messages[first] = ChatMessage("user", f"{instruction}\n\n{messages[first].content}")
    return tuple(messages)


def render(
    prompt: Prompt, inputs: Mapping[str, str] | str, embedder: Embedder | None = None
) -> tuple[ChatMessage, ...]:
    """The chat messages for one new input, as ``RenderPrompt`` returns them.

    A plain string is short for ``{"input": text}``. Raises KeyError naming missing input
    fields, and `MissingEmbedder` for a kNN prompt rendered without an embedder.
    """
    values = {"input": inputs} if isinstance(inputs, str) else dict(inputs)
    missing = [name for name in prompt.input_fields if name not in values]
    if missing:
        raise KeyError(f"missing input field(s) {missing}")
    demos = prompt.demos + retrieve_demos(prompt, values, embedder)
    return render_with_demos(prompt, values, demos)


def to_openai_messages(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    """``[{"role": ..., "content": ...}]``, ready for ``client.chat.completions.create``."""
    return [{"role": message.role, "content": message.content} for message in messages]


def answer_max_tokens(prompt: Prompt, max_tokens: int, reasoning_cap: int = 256) -> int:
    """Answer cap of one call: reasoning prompts get max(`max_tokens`, `reasoning_cap`)."""
    return max(max_tokens, reasoning_cap) if prompt.format.reasoning else max_tokens


def final_answer(prompt: Prompt, text: str) -> str:
    """The part of a model answer the metric scores: after the last "Answer:" for reasoning
    prompts (the whole text when the mark is missing), the whole text otherwise."""
    if not prompt.format.reasoning:
        return text
    marks = list(_ANSWER_MARK.finditer(text))
    return text[marks[-1].end() :].strip() if marks else text


def prompt_token_count(prompt: Prompt) -> int:
    """Whitespace-token estimate of the prompt's static part (everything but the input;
    retrieved kNN demonstrations are estimated by the pool's first ``knn_k``)."""
    empty = {name: "" for name in prompt.input_fields}
    demos = prompt.demos + prompt.demo_pool[: max(prompt.knn_k, 0)]
    messages = render_with_demos(prompt, empty, demos)
    return sum(len(message.content.split()) for message in messages)
