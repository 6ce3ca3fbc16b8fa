"""`prompttune batch submit`: a JSONL batch file, its resumable state and its results.

Each line is a `BatchLine`: a task-file reference ``{"task_file": "task.yaml"}`` or an inline
task-file document ``{"task": {...}, "data": {"train": "train.jsonl", ...}, "model": ...,
"search": ...}``, optionally with ``request_id``, read by the contract's document codec (an
unknown key fails with the line and the key path). Paths are relative to the batch file and
stay inside its folder unless allowed. Without a request_id,
one is derived from the batch file's name, the line number and the line's text, so
submitting the same batch again re-attaches to the same jobs instead of creating new ones.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prompttune.client import BatchItemResult, BatchRequest, batch_request_id
from prompttune.contract import ModelSpec, SearchSpec, TaskSpec, to_document
from prompttune.server._taskfile import (
    DataFiles,
    TaskFile,
    TaskFileError,
    data_path,
    decode,
    load_data,
    load_task_file,
)


@dataclass(frozen=True)
class BatchLine:
    """One line of a batch file: a task-file reference, or an inline task-file document."""

    task_file: str = ""
    request_id: str = ""
    task: TaskSpec | None = None
    data: DataFiles | None = None
    model: ModelSpec | None = None
    search: SearchSpec | None = None


@dataclass(frozen=True)
class BatchEntry:
    line: int  # 1-based line number in the batch file
    request: BatchRequest


def load_batch(path: Path, allow_outside_data: bool = False) -> list[BatchEntry]:
    entries = []
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        where = f"{path}:{number}"
        try:
            document = json.loads(text)
        except ValueError as error:
            raise TaskFileError(f"{where}: {error}") from error
        line = decode(BatchLine, document, where)
        request = _request(line, path.parent, where, allow_outside_data)
        request_id = line.request_id or batch_request_id(path.name, number, text)
        entries.append(BatchEntry(number, dataclasses.replace(request, request_id=request_id)))
    return entries


def _request(line: BatchLine, base: Path, where: str, allow_outside: bool) -> BatchRequest:
    if line.task_file:
        if line.task is not None or line.data is not None:
            raise TaskFileError(f"{where}: give either task_file or task and data, not both")
        loaded = load_task_file(
            data_path(base, line.task_file, f"{where}: task_file", allow_outside), allow_outside
        )
    elif line.task is None:
        raise TaskFileError(f"{where}: task: is required (or task_file)")
    else:
        document = TaskFile(
            line.task, line.data or DataFiles(), line.model or ModelSpec(),
            line.search or SearchSpec(),
        )  # fmt: skip
        loaded = load_data(document, base, where, allow_outside)
    return BatchRequest(loaded.task, loaded.dataset, loaded.model, loaded.search)


def result_record(entry: BatchEntry, result: BatchItemResult) -> dict[str, Any]:
    """One results-JSONL record: job id, state, best prompt, scores, cost."""
    job = result.job
    record: dict[str, Any] = {
        "line": entry.line,
        "request_id": result.request_id,
        "job_id": job.id if job else "",
        "state": result.state.value,
        "error": result.error,
    }
    if job is not None and job.result is not None:
        outcome = job.result
        record["best_prompt"] = to_document(outcome.best.prompt)
        record["scores"] = {
            name: {
                "validation": scores.validation.mean,
                "test": None if scores.test is None else scores.test.mean,
            }
            for name, scores in (("baseline", outcome.baseline), ("best", outcome.best))
        }
        record["improved"] = outcome.improved
        record["cost"] = to_document(outcome.usage) | {"wall_seconds": outcome.wall_seconds}
    return record


class BatchState:
    """Finished entries by line, persisted next to the results file after every change so an
    interrupted batch resumes where it stopped. Thread-safe."""

    def __init__(self, results: Path) -> None:
        self._results = results
        self._path = results.with_name(results.name + ".state.json")
        self._lock = threading.Lock()
        self.done: dict[int, dict[str, Any]] = {}
        # Entries that could not be created or followed: reported, retried on resume.
        self.unfinished: dict[int, dict[str, Any]] = {}
        if self._path.exists():
            loaded = json.loads(self._path.read_text(encoding="utf-8"))
            self.done = {int(line): record for line, record in loaded["done"].items()}

    def record(self, line: int, record: dict[str, Any]) -> None:
        with self._lock:
            if record["state"] in ("succeeded", "failed", "cancelled"):
                self.done[line] = record
                self.unfinished.pop(line, None)
            else:
                self.unfinished[line] = record
            self._write()

    def _write(self) -> None:
        state = {"done": {str(k): v for k, v in sorted(self.done.items())}}
        _atomic_write(self._path, json.dumps(state, indent=1) + "\n")
        records = sorted({**self.unfinished, **self.done}.items())
        lines = [json.dumps(record) for _, record in records]
        _atomic_write(self._results, "".join(line + "\n" for line in lines))


def _atomic_write(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
