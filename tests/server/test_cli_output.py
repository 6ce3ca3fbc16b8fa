"""The CLI's output is data: in embedded mode too, stdout holds only the JSON or prompt a
command prints (logs go to stderr), and a server's rejection is one line naming the field."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tests.server.conftest import FakeModels, start_server
from tests.server.test_cli_batch import TASK_DOC, write_batch

from prompttune.client import Job, Prompt, from_document
from prompttune.server import EmbeddedServer
from prompttune.server._logging import configure_logging
from prompttune.server.cli import main


def test_embedded_mode_prints_only_data_on_stdout(tmp_path: Path) -> None:
    write_batch(tmp_path)
    with start_server(tmp_path, FakeModels()) as server:
        assert main(["optimize", str(tmp_path / "task.yaml"), "--quiet", "--server", server.target,
                     "--out", str(tmp_path / "result.json")]) == 0  # fmt: skip
    job = from_document(Job, json.loads((tmp_path / "result.json").read_text()))
    embedded = ["--db", f"sqlite:///{tmp_path / 'service.db'}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    def stdout_of(*argv: str) -> str:
        completed = subprocess.run(
            [sys.executable, "-m", "prompttune.server.cli", *argv, *embedded],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert completed.returncode == 0, completed.stderr
        return completed.stdout

    assert from_document(Job, json.loads(stdout_of("jobs", "get", job.id))) == job
    events = [json.loads(line) for line in stdout_of("jobs", "watch", job.id).splitlines()]
    assert events[-1]["state_changed"]["state"] == "succeeded"
    exported = yaml.safe_load(stdout_of("export", job.id, "--format", "yaml"))
    assert job.result is not None and from_document(Prompt, exported) == job.result.best.prompt


def test_a_rejected_request_is_one_line_naming_the_field(
    tmp_path: Path, server: EmbeddedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("WARNING")  # the in-process server's logs on stderr, as in its own process
    write_batch(tmp_path)
    document = {**TASK_DOC, "search": {**TASK_DOC["search"], "max_demos": 17}}  # type: ignore[dict-item]
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(document), encoding="utf-8")

    code = main(["optimize", str(tmp_path / "task.yaml"), "--server", server.target])

    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.startswith("prompttune: search.max_demos: ")
    assert captured.err.count("\n") == 1
