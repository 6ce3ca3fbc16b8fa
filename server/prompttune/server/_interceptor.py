"""The one place where domain errors become gRPC status codes, where each RPC gets a request id
bound into the structured log context, and where every RPC (unary or streaming, ours or
health/reflection) is counted and timed."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
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
from prompttune.server._telemetry import RpcMetrics
from prompttune.v1 import optimizer_pb2 as pb

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


def _request_id(context: grpc.aio.ServicerContext[Any, Any], request: Any) -> str:
    """CreateJob's idempotency key when it has one (so the job's own log lines, which carry
    that key, match the RPC's), else the caller's `x-request-id`, else a fresh id."""
    if isinstance(request, pb.CreateJobRequest) and request.request_id:
        return request.request_id
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and isinstance(value, str) and 0 < len(value) <= 128:
            return value
    return uuid.uuid4().hex


class ServiceInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Binds request_id/rpc to the log context, logs `rpc.done`, records per-RPC metrics
    and maps errors to statuses, for all four kinds of RPC."""

    def __init__(self, metrics: RpcMetrics | None = None) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return None
        call = _Call(details.method, self._metrics)
        # Client-streaming handlers iterate requests themselves and would not know what to
        # do with a MalformedRequest, so only single requests are parsed tolerantly.
        single = {
            "request_deserializer": _tolerant(handler.request_deserializer),
            "response_serializer": handler.response_serializer,
        }
        streamed = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, call), **single
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_streaming(handler.unary_stream, call), **single
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary(handler.stream_unary, call), **streamed
            )
        return grpc.stream_stream_rpc_method_handler(
            _wrap_streaming(handler.stream_stream, call), **streamed
        )


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


@dataclass(frozen=True)
class _Call:
    """One RPC method as the interceptor observes it."""

    method: str
    metrics: RpcMetrics | None

    def done(self, started: float, code: grpc.StatusCode) -> None:
        seconds = time.perf_counter() - started
        log.info("rpc.done", code=code.name, duration_ms=round(seconds * 1000, 2))
        if self.metrics is not None:
            self.metrics.observe(self.method, code.name, seconds)

    @contextlib.asynccontextmanager
    async def observed(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[None]:
        """Runs the handler's body inside the log context; maps what it raises to a status.
        `request` is the parsed message, or the request iterator of client streaming."""
        started = time.perf_counter()
        request_id = _request_id(context, request)
        with structlog.contextvars.bound_contextvars(request_id=request_id, rpc=self.method):
            try:
                _check_parsed(request)
                yield
            except grpc.aio.AbortError:
                self.done(started, _aborted_code(context))
                raise
            except (asyncio.CancelledError, GeneratorExit):
                self.done(started, grpc.StatusCode.CANCELLED)
                raise
            except Exception as error:
                self.done(started, status_for(error)[0])
                await _abort(context, error)
            else:
                self.done(started, grpc.StatusCode.OK)


def _aborted_code(context: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
    """The code a handler passed to `context.abort` (grpc's own health servicer aborts)."""
    code = context.code()
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def _wrap_unary(behaviour: Any, call: _Call) -> Any:
    """Unary and client-streaming handlers: one reply."""

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        async with call.observed(request, context):
            reply = await behaviour(request, context)
            if isinstance(reply, pb.CreateJobResponse) and reply.HasField("job"):
                log.info("job.created", job_id=reply.job.id)
        return reply

    return unary


def _wrap_streaming(behaviour: Any, call: _Call) -> Any:
    """Server- and bidi-streaming handlers. gRPC accepts two shapes and so must the wrapper:
    an async generator that yields replies, or a coroutine that sends them with
    `context.write` (grpc's own health `Watch` is one)."""
    if inspect.isasyncgenfunction(behaviour):

        async def stream(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            async with call.observed(request, context):
                async for reply in behaviour(request, context):
                    yield reply

        return stream

    async def writer(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        async with call.observed(request, context):
            await behaviour(request, context)

    return writer
