"""Entry point of a managed llama.cpp server process: llama-cpp-python's own server, with one
more chat format registered for base models. Run as ``python -m prompttune.server._llama_serve``
with llama_cpp.server's arguments."""

from __future__ import annotations

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


def main() -> None:
    """Registers `PLAIN_CHAT_FORMAT` and runs llama_cpp.server's command line."""
    from llama_cpp.server.__main__ import main as serve

    register_plain_format()
    serve()  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    main()
