"""The response cache in the service database, and its tenant scoping.

Keys are content hashes of the endpoint identity (registry name, model, base URL), the
messages and the sampling settings. `TenantCaches` scopes them by tenant as well, so one
tenant's answers are never served to another unless the operator shares the cache.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from prompttune.search import ChatResponse, ResponseCache
from prompttune.server._db import CacheRow


def encode_top_logprobs(top_logprobs: Sequence[tuple[str, float]]) -> str:
    """A JSON list of [token, logprob] pairs; "" for none (most answers)."""
    return json.dumps([[token, logprob] for token, logprob in top_logprobs]) if top_logprobs else ""


def decode_top_logprobs(stored: str) -> tuple[tuple[str, float], ...]:
    """The pairs `encode_top_logprobs` wrote; () for "" or anything that is not such a list."""
    if not stored:
        return ()
    try:
        pairs = json.loads(stored)
        return tuple((str(token), float(logprob)) for token, logprob in pairs)
    except (ValueError, TypeError):
        return ()


class SqlResponseCache:
    """ResponseCache over SQLAlchemy. Keys are content hashes, so concurrent puts agree."""

    def __init__(self, engine: Engine) -> None:
        self._sessions = sessionmaker(engine)

    def get(self, key: str) -> ChatResponse | None:
        with self._sessions() as session:
            row = session.get(CacheRow, key)
            if row is None:
                return None
            return ChatResponse(
                text=row.text,
                prompt_tokens=row.prompt_tokens,
                completion_tokens=row.completion_tokens,
                top_logprobs=decode_top_logprobs(row.top_logprobs),
            )

    def put(self, key: str, response: ChatResponse) -> None:
        row = CacheRow(
            key=key,
            text=response.text,
            prompt_tokens=response.prompt_tokens,
            completion_tokens=response.completion_tokens,
            created_at=time.time(),
            top_logprobs=encode_top_logprobs(response.top_logprobs),
        )
        try:
            with self._sessions.begin() as session:
                session.add(row)
        except IntegrityError:
            pass  # same key, same content: another worker stored it first

    def count(self) -> int:
        with self._sessions() as session:
            return int(session.scalar(sa.select(sa.func.count()).select_from(CacheRow)) or 0)


class TenantScopedCache:
    """A ResponseCache whose keys are those of `inner` bound to one tenant: the same request
    from two tenants is two entries. Thread-safe when `inner` is."""

    def __init__(self, inner: ResponseCache, tenant: str) -> None:
        self._inner = inner
        self._scope = f"tenant\x00{tenant}\x00"

    def _key(self, key: str) -> str:
        return hashlib.sha256((self._scope + key).encode("utf-8")).hexdigest()

    def get(self, key: str) -> ChatResponse | None:
        return self._inner.get(self._key(key))

    def put(self, key: str, response: ChatResponse) -> None:
        self._inner.put(self._key(key), response)


class TenantCaches:
    """Hands out the response cache of a tenant: scoped to it, or the one shared cache when
    the operator set `share_across_tenants`."""

    def __init__(self, inner: ResponseCache, share_across_tenants: bool = False) -> None:
        self._inner = inner
        self._shared = share_across_tenants

    def for_tenant(self, tenant: str) -> ResponseCache:
        return self._inner if self._shared else TenantScopedCache(self._inner, tenant)
