"""Task files (YAML or JSON) and data files (JSONL or CSV) of the CLI.

A task file is a `TaskFile` document read by the contract's one document codec, so every
field of `TaskSpec`, `ModelSpec` and `SearchSpec` works from a file and an unknown or
misspelt key fails with the file and the key path. Data paths are relative to the task file
and must stay inside its folder (symlinks resolved) unless the caller allows otherwise.
Careless input fails loudly: YAML aliases and anchors, CSV files whose header misses an
input column, ragged rows and empty inputs are errors naming the file and the line.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from prompttune.contract import (
    ContractError,
    Dataset,
    Example,
    ModelSpec,
    SearchSpec,
    SplitRatio,
    TaskSpec,
    from_document,
    preview,
)

T = TypeVar("T")


class TaskFileError(ValueError):
    """A task, data, prompt or batch file is malformed; the message names the file and the
    key path or line."""


@dataclass(frozen=True)
class DataFiles:
    """Data file paths, relative to the task file: ``train`` + ``validation`` (+ ``test``),
    or ``examples`` cut by ``split``."""

    train: str = ""
    validation: str = ""
    test: str = ""
    examples: str = ""
    split: SplitRatio | None = None


@dataclass(frozen=True)
class TaskFile:
    """The document of a task file."""

    task: TaskSpec
    data: DataFiles = field(default_factory=DataFiles)
    model: ModelSpec = field(default_factory=ModelSpec)
    search: SearchSpec = field(default_factory=SearchSpec)


@dataclass(frozen=True)
class OptimizationRequest:
    """A task file with its data loaded: what `optimize` and `batch submit` send."""

    task: TaskSpec
    dataset: Dataset
    model: ModelSpec
    search: SearchSpec


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader without anchors and aliases: a few hundred bytes of aliases can
    expand to hundreds of megabytes."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event: Any = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.YAMLError(
                f"YAML anchors and aliases are not allowed (line {event.start_mark.line + 1})"
            )
        return super().compose_node(parent, index)


def read_document(path: Path) -> Any:
    """The JSON (``.json``) or YAML (anything else) document in `path`."""
    try:
        text = path.read_text(encoding="utf-8-sig")
        if path.suffix == ".json":
            return json.loads(text)
        return yaml.load(text, Loader=_NoAliasLoader)
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise TaskFileError(f"{path}: {error}") from error


def decode(cls: type[T], document: Any, where: Path | str, path: str = "") -> T:
    """`from_document` with errors naming the file `where` and the key path."""
    try:
        return from_document(cls, document, path)
    except ContractError as error:
        raise TaskFileError(f"{where}: {error}") from error


def load_task_file(path: Path, allow_outside_data: bool = False) -> OptimizationRequest:
    """Reads a task file and its data files."""
    document = decode(TaskFile, read_document(path), path)
    return load_data(document, path.parent, path, allow_outside_data)


def load_data(
    document: TaskFile, base: Path, where: Path | str, allow_outside_data: bool = False
) -> OptimizationRequest:
    """The request of a decoded task file whose data paths are relative to `base`."""
    data = document.data
    fields = document.task.input_fields

    def examples(key: str) -> tuple[Example, ...]:
        name = getattr(data, key)
        if not name:
            return ()
        path = data_path(base, name, f"{where}: data.{key}", allow_outside_data)
        return load_examples(path, fields)

    if data.examples:
        if data.train or data.validation or data.test:
            raise TaskFileError(f"{where}: data: give either examples or train/validation/test")
        dataset = Dataset.from_examples(examples("examples"), data.split)
    elif data.split is not None:
        raise TaskFileError(f"{where}: data.split: only applies to data.examples")
    elif not data.train:
        raise TaskFileError(f"{where}: data: needs train (and validation) or examples")
    else:
        dataset = Dataset.from_splits(examples("train"), examples("validation"), examples("test"))
    return OptimizationRequest(document.task, dataset, document.model, document.search)


def data_path(base: Path, name: str, what: str, allow_outside: bool = False) -> Path:
    """`name` resolved against `base`; refused when it leaves `base` (after following
    symlinks) unless `allow_outside`."""
    resolved = (base / name).resolve()
    if not allow_outside and not resolved.is_relative_to(base.resolve()):
        raise TaskFileError(
            f"{what}: {preview(name)} is outside the task file's folder "
            "(pass --allow-outside-data to allow it)"
        )
    return resolved


def load_examples(path: Path, input_fields: Sequence[str]) -> tuple[Example, ...]:
    """Reads JSONL (``{"id", "input" | "inputs": {...} | <input fields>, "output", "tags"}``,
    ``tags`` optional: ``{"dialect": "en-GB"}``) or CSV
    (a header naming the input columns and ``output``; ``id`` optional)."""
    rows = _csv_rows(path, input_fields) if path.suffix == ".csv" else _jsonl_rows(path)
    examples = tuple(_example(row, input_fields, f"{path}:{line}") for line, row in rows)
    if not examples:
        raise TaskFileError(f"{path}: no examples")
    return examples


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Mapping[str, Any]]]:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, ValueError) as error:
        raise TaskFileError(f"{path}: {error}") from error
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except ValueError as error:
            raise TaskFileError(f"{path}:{number}: {error}") from error
        if not isinstance(row, Mapping):
            raise TaskFileError(f"{path}:{number}: expected a JSON object")
        yield number, row


def _csv_rows(path: Path, input_fields: Sequence[str]) -> Iterator[tuple[int, Mapping[str, Any]]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            missing = [name for name in (*input_fields, "output") if name not in header]
            if missing:
                raise TaskFileError(f"{path}:1: the header {header} lacks the column(s) {missing}")
            for row in reader:
                if None in row or None in row.values():
                    raise TaskFileError(f"{path}:{reader.line_num}: expected {len(header)} columns")
                yield reader.line_num, row
    except (OSError, ValueError, csv.Error) as error:
        if isinstance(error, TaskFileError):
            raise
        raise TaskFileError(f"{path}: {error}") from error


def _text(value: Any, where: str, name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise TaskFileError(f"{where}: {name}: expected text, got {preview(value)}")
    text = str(value)
    if not text.strip():
        raise TaskFileError(f"{where}: {name}: is empty")
    return text


def _example(row: Mapping[str, Any], input_fields: Sequence[str], where: str) -> Example:
    if "output" not in row:
        raise TaskFileError(f"{where}: output: is required")
    inputs = row.get("inputs")
    if inputs is None:
        inputs = {name: row[name] for name in input_fields if name in row}
    if not isinstance(inputs, Mapping):
        raise TaskFileError(f"{where}: inputs: expected a mapping, got {preview(inputs)}")
    missing = [name for name in input_fields if name not in inputs]
    if missing:
        raise TaskFileError(f"{where}: missing input field(s) {missing}")
    return Example(
        inputs={str(name): _text(value, where, str(name)) for name, value in inputs.items()},
        output=_text(row["output"], where, "output"),
        id=_text(row["id"], where, "id") if "id" in row else Path(where).name,
        tags=_tags(row.get("tags"), where),
    )


def _tags(value: Any, where: str) -> dict[str, str]:
    """A row's ``tags`` object (name -> text); the service bounds their number and size."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TaskFileError(f"{where}: tags: expected an object, got {preview(value)}")
    return {str(name): _text(text, where, f"tags.{name}") for name, text in value.items()}
