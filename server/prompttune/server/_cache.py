"""The response cache in the service database, shared by every job and worker."""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from prompttune.search import ChatResponse
from prompttune.server._db import CacheRow


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
            )

    def put(self, key: str, response: ChatResponse) -> None:
        row = CacheRow(
            key=key,
            text=response.text,
            prompt_tokens=response.prompt_tokens,
            completion_tokens=response.completion_tokens,
            created_at=time.time(),
        )
        try:
            with self._sessions.begin() as session:
                session.add(row)
        except IntegrityError:
            pass  # same key, same content: another worker stored it first

    def count(self) -> int:
        with self._sessions() as session:
            return int(session.scalar(sa.select(sa.func.count()).select_from(CacheRow)) or 0)
