"""Task files (YAML or JSON) and data files (JSONL or CSV) for the CLI.

A task file holds `task`, optional `model` and `search`, and `data` with file paths relative to
the task file: `train` + `validation` (+ `test`), or `examples` (+ `split`).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from prompttune.client import (
    Budget,
    Dataset,
    Example,
    Metric,
    ModelKind,
    ModelSpec,
    SearchSpec,
    SplitRatio,
    TaskSpec,
)


class TaskFileError(ValueError):
    """The task or a data file is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class OptimizationRequest:
    task: TaskSpec
    dataset: Dataset
    model: ModelSpec
    search: SearchSpec


def load_task_file(path: Path) -> OptimizationRequest:
    return request_from_document(_read_document(path), path.parent, path)


def request_from_document(
    document: Mapping[str, Any], base: Path, path: Path
) -> OptimizationRequest:
    """A task-file document; data paths are relative to `base`; errors name `path`."""
    task_doc = _section(document, "task", path)
    task = _task(task_doc, path)
    data_doc = _section(document, "data", path)
    fields = task.input_fields or ("input",)
    if "examples" in data_doc:
        dataset = Dataset.from_examples(
            load_examples(base / str(data_doc["examples"]), fields),
            SplitRatio(**data_doc.get("split", {})),
        )
    else:
        splits = {
            name: load_examples(base / str(data_doc[name]), fields) if name in data_doc else ()
            for name in ("train", "validation", "test")
        }
        dataset = Dataset.from_splits(**splits)
    return OptimizationRequest(
        task=task,
        dataset=dataset,
        model=model_from_dict(document.get("model") or {}),
        search=search_from_dict(document.get("search") or {}),
    )


def _read_document(path: Path) -> Mapping[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
        document = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise TaskFileError(f"{path}: {error}") from error
    if not isinstance(document, Mapping):
        raise TaskFileError(f"{path}: expected a mapping at the top level")
    return document


def _section(document: Mapping[str, Any], key: str, path: Path) -> Mapping[str, Any]:
    section = document.get(key)
    if not isinstance(section, Mapping):
        raise TaskFileError(f"{path}: '{key}' must be a mapping")
    return section


def _task(doc: Mapping[str, Any], path: Path) -> TaskSpec:
    try:
        metric = Metric(str(doc.get("metric", "exact_match")))
    except ValueError as error:
        raise TaskFileError(f"{path}: task.metric: {error}") from error
    return TaskSpec(
        description=str(doc.get("description", "")),
        metric=metric,
        seed_instruction=doc.get("seed_instruction"),
        input_fields=tuple(doc.get("input_fields", ())),
        labels=tuple(str(label) for label in doc.get("labels", ())),
        output_name=doc.get("output_name"),
    )


def model_from_dict(doc: Mapping[str, Any]) -> ModelSpec:
    kind = ModelKind(str(doc.get("kind", "local")))
    return ModelSpec(
        kind=kind,
        base_url=str(doc.get("base_url", "")),
        model=str(doc.get("model", "")),
        api_key_env=str(doc.get("api_key_env", "")),
        temperature=float(doc.get("temperature", 0.0)),
        max_tokens=doc.get("max_tokens"),
        max_concurrency=doc.get("max_concurrency"),
    )


def search_from_dict(doc: Mapping[str, Any]) -> SearchSpec:
    proposer = doc.get("proposer")
    return SearchSpec(
        budget=Budget(**(doc.get("budget") or {})),
        num_instruction_candidates=doc.get("num_instruction_candidates"),
        max_demos=doc.get("max_demos"),
        minibatch_size=doc.get("minibatch_size"),
        seed=int(doc.get("seed", 0)),
        num_demo_sets=doc.get("num_demo_sets"),
        num_finalists=doc.get("num_finalists"),
        proposer=None if proposer is None else model_from_dict(proposer),
        disable_cache=bool(doc.get("disable_cache", False)),
    )


def load_examples(path: Path, input_fields: Sequence[str]) -> tuple[Example, ...]:
    """Reads JSONL (`{"id", "input" | "inputs", "output"}`) or CSV (input columns + output)."""
    try:
        if path.suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as handle:
                rows: list[Mapping[str, Any]] = list(csv.DictReader(handle))
        else:
            with path.open(encoding="utf-8") as handle:
                rows = [json.loads(line) for line in handle if line.strip()]
    except (OSError, ValueError) as error:
        raise TaskFileError(f"{path}: {error}") from error
    return tuple(_example(row, input_fields, path, index) for index, row in enumerate(rows))


def _example(
    row: Mapping[str, Any], input_fields: Sequence[str], path: Path, index: int
) -> Example:
    if "output" not in row:
        raise TaskFileError(f"{path}: row {index} has no 'output'")
    inputs = row.get("inputs")
    if not isinstance(inputs, Mapping):
        inputs = {name: str(row.get(name, "")) for name in input_fields}
    return Example(
        inputs={str(k): str(v) for k, v in inputs.items()},
        output=str(row["output"]),
        id=str(row.get("id", f"{path.name}:{index}")),
    )
