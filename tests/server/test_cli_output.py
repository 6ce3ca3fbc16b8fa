"""The CLI's output is data: in embedded mode too, stdout holds only the JSON or prompt a
command prints (logs go to stderr), and a server's rejection is one line naming the field."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import yaml
from tests.client.test_client import FakeOptimizer
from tests.server.conftest import FakeModels, start_server
from tests.server.test_cli_batch import TASK_DOC, write_batch

from prompttune.client import Evaluation, Job, Prompt, from_document, to_document
from prompttune.server import EmbeddedServer
from prompttune.server._logging import configure_logging
from prompttune.server.cli import main
from prompttune.v1 import optimizer_pb2_grpc


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


def test_evaluate_shows_progress_on_stderr_and_prints_the_evaluation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_batch(tmp_path)
    prompt_file = tmp_path / "prompt.json"
    prompt_file.write_text(json.dumps(to_document(Prompt("Classify."))), encoding="utf-8")
    fake = FakeOptimizer()
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    optimizer_pb2_grpc.add_OptimizerServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        data = str(tmp_path / "test.jsonl")
        code = main(["evaluate", str(tmp_path / "task.yaml"), "--prompt", str(prompt_file),
                     "--data", data, "--server", f"127.0.0.1:{port}"])  # fmt: skip
    finally:
        server.stop(grace=None)

    captured = capsys.readouterr()
    assert code == 0
    assert "evaluating 1/8" in captured.err and "evaluating 8/8" in captured.err
    evaluation = from_document(Evaluation, json.loads(captured.out))
    assert len(evaluation.results) == 8
