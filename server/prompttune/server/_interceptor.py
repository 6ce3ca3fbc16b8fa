"""The one place where domain errors become gRPC status codes, and where each RPC gets a
request id bound into the structured log context."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from prompttune.search import (
    BudgetExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    UpstreamUnavailable,
)
from prompttune.server._auth import PermissionDenied, Unauthenticated
from prompttune.server._store import AlreadyExists

log = structlog.get_logger(__name__)

FIELD_METADATA_KEY = "prompttune-field"

# Domain error -> status code. Anything else is INTERNAL with a generic message.
STATUS_BY_ERROR: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (BudgetExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (UpstreamUnavailable, grpc.StatusCode.UNAVAILABLE),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
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
    trailing: tuple[tuple[str, str | bytes], ...] = ()
    if isinstance(error, InvalidArgument):
        trailing = ((FIELD_METADATA_KEY, error.field), _bad_request_details(error, details))
    await context.abort(code, details, trailing_metadata=trailing)


def _bad_request_details(error: InvalidArgument, details: str) -> tuple[str, bytes]:
    """The `grpc-status-details-bin` trailer: a google.rpc.Status with a BadRequest."""
    bad_request = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(
                field=error.field, description=error.message
            )
        ]
    )
    status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=details)
    status.details.add().Pack(bad_request)
    key, value = rpc_status.to_status(status).trailing_metadata[0]
    return str(key), bytes(value)


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
        deserializer = _tolerant(handler.request_deserializer)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, method),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, method),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


@dataclass(frozen=True)
class MalformedRequest:
    """Stands in for a request whose bytes did not parse, so the handler can answer
    INVALID_ARGUMENT (gRPC itself would answer UNKNOWN)."""

    error: str


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as error:
            return MalformedRequest(str(error))

    return parse


def _check_parsed(request: Any) -> None:
    if isinstance(request, MalformedRequest):
        raise InvalidArgument("request", "is not a valid serialized message")


def _wrap_unary(behaviour: Any, method: str) -> Any:
    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        started = time.perf_counter()
        with structlog.contextvars.bound_contextvars(request_id=_request_id(context), rpc=method):
            try:
                _check_parsed(request)
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
                _check_parsed(request)
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
