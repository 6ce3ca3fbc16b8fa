"""Task, data, batch and prompt files: every documented key works, careless input fails loudly
with the file and key path or line, and the CLI reports it in one line without a traceback."""

from __future__ import annotations

import dataclasses
import enum
import json
import re
from pathlib import Path
from typing import Any

import pytest

from prompttune.client import Client
from prompttune.contract import Metric, ModelSpec, Prompt, from_document, to_document
from prompttune.contract._fields import RECORD, shapes
from prompttune.server._batchfile import load_batch
from prompttune.server._promptfile import dump_yaml, read_prompt
from prompttune.server._taskfile import (
    TaskFile,
    TaskFileError,
    load_examples,
    load_task_file,
)
from prompttune.server.cli import main

README = Path(__file__).resolve().parents[2] / "README.md"
ROWS = [json.dumps({"id": f"e{i}", "input": f"text {i}", "output": "positive"}) for i in range(4)]
BASE = {"task": {"description": "Classify."}, "data": {"train": "train.jsonl"}}


def write(folder: Path, document: Any, name: str = "task.yaml") -> Path:
    (folder / "train.jsonl").write_text("\n".join(ROWS) + "\n", encoding="utf-8")
    path = folder / name
    text = json.dumps(document) if name.endswith(".json") else dump_yaml(document)
    path.write_text(text, encoding="utf-8")
    return path


def with_key(path: str, value: Any) -> dict[str, Any]:
    document = json.loads(json.dumps(BASE))
    *parents, last = path.split(".")
    node = document
    for name in parents:
        node = node.setdefault(name, {})
    node[last] = value
    return document


def lookup(value: Any, path: str) -> Any:
    for name in path.split("."):
        value = getattr(value, name)
    return value


# ---- the README's configuration table against the code ----------------------------------


def readme_keys() -> list[str]:
    """The dotted task-file keys named in the README's configuration table."""
    section = README.read_text(encoding="utf-8").split("## Configuration", 1)[1]
    table = section.split("Server settings:", 1)[0]
    tokens = re.findall(r"`([a-z_0-9]+(?:\.[a-z_0-9]+)+)`", table)
    return list(dict.fromkeys(tokens))


def document_keys(cls: type, prefix: str = "") -> set[str]:
    """Every key path of a document type, nested records included (not inside the model specs
    task.judge and search.proposer, whose keys are those of `model`)."""
    keys = set()
    for shape in shapes(cls):
        path = f"{prefix}{shape.name}"
        keys.add(path)
        if shape.kind == RECORD and path not in ("task.judge", "task.baseline", "search.proposer"):
            keys |= document_keys(shape.type, f"{path}.")
    return keys


def test_readme_table_names_every_task_file_key_and_only_real_ones() -> None:
    named = set(readme_keys())
    real = document_keys(TaskFile)
    containers = {"task", "data", "model", "search", "data.split", "search.budget"}

    assert named - real == set()
    assert real - containers - named == set()


def test_readme_lists_every_metric() -> None:
    table = README.read_text(encoding="utf-8").split("## Configuration", 1)[1]
    metric_row = next(line for line in table.splitlines() if "`task.metric`:" in line)
    assert {metric.value for metric in Metric} <= set(re.findall(r"`([a-z_0-9]+)`", metric_row))


def sample_value(cls: type, path: str) -> Any:
    """A value of the field at `path` that differs from its default."""
    shape = next(s for s in shapes(cls) if s.name == path.split(".")[0])
    if "." in path:
        return sample_value(shape.type, path.split(".", 1)[1])
    if shape.type is ModelSpec:
        return {"kind": "openai_compatible", "endpoint": "judge-endpoint", "model": "m"}
    if shape.type is Prompt:
        return {"instruction": "Say whether the review is positive or negative."}
    if isinstance(shape.type, type) and issubclass(shape.type, enum.Enum):
        return next(m.value for m in shape.type if m != shape.default)
    if shape.type is bool:
        return shape.default is not True
    if shape.type in (int, float):
        return (shape.default or 0) + 1 if shape.kind != "tuple" else [1]
    if shape.kind == "tuple":
        return ["alpha", "beta"]
    return "a value"


@pytest.mark.parametrize("key", [k for k in readme_keys() if not k.startswith("data.")])
def test_every_readme_key_reaches_the_request_from_a_task_file(tmp_path: Path, key: str) -> None:
    if key == "task.input_fields":
        value: Any = ["input", "context"]
    else:
        value = sample_value(TaskFile, key)

    document = with_key(key, value)
    if key == "task.input_fields":
        rows = [{"id": "a", "inputs": {"input": "x", "context": "y"}, "output": "o"}]
        (tmp_path / "train.jsonl").write_text(json.dumps(rows[0]) + "\n", encoding="utf-8")
        path = tmp_path / "task.json"
        path.write_text(json.dumps(document), encoding="utf-8")
    else:
        path = write(tmp_path, document)
    request = load_task_file(path)

    section, rest = key.split(".", 1)
    holder = request.task if section == "task" else getattr(request, section)
    loaded = lookup(holder, rest)
    expected = value
    if isinstance(loaded, enum.Enum):
        loaded = loaded.value
    elif isinstance(loaded, tuple):
        expected = tuple(value)
    elif dataclasses.is_dataclass(loaded):
        expected = from_document(type(loaded), value)
    assert loaded == expected


def test_split_and_examples_reach_the_dataset(tmp_path: Path) -> None:
    document = {
        "task": {"description": "Classify."},
        "data": {"examples": "train.jsonl", "split": {"train": 0.5, "validation": 0.5,
                                                        "test": 0.0, "seed": 4}},
    }  # fmt: skip
    request = load_task_file(write(tmp_path, document))

    assert len(request.dataset.examples) == 4 and request.dataset.split is not None
    assert (request.dataset.split.validation, request.dataset.split.seed) == (0.5, 4)


# ---- careless task files ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("search.max_demo", 3, "search.max_demo: unknown key (did you mean 'max_demos'?)"),
        ("search.budget.max_trials", "eight", "search.budget.max_trials: expected an integer"),
        ("model.kind", "openai", "model.kind: expected one of local, openai_compatible"),
        ("task.labels", "positive", "task.labels: expected a list"),
        ("task.metric", "accuracy", "task.metric: expected one of exact_match"),
        ("search.allow_reasoning", "yes", "search.allow_reasoning: expected true or false"),
        ("data.train", "../outside.jsonl", "data.train: '../outside.jsonl' is outside"),
    ],
)
def test_bad_task_file_values_fail_in_one_line_naming_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, value: Any, message: str
) -> None:
    path = write(tmp_path, with_key(key, value))

    code = main(["optimize", str(path), "--server", "127.0.0.1:9"])

    err = capsys.readouterr()
    assert code == 2 and err.out == ""
    assert err.err.count("\n") == 1 and "Traceback" not in err.err
    assert err.err.startswith(f"prompttune: {path}: ") and message in err.err


def test_yaml_aliases_and_anchors_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "task.yaml"
    path.write_text(
        "task:\n  description: &d Classify.\n  seed_instruction: *d\ndata: {train: t.jsonl}\n",
        encoding="utf-8",
    )
    with pytest.raises(TaskFileError, match="anchors and aliases are not allowed"):
        load_task_file(path)


def test_data_paths_stay_inside_the_task_folder_unless_allowed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jsonl").write_text(ROWS[0] + "\n", encoding="utf-8")
    folder = tmp_path / "task"
    folder.mkdir()
    (folder / "link.jsonl").symlink_to(outside / "secret.jsonl")
    for name in ("link.jsonl", str(outside / "secret.jsonl"), "../outside/secret.jsonl"):
        path = write(folder, with_key("data.train", name))
        with pytest.raises(TaskFileError, match="outside the task file's folder"):
            load_task_file(path)
        assert len(load_task_file(path, allow_outside_data=True).dataset.train) == 1


def test_batch_lines_are_strict_and_name_the_line(tmp_path: Path) -> None:
    write(tmp_path, BASE)
    batch = tmp_path / "jobs.jsonl"
    batch.write_text(
        json.dumps({"task_file": "task.yaml"}) + "\n" + json.dumps({"task_fle": "x"}) + "\n",
        encoding="utf-8",
    )
    with pytest.raises(TaskFileError, match=rf"{batch}:2: task_fle: unknown key"):
        load_batch(batch)
    batch.write_text(json.dumps({"task_file": "../elsewhere.yaml"}) + "\n", encoding="utf-8")
    with pytest.raises(TaskFileError, match="outside"):
        load_batch(batch)


# ---- data files -------------------------------------------------------------------------


def test_csv_with_bom_reads_the_declared_columns(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes("\ufeffreview,output,id\nGreat,positive,r1\n".encode())

    (example,) = load_examples(path, ("review",))

    assert (dict(example.inputs), example.output, example.id) == (
        {"review": "Great"},
        "positive",
        "r1",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("text,output\nGreat,positive\n", r"data.csv:1: the header \['text', 'output'\] lacks"),
        ("review,output\nGreat,positive,extra\n", "data.csv:2: expected 2 columns"),
        ("review,output\nGreat\n", "data.csv:2: expected 2 columns"),
        ("review,output\n ,positive\n", "data.csv:2: review: is empty"),
    ],
)
def test_careless_csv_fails_naming_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "data.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(TaskFileError, match=message):
        load_examples(path, ("review",))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"input": "x"}, "data.jsonl:2: output: is required"),
        ({"inputs": {"other": "x"}, "output": "o"}, r"data.jsonl:2: missing input field\(s\)"),
        ({"input": "", "output": "o"}, "data.jsonl:2: input: is empty"),
        ({"input": ["x"], "output": "o"}, "data.jsonl:2: input: expected text"),
    ],
)
def test_careless_jsonl_fails_naming_file_and_line(
    tmp_path: Path, line: dict[str, Any], message: str
) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(ROWS[0] + "\n" + json.dumps(line) + "\n", encoding="utf-8")
    with pytest.raises(TaskFileError, match=message):
        load_examples(path, ("input",))


# ---- prompt files -----------------------------------------------------------------------


def test_prompt_files_are_strict(tmp_path: Path) -> None:
    path = tmp_path / "prompt.json"
    path.write_text(json.dumps({"instruction": "Hi.", "knn": 3}), encoding="utf-8")
    with pytest.raises(TaskFileError, match=rf"{path}: knn: unknown key"):
        read_prompt(path)
    path.write_text(json.dumps(to_document(Prompt("Hi.", knn_k=2))), encoding="utf-8")
    assert read_prompt(path) == Prompt("Hi.", knn_k=2)


def test_task_file_keys_reach_the_job_the_server_stores(tmp_path: Path, client: Client) -> None:
    """Every key of the README's table that a caller may set round-trips through CreateJob:
    the stored job has the task, model and search the task file says."""
    judge = {"kind": "openai_compatible", "base_url": "http://fake.invalid/v1", "model": "judge"}
    document = {
        "task": {"description": "Summarise.", "metric": "llm_judge", "rubric": "Is it short?",
                 "judge": judge, "output_name": "summary", "seed_instruction": "Summarise it."},
        "model": {**judge, "model": "m", "temperature": 0.5, "max_tokens": 48,
                  "max_concurrency": 2, "requests_per_minute": 600, "tokens_per_minute": 90000,
                  "usd_per_million_prompt_tokens": 0.15,
                  "usd_per_million_completion_tokens": 0.6},
        "search": {"num_instruction_candidates": 2, "num_reflection_candidates": 1,
                   "max_demos": 2, "num_demo_sets": 2, "minibatch_size": 8, "num_finalists": 2,
                   "seed": 5, "allow_reasoning": True, "multi_objective": True,
                   "disable_cache": False, "parallelism": 2, "proposer": judge,
                   "budget": {"max_trials": 3, "max_llm_calls": 300, "max_wall_seconds": 60.0,
                              "max_tokens": 50000, "max_cost_usd": 0.5}},
        "data": {"examples": "train.jsonl", "split": {"train": 0.5, "validation": 0.5,
                                                       "test": 0.0}},
    }  # fmt: skip
    request = load_task_file(write(tmp_path, document))

    job = client.create_job(request.task, request.dataset, request.model, request.search)
    stored = client.get_job(job.id)
    client.cancel_job(job.id)

    assert (stored.task, stored.model, stored.search) == (
        request.task,
        request.model,
        request.search,
    )
