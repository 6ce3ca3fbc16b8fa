"""`prompttune batch submit`: a JSONL batch file, its resumable state and its results.

Each line is a task-file reference ``{"task_file": "task.yaml"}`` or an inline task-file
document ``{"task": {...}, "data": {"train": "train.jsonl", ...}, "model": ..., "search": ...}``,
optionally with ``request_id``. Paths are relative to the batch file. Without a request_id,
one is derived from the batch file's name, the line number and the line's text, so
submitting the same batch again re-attaches to the same jobs instead of creating new ones.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prompttune.client import BatchItemResult, BatchRequest, batch_request_id
from prompttune.server._taskfile import TaskFileError, load_task_file, request_from_document


@dataclass(frozen=True)
class BatchEntry:
    line: int  # 1-based line number in the batch file
    request: BatchRequest


def load_batch(path: Path) -> list[BatchEntry]:
    entries = []
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        where = Path(f"{path}:{number}")
        try:
            document = json.loads(text)
        except ValueError as error:
            raise TaskFileError(f"{where}: {error}") from error
        if not isinstance(document, dict):
            raise TaskFileError(f"{where}: expected a JSON object")
        if "task_file" in document:
            loaded = load_task_file(path.parent / str(document["task_file"]))
        else:
            loaded = request_from_document(document, path.parent, where)
        request_id = str(document.get("request_id") or batch_request_id(path.name, number, text))
        request = BatchRequest(
            loaded.task, loaded.dataset, loaded.model, loaded.search, request_id=request_id
        )
        entries.append(BatchEntry(number, request))
    return entries


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
        from prompttune.server.cli import to_jsonable

        outcome = job.result
        record["best_prompt"] = to_jsonable(outcome.best.prompt)
        record["scores"] = {
            name: {
                "validation": scores.validation.mean,
                "test": None if scores.test is None else scores.test.mean,
            }
            for name, scores in (("baseline", outcome.baseline), ("best", outcome.best))
        }
        record["improved"] = outcome.improved
        record["cost"] = to_jsonable(outcome.usage) | {"wall_seconds": outcome.wall_seconds}
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
