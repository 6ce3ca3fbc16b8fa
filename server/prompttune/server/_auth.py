"""Bearer-token authentication and tenants.

Tokens map to tenants. Only sha256 hashes of tokens are kept in memory and compared in
constant time. Without a token registry the server is single-tenant: every call runs as
tenant ``default``. Health checking and reflection are always open.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import json
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import structlog
import yaml

from prompttune.search import PromptTuneError

DEFAULT_TENANT = "default"
TOKENS_ENV = "PROMPTTUNE_AUTH_TOKENS"
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
_SHA256_HEX = re.compile(r"^(sha256:)?[0-9a-f]{64}$")
_TENANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

_tenant: contextvars.ContextVar[str] = contextvars.ContextVar(
    "prompttune_tenant", default=DEFAULT_TENANT
)


class Unauthenticated(PromptTuneError):
    """The call carries no valid bearer token. Maps to UNAUTHENTICATED."""


class PermissionDenied(PromptTuneError):
    """The caller is known but may not do what it asked. Maps to PERMISSION_DENIED."""


class AuthConfigError(ValueError):
    """The token file or environment variable is malformed."""


def current_tenant() -> str:
    """The tenant of the RPC being served (``default`` in single-tenant mode)."""
    return _tenant.get()


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class TokenRegistry:
    """token sha256 hex -> tenant. Thread-safe (immutable)."""

    tenants_by_hash: Mapping[str, str]

    @classmethod
    def from_mapping(cls, entries: Mapping[str, str]) -> TokenRegistry:
        """Keys are tokens, or their sha256 as 64 hex digits (optionally ``sha256:``-prefixed)."""
        by_hash: dict[str, str] = {}
        for key, tenant in entries.items():
            if not isinstance(key, str) or not key or not isinstance(tenant, str):
                raise AuthConfigError("token entries must map non-empty strings to tenants")
            if not _TENANT_NAME.match(tenant):
                raise AuthConfigError(f"invalid tenant name {tenant!r}")
            digest = key.removeprefix("sha256:") if _SHA256_HEX.match(key) else hash_token(key)
            by_hash[digest] = tenant
        if not by_hash:
            raise AuthConfigError("no tokens configured")
        return cls(by_hash)

    @classmethod
    def from_file(cls, path: Path) -> TokenRegistry:
        """A YAML or JSON mapping of token (or token sha256) -> tenant."""
        try:
            text = path.read_text(encoding="utf-8")
            document = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (OSError, ValueError, yaml.YAMLError) as error:
            raise AuthConfigError(f"{path}: {error}") from error
        if not isinstance(document, Mapping):
            raise AuthConfigError(f"{path}: expected a mapping of token -> tenant")
        return cls.from_mapping(document)

    @classmethod
    def from_env_value(cls, value: str) -> TokenRegistry:
        """``tok1=tenantA,tok2=tenantB``."""
        entries: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in value.split(","))):
            token, separator, tenant = item.rpartition("=")
            if not separator or not token:
                raise AuthConfigError(f"{TOKENS_ENV}: expected token=tenant pairs")
            entries[token] = tenant
        return cls.from_mapping(entries)

    def tenant_for(self, token: str) -> str | None:
        """The token's tenant, or None. Compares every stored hash in constant time."""
        digest = hash_token(token)
        found: str | None = None
        for stored, tenant in self.tenants_by_hash.items():
            if hmac.compare_digest(stored, digest):
                found = tenant
        return found


def load_registry(
    path: Path | None, environ: Mapping[str, str] = os.environ
) -> TokenRegistry | None:
    """The file's registry, else the environment's, else None (single-tenant mode)."""
    if path is not None:
        return TokenRegistry.from_file(path)
    if environ.get(TOKENS_ENV):
        return TokenRegistry.from_env_value(environ[TOKENS_ENV])
    return None


def _bearer(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def _bind(tenant: str) -> None:
    # Each RPC runs in its own task with its own context copy, so nothing leaks to other
    # calls; not resetting keeps the tenant in the outer interceptor's `rpc.done` log line.
    _tenant.set(tenant)
    structlog.contextvars.bind_contextvars(tenant=tenant)


def _unparsed(data: bytes) -> None:
    """The deserializer of a refused call: the request bytes are dropped unread."""
    return None


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Resolves the caller's tenant from ``authorization: Bearer <token>`` before the request
    is deserialised: a call without a valid token gets a handler whose deserializer does not
    parse the bytes and which raises :class:`Unauthenticated` (ServiceInterceptor, outside
    this one, maps it to UNAUTHENTICATED). Otherwise the handler runs with the tenant in
    :func:`current_tenant` and the log context. Health checking and reflection stay open."""

    def __init__(self, registry: TokenRegistry | None) -> None:
        self._registry = registry

    def tenant_of(self, metadata: Any) -> str | None:
        """The tenant of a call with this invocation metadata; None when it is refused."""
        if self._registry is None:
            return DEFAULT_TENANT
        token = _bearer(metadata)
        return None if token is None else self._registry.tenant_for(token)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_METHOD_PREFIXES):
            return handler
        tenant = self.tenant_of(details.invocation_metadata)
        deserializer = handler.request_deserializer if tenant else _unparsed
        serializer = handler.response_serializer
        # Every kind of method is wrapped, so none can skip the check (fail closed).
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _unary(handler.unary_unary, tenant), deserializer, serializer
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _stream(handler.unary_stream, tenant), deserializer, serializer
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                _unary(handler.stream_unary, tenant), deserializer, serializer
            )
        return grpc.stream_stream_rpc_method_handler(
            _stream(handler.stream_stream, tenant), deserializer, serializer
        )


def _admit(tenant: str | None) -> None:
    if tenant is None:
        raise Unauthenticated("missing or invalid bearer token")
    _bind(tenant)


def _unary(behaviour: Any, tenant: str | None) -> Any:
    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        _admit(tenant)
        return await behaviour(request, context)

    return unary


def _stream(behaviour: Any, tenant: str | None) -> Any:
    async def stream(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        _admit(tenant)
        async for reply in behaviour(request, context):
            yield reply

    return stream
