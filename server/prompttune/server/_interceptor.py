"""The one place where domain errors become gRPC status codes, and where each RPC gets a
request id bound into the structured log context."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import structlog

from prompttune.search import (
    BudgetExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    UpstreamUnavailable,
)

log = structlog.get_logger(__name__)

FIELD_METADATA_KEY = "prompttune-field"

# Domain error -> status code. Anything else is INTERNAL with a generic message.
STATUS_BY_ERROR: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (BudgetExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (UpstreamUnavailable, grpc.StatusCode.UNAVAILABLE),
)


def status_for(error: Exception) -> tuple[grpc.StatusCode, str]:
    for error_type, code in STATUS_BY_ERROR:
        if isinstance(error, error_type):
            return code, str(error)
    return grpc.StatusCode.INTERNAL, "internal error"


async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: Exception) -> None:
    code, details = status_for(error)
    if code is grpc.StatusCode.INTERNAL:
        log.exception("rpc.internal_error", error=repr(error))
    trailing: tuple[tuple[str, str], ...] = ()
    if isinstance(error, InvalidArgument):
        trailing = ((FIELD_METADATA_KEY, error.field),)
    await context.abort(code, details, trailing_metadata=trailing)


def _request_id(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and isinstance(value, str) and 0 < len(value) <= 128:
            return value
    return uuid.uuid4().hex


class ServiceInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Binds request_id/rpc to the log context, logs `rpc.done`, maps errors to statuses."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


def _wrap_unary(behaviour: Any, method: str) -> Any:
    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        started = time.perf_counter()
        with structlog.contextvars.bound_contextvars(request_id=_request_id(context), rpc=method):
            try:
                reply = await behaviour(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as error:
                _log_done(started, status_for(error)[0])
                await _abort(context, error)
            _log_done(started, grpc.StatusCode.OK)
            return reply

    return unary


def _wrap_stream(behaviour: Any, method: str) -> Any:
    async def stream(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        started = time.perf_counter()
        with structlog.contextvars.bound_contextvars(request_id=_request_id(context), rpc=method):
            try:
                async for reply in behaviour(request, context):
                    yield reply
            except grpc.aio.AbortError:
                raise
            except Exception as error:
                _log_done(started, status_for(error)[0])
                await _abort(context, error)
            _log_done(started, grpc.StatusCode.OK)

    return stream


def _log_done(started: float, code: grpc.StatusCode) -> None:
    elapsed_ms = round((time.perf_counter() - started) * 1000, 2)
    log.info("rpc.done", code=code.name, duration_ms=elapsed_ms)
