"""An endpoint's API key, named by environment variable in the operator's registry, is used
for calls but never returned, logged or stored: a job runs against a fake OpenAI-compatible
endpoint with a recognisable key, then the logs, the replies and every table and file of the
database are scanned."""

from __future__ import annotations

import io
import json
import logging
import sqlite3
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
import structlog
from tests.fakes import FakeEmbedder
from tests.server.conftest import TASK, small_dataset

from prompttune.client import Budget, Client, JobState, ModelSpec, SearchSpec
from prompttune.server import Adapters, EmbeddedServer, ServerConfig, WorkerConfig
from prompttune.server._endpoints import EndpointConfig, EndpointEntry
from prompttune.server._logging import configure_logging

KEY = "sk-test-LEAKCHECK-7f3a9c1e5b2d4f60"
KEY_ENV = "TEST_LEAKCHECK_KEY"  # PROMPTTUNE_* names are reserved for the server


class FakeOpenAI(BaseHTTPRequestHandler):
    """Chat completions answering "positive"/"negative" by a keyword; records auth headers."""

    seen_keys: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeOpenAI.seen_keys.append(self.headers.get("Authorization", ""))
        text = body["messages"][-1]["content"]
        answer = "negative" if any(w in text for w in ("dull", "awful", "boring")) else "positive"
        payload = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
        }
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("DEBUG", stream=stream)
    yield stream
    structlog.reset_defaults()
    logging.basicConfig(force=True)


def database_texts(path: Path) -> Iterator[str]:
    """Every value of every table, as text (blobs decoded leniently)."""
    with sqlite3.connect(path) as connection:
        tables = [
            row[0]
            for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
        for table in tables:
            if table.startswith("sqlite_"):
                continue
            for row in connection.execute(f'SELECT * FROM "{table}"'):
                for value in row:
                    if isinstance(value, bytes):
                        yield value.decode("utf-8", "replace")
                    else:
                        yield str(value)


def test_api_key_is_never_logged_stored_or_returned(
    tmp_path: Path,
    endpoint: str,
    captured_logs: io.StringIO,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    FakeOpenAI.seen_keys.clear()
    db = tmp_path / "secrets.db"
    entry = EndpointEntry(base_url=endpoint, models=("fake-gpt",), api_key_env=KEY_ENV)
    config = ServerConfig(
        db_url=f"sqlite:///{db}",
        worker=WorkerConfig(poll_seconds=0.05, cancel_check_seconds=0.05),
        endpoint_config=EndpointConfig(endpoints={"local": entry}),
    )
    model = ModelSpec.local()  # the registry's "local" entry is the fake endpoint
    search = SearchSpec(
        budget=Budget(max_trials=3), num_instruction_candidates=1, max_demos=1, minibatch_size=8
    )
    with (
        EmbeddedServer(config, Adapters(embedder_factory=FakeEmbedder)) as server,
        Client(server.target, timeout=10) as client,
    ):
        job = client.create_job(TASK, small_dataset(), model, search)
        list(client.watch_job(job.id))
        job = client.get_job(job.id)
        replies = repr(client.get_job(job.id)) + repr(client.list_jobs())
    assert job.state is JobState.SUCCEEDED, captured_logs.getvalue()[-3000:]
    assert FakeOpenAI.seen_keys and set(FakeOpenAI.seen_keys) == {f"Bearer {KEY}"}
    logs = captured_logs.getvalue()
    assert "job.succeeded" in logs  # the capture saw the server's logs
    assert KEY not in logs
    assert KEY not in replies
    texts = list(database_texts(db))
    assert texts and all(KEY not in text for text in texts)
    for file in tmp_path.iterdir():
        assert KEY.encode() not in file.read_bytes(), file.name
