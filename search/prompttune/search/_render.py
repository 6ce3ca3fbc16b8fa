"""Rendering a `Prompt` and one example's inputs into chat messages.

Static parts come first (instruction, then demonstrations) and the example's input last, so
that servers with prefix caching reuse the shared prefix. User data is only ever concatenated,
never passed through `str.format` or a template engine, so braces in data are harmless.

A prompt with `knn_k` > 0 retrieves its demonstrations per input: the pool examples most
similar to the input by embedding cosine, most similar last (next to the input). Reasoning
prompts end each user message with a cue to think step by step and finish with
"Answer: ..."; `final_answer` reads the text after the last "Answer:".
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from prompttune.search._protocols import Embedder
from prompttune.search._types import ChatMessage, DemoLayout, Example, InstructionPlacement, Prompt

REASONING_CUE = (
    'Think step by step, then write the final answer on the last line as "Answer: <answer>".'
)
_ANSWER_MARK = re.compile(r"answer\s*:", re.IGNORECASE)


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


def retrieve_demos(
    prompt: Prompt, inputs: Mapping[str, str], embedder: Embedder | None
) -> tuple[Example, ...]:
    """The `knn_k` pool examples nearest to `inputs`, most similar last; pool examples with
    the very same input are skipped. Without an embedder the pool's first `knn_k` stand in
    (used for size estimates only)."""
    if prompt.knn_k <= 0 or not prompt.demo_pool:
        return ()
    query = format_inputs(inputs, prompt.input_fields)
    pool = [ex for ex in prompt.demo_pool if format_inputs(ex.inputs, prompt.input_fields) != query]
    k = min(prompt.knn_k, len(pool))
    if embedder is None or k == 0:
        return tuple(pool[:k])
    vectors = embedder.embed(
        [query, *(format_inputs(ex.inputs, prompt.input_fields) for ex in pool)]
    )
    similarity = vectors[1:] @ vectors[0]
    nearest = sorted(range(len(pool)), key=lambda i: (-float(similarity[i]), pool[i].id))[:k]
    return tuple(pool[i] for i in reversed(nearest))


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


def render_messages(
    prompt: Prompt, inputs: Mapping[str, str], embedder: Embedder | None = None
) -> tuple[ChatMessage, ...]:
    """Chat messages for one example: instruction, demonstrations, then the input.

    SYSTEM placement puts the instruction in a system message; USER placement puts it at the
    top of the first user message. CHAT_TURNS demos are user/assistant turn pairs; INLINE demos
    form one "Examples:" block in the final user message. A non-empty answer prefix (or the
    reasoning cue) ends every user message that expects an answer. kNN prompts need
    `embedder` to retrieve their demonstrations.
    """
    messages: list[ChatMessage] = []
    demos = prompt.demos + retrieve_demos(prompt, inputs, embedder)
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


def prompt_token_count(prompt: Prompt) -> int:
    """Whitespace-token estimate of the prompt's static part (everything but the input)."""
    empty = {name: "" for name in prompt.input_fields}
    return sum(len(message.content.split()) for message in render_messages(prompt, empty))
