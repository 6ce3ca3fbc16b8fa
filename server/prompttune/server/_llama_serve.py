"""Entry point of a managed llama.cpp server process: llama-cpp-python's own server, with one
more chat format registered for base models and a fast path for label-probability calls. Run
as ``python -m prompttune.server._llama_serve`` with llama_cpp.server's arguments.

Label-probability scoring sends one-token completions asking for the top log probabilities.
llama-cpp-python answers those only when the model keeps the logits of every prompt position
(``logits_all``, which slows every call) and then normalises all of them and sorts the whole
vocabulary in Python. The fast path evaluates the prompt (reusing the cached prefix, as
generation does), reads the last position's logits and takes the top ones with numpy, so the
server runs without ``logits_all``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

PLAIN_CHAT_FORMAT = "prompttune-plain"


def plain_text(messages: list[dict[str, Any]]) -> str:
    """Chat messages as the plain text a base model continues: the system message and each
    user message start a paragraph, an assistant answer follows its user message after one
    space (the user message ends with the answer cue, e.g. "Sentiment:") and ends the
    paragraph. The text ends where the model should answer."""
    text = ""
    for message in messages:
        content = message.get("content")
        content = content if isinstance(content, str) else ""
        if message.get("role") == "assistant":
            text += f" {content.strip()}\n\n"
            continue
        if text and not text.endswith("\n\n"):
            text += "\n\n"
        text += content
    return text


def register_plain_format() -> None:
    """Makes `PLAIN_CHAT_FORMAT` a chat format of llama-cpp-python in this process."""
    from llama_cpp import llama_chat_format

    def format_plain(messages: list[dict[str, Any]], **_: Any) -> Any:
        # A blank line is where a base model starts the next example of its own.
        return llama_chat_format.ChatFormatterResponse(prompt=plain_text(messages), stop="\n\n")

    llama_chat_format.register_chat_format(PLAIN_CHAT_FORMAT)(format_plain)


def next_token_logprobs(llama: Any, tokens: list[int], top: int) -> tuple[list[int], Any]:
    """Evaluates the prompt `tokens` on `llama` (its cached common prefix kept) and returns
    the `top` most likely next tokens, most likely first, and the log probabilities of the
    whole vocabulary."""
    import numpy as np

    cached = llama._input_ids  # the tokens whose keys and values the context holds
    common = 0
    for a, b in zip(cached, tokens, strict=False):
        if a != b:
            break
        common += 1
    reuse = min(common, len(tokens) - 1)  # at least one token is evaluated: fresh logits
    if reuse > 0 and llama._ctx.kv_cache_seq_rm(-1, reuse, -1):
        llama.n_tokens = reuse
    else:
        llama.reset()
    llama.eval(tokens[llama.n_tokens :])
    logits = np.ctypeslib.as_array(llama._ctx.get_logits_ith(-1), shape=(llama.n_vocab(),))
    shifted = logits - logits.max()
    logprobs = shifted - np.log(np.exp(shifted).sum())
    count = min(top, logprobs.size)
    best = np.argpartition(-logprobs, count - 1)[:count]
    ranked = best[np.argsort(-logprobs[best], kind="stable")]
    return [int(t) for t in ranked], logprobs


def first_token_completion(
    llama: Any, tokens: list[int], top: int, model: str | None
) -> dict[str, Any]:
    """The text completion llama-cpp-python returns for a one-token, greedy request with
    `top` log probabilities (the chat handler turns it into a chat completion)."""
    ranked, logprobs = next_token_logprobs(llama, tokens, top)

    def text(token: int) -> str:
        piece: bytes = llama.detokenize([token], prev_tokens=tokens)
        return piece.decode("utf-8", errors="ignore")

    alternatives: dict[str, float] = {}
    for token in ranked:
        alternatives.setdefault(text(token), float(logprobs[token]))
    answer = ranked[0]
    return {
        "id": f"cmpl-{uuid.uuid4()}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model or llama.model_path,
        "choices": [
            {
                "text": text(answer),
                "index": 0,
                "logprobs": {
                    "tokens": [text(answer)],
                    "text_offset": [0],
                    "token_logprobs": [float(logprobs[answer])],
                    "top_logprobs": [alternatives],
                },
                "finish_reason": "length",
            }
        ],
        "usage": {
            "prompt_tokens": len(tokens),
            "completion_tokens": 1,
            "total_tokens": len(tokens) + 1,
        },
    }


def install_first_token_fast_path() -> None:
    """Routes llama-cpp-python's one-token completions that ask for log probabilities (and
    do not stream) through `first_token_completion`, on models loaded without `logits_all`;
    every other call is unchanged. Greedy only: temperature is not applied to the first
    token's alternatives, as in the original."""
    from llama_cpp import Llama

    original = Llama.create_completion

    def create_completion(self: Any, prompt: Any, *args: Any, **kwargs: Any) -> Any:
        top = kwargs.get("logprobs")
        if (
            isinstance(top, int)
            and top > 0
            and kwargs.get("max_tokens") == 1
            and not kwargs.get("stream")
            and not args
            and isinstance(prompt, list)
            and prompt
            and not getattr(self, "_logits_all", False)
        ):
            return first_token_completion(self, prompt, top, kwargs.get("model"))
        return original(self, prompt, *args, **kwargs)

    Llama.create_completion = create_completion  # type: ignore[method-assign]


def main() -> None:
    """Registers `PLAIN_CHAT_FORMAT`, installs the first-token fast path and runs
    llama_cpp.server's command line."""
    from llama_cpp.server.__main__ import main as serve

    register_plain_format()
    install_first_token_fast_path()
    serve()  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    main()
