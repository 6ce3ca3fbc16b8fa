"""An in-process server on a loopback port, for the CLI's no-`--server` mode and for tests.
The caller talks to it through the real SDK over real gRPC."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace
from types import TracebackType

from prompttune.server._app import Adapters, PromptTuneServer, ServerConfig


class EmbeddedServer:
    """Runs PromptTuneServer on its own event loop thread. Use as a context manager; the
    value is the `host:port` target to connect to."""

    def __init__(self, config: ServerConfig, adapters: Adapters | None = None) -> None:
        self._config = replace(config, host="127.0.0.1", port=0)
        self._adapters = adapters
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="prompttune-server", daemon=True)
        self.app: PromptTuneServer | None = None
        self.target = ""

    def __enter__(self) -> EmbeddedServer:
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join()

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            self.app = PromptTuneServer(self._config, self._adapters)
            port = await self.app.start()
        except BaseException as error:
            self._error = error
            self._ready.set()
            return
        self.target = f"127.0.0.1:{port}"
        self._ready.set()
        await self._stop.wait()
        await self.app.stop()
