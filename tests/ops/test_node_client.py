"""The Node.js client (clients/node, @grpc/grpc-js) against a real `prompttune serve`: create a
job, watch it to completion, read the result, and a bad request answered INVALID_ARGUMENT with
the field. `make test` installs its npm packages first."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

from tests.fakes import load_fake_openai
from tests.ops.conftest import ROOT, ServeFactory

NODE_CLIENT = ROOT / "clients" / "node"
fake_openai = load_fake_openai()


def test_node_client_against_a_real_server(serve: ServeFactory) -> None:
    node = shutil.which("node")
    assert node, "Node.js is needed for the Node client test (make node-deps installs it)"
    assert (NODE_CLIENT / "node_modules" / "@grpc" / "grpc-js").is_dir(), "run make node-deps"
    with fake_openai.serve_in_thread(fake_openai.FakeConfig(latency=0.0)) as endpoint:
        server = serve()
        environment = {
            **os.environ,
            "PROMPTTUNE_TARGET": server.target,
            "PROMPTTUNE_MODEL_URL": f"http://127.0.0.1:{endpoint.port}/v1",
        }
        completed = subprocess.run(
            [node, "--test", "test/"],
            cwd=NODE_CLIENT,
            env=environment,
            capture_output=True,
            text=True,
            timeout=300,
        )
    report = completed.stdout + completed.stderr
    assert completed.returncode == 0, report
    assert re.search(r"^# pass 2$", report, re.MULTILINE), report
    assert re.search(r"^# skipped 0$", report, re.MULTILINE), report
