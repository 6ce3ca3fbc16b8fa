"""The embedded models' process manager and the plain-text chat format for base models."""

from __future__ import annotations

from pathlib import Path

import pytest

from prompttune.search import FailedPrecondition
from prompttune.server._llama_serve import plain_text
from prompttune.server._local_model import (
    EMBEDDED_MODELS,
    GEMMA_MODEL_NAME,
    LOCAL_MODEL_NAME,
    LocalModelConfig,
    LocalModelServer,
    server_command,
)


def test_plain_text_reads_as_a_few_shot_text_ending_at_the_answer_cue() -> None:
    messages = [
        {"role": "system", "content": "Classify the sentiment."},
        {"role": "user", "content": "great film\nSentiment:"},
        {"role": "assistant", "content": "positive "},
        {"role": "user", "content": "dull\nSentiment:"},
    ]
    assert plain_text(messages) == (
        "Classify the sentiment.\n\ngreat film\nSentiment: positive\n\ndull\nSentiment:"
    )


def test_plain_text_keeps_a_lone_user_message_as_it_is() -> None:
    assert plain_text([{"role": "user", "content": "Is it spam?\n\nWin now\nLabel:"}]) == (
        "Is it spam?\n\nWin now\nLabel:"
    )


def test_every_managed_server_runs_without_logits_all_and_gemma_reads_plain_text() -> None:
    commands = {
        model.alias: server_command(model, Path("m.gguf"), 1234, LocalModelConfig())
        for model in EMBEDDED_MODELS
    }
    for alias, command in commands.items():
        assert command[command.index("--model") + 1] == "m.gguf"
        # the server's own default keeps every position's logits; the fast path needs none
        assert command[command.index("--logits_all") + 1] == "false"
        assert command[command.index("--model_alias") + 1] == alias
    gemma = commands[GEMMA_MODEL_NAME]
    assert gemma[gemma.index("--chat_format") + 1] == "prompttune-plain"
    # SmolLM2's GGUF carries its own chat template.
    assert "--chat_format" not in commands[LOCAL_MODEL_NAME]


def test_a_model_that_is_not_embedded_is_refused_without_starting_anything() -> None:
    server = LocalModelServer()
    assert server.models() == (LOCAL_MODEL_NAME, GEMMA_MODEL_NAME)
    with pytest.raises(FailedPrecondition, match="not an embedded model"):
        server.base_url("gpt-4")
    server.close()
