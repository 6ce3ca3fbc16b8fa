"""A job's best prompt as a file, and any such file read back as the very same `Prompt`.

Every format goes through the contract's document codec, so what is exported is exactly what
the job found, kNN pool and reasoning included:

- ``json`` / ``yaml``: the prompt document itself;
- ``openai``: chat messages with a ``{{field}}`` placeholder per input field, ready for
  chat.completions, plus the full prompt under ``prompttune`` so it can be read back.

`read_prompt` accepts those three, a plain prompt document and a result file written by
``prompttune optimize`` (a job document); `read_recorded_prompt` also returns the model and
task a result file records. ``finetune-openai`` is not a prompt file: `export` writes it
(see `prompttune.server._comparing`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from prompttune.contract import (
    Job,
    ModelSpec,
    Prompt,
    TaskSpec,
    render,
    to_document,
    to_openai_messages,
)
from prompttune.server._taskfile import TaskFileError, decode, read_document

EXPORT_FORMATS = ("openai", "json", "yaml")
FINETUNE_FORMAT = "finetune-openai"
EMBEDDED_PROMPT_KEY = "prompttune"


class _NoAliasDumper(yaml.SafeDumper):
    """Writes repeated values in full: the task-file reader refuses aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_yaml(document: Any) -> str:
    return yaml.dump(document, Dumper=_NoAliasDumper, sort_keys=False, allow_unicode=True)


def dump_json(document: Any) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def export(job: Job, fmt: str) -> str:
    """The job's best prompt in `fmt` (one of `EXPORT_FORMATS`). Raises TaskFileError when
    the job has no result."""
    if job.result is None:
        raise TaskFileError(f"job {job.id} has no result ({job.state.value})")
    prompt = job.result.best.prompt
    if fmt == "json":
        return dump_json(to_document(prompt))
    if fmt == "yaml":
        return dump_yaml(to_document(prompt))
    return dump_json(openai_document(job.id, prompt))


def openai_document(job_id: str, prompt: Prompt) -> dict[str, Any]:
    """Messages with ``{{field}}`` placeholders for chat.completions, and the full prompt.

    A kNN prompt chooses demonstrations per input, so its messages hold the static part and
    ``dynamic_demos`` says how to add the rest (or call RenderPrompt per input).
    """
    placeholders = {name: f"{{{{{name}}}}}" for name in prompt.input_fields}
    document: dict[str, Any] = {
        "job_id": job_id,
        "input_fields": list(prompt.input_fields),
        "placeholder_syntax": "{{field}} marks where each input goes; substitute literally",
    }
    static = prompt
    if prompt.knn_k > 0 and prompt.demo_pool:
        static = dataclasses.replace(prompt, knn_k=0, demo_pool=())
        document["dynamic_demos"] = {
            "k": prompt.knn_k,
            "how": "insert the k examples of prompttune.demo_pool most similar to the input "
            "(all-MiniLM-L6-v2 cosine), most similar last, before the input; or call "
            "RenderPrompt per input",
        }
    document["messages"] = to_openai_messages(render(static, placeholders))
    document[EMBEDDED_PROMPT_KEY] = to_document(prompt)
    return document


@dataclass(frozen=True)
class RecordedPrompt:
    """A prompt read from a file, with the model and task the file records (a result file
    records both; prompt files and exports neither)."""

    prompt: Prompt
    model: ModelSpec | None = None
    task: TaskSpec | None = None


def read_prompt(path: Path) -> Prompt:
    """The prompt in a prompt file, an export of any format or a result file."""
    return read_recorded_prompt(path).prompt


def read_recorded_prompt(path: Path) -> RecordedPrompt:
    """Like `read_prompt`, with a result file's job model and task."""
    document = read_document(path)
    if isinstance(document, Mapping) and EMBEDDED_PROMPT_KEY in document:
        return RecordedPrompt(
            decode(Prompt, document[EMBEDDED_PROMPT_KEY], path, EMBEDDED_PROMPT_KEY)
        )
    if isinstance(document, Mapping) and "create_time" in document and "state" in document:
        job = decode(Job, document, path)
        if job.result is None:
            raise TaskFileError(f"{path}: result: job {job.id} has no result")
        return RecordedPrompt(job.result.best.prompt, job.model, job.task)
    return RecordedPrompt(decode(Prompt, document, path))
