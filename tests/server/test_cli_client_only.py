"""The client-side commands run from an install without the server extra: each runs in a
subprocess where importing the engine, storage or ML packages fails, against a live server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from tests.server.test_cli_batch import write_batch

from prompttune.client import Job, Prompt, from_document
from prompttune.contract import ChatMessage, Evaluation
from prompttune.server import EmbeddedServer

BLOCKED = (
    "optuna",
    "openai",
    "sqlalchemy",
    "alembic",
    "torch",
    "sentence_transformers",
    "structlog",
    "numpy",
    "matplotlib",
    "prometheus_client",
    "prompttune.search",
)
# Runs the CLI with the packages of the server extra made unimportable.
WRAPPER = f"""
import importlib.abc, sys

class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if any(name == b or name.startswith(b + ".") for b in {BLOCKED!r}):
            raise ImportError(f"{{name}} is not installed (client-only install)")
        return None

sys.meta_path.insert(0, Blocked())
from prompttune.server.cli import main
sys.exit(main(sys.argv[1:]))
"""


def cli(folder: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WRAPPER, *argv],
        cwd=folder,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def data(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return yaml.safe_load(result.stdout)


def test_client_side_commands_need_no_server_extra(tmp_path: Path, server: EmbeddedServer) -> None:
    write_batch(tmp_path)
    target = ["--server", server.target]

    best = data(cli(tmp_path, "optimize", "task.yaml", "--out", "result.json", *target))
    job = from_document(Job, json.loads((tmp_path / "result.json").read_text()))
    assert job.result is not None and from_document(Prompt, best) == job.result.best.prompt

    assert job.id in cli(tmp_path, "jobs", "list", *target).stdout
    assert from_document(Job, data(cli(tmp_path, "jobs", "get", job.id, *target))) == job
    watched = cli(tmp_path, "jobs", "watch", job.id, *target).stdout.splitlines()
    assert json.loads(watched[-1])["state_changed"]["state"] == "succeeded"

    evaluated = data(
        cli(tmp_path, "evaluate", "task.yaml", "--prompt", "result.json", "--data",
            "test.jsonl", *target)
    )  # fmt: skip
    assert job.result.best.test is not None
    assert from_document(Evaluation, evaluated).score == job.result.best.test

    for extra in ([], target):
        messages = data(cli(tmp_path, "render", "--prompt", "result.json", "a fine film", *extra))
        assert [from_document(ChatMessage, m) for m in messages][-1].role == "user"

    exported = data(cli(tmp_path, "export", job.id, "--format", "yaml", *target))
    assert from_document(Prompt, exported) == job.result.best.prompt
    reported = cli(tmp_path, "report", job.id, "--format", "md", "--out", "r.md", *target)
    assert reported.returncode == 0, reported.stderr
    assert "not drawn: install matplotlib" in (tmp_path / "r.md").read_text()

    batch = cli(tmp_path, "batch", "submit", "jobs.jsonl", "--quiet", *target)
    assert batch.returncode == 1 and "Traceback" not in batch.stderr  # line 3 is invalid
    states = [json.loads(line)["state"] for line in (tmp_path / "jobs.results.jsonl").open()]
    assert states == ["succeeded", "succeeded", "unspecified"]


def test_modes_that_need_the_server_extra_say_so_in_one_line(tmp_path: Path) -> None:
    write_batch(tmp_path)

    result = cli(tmp_path, "jobs", "list", "--db", f"sqlite:///{tmp_path / 'x.db'}")

    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "not installed" in result.stderr
