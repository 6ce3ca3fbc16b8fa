"""SDK exceptions; gRPC status codes are mapped to them once, in :func:`error_from_rpc`."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from google.protobuf.message import DecodeError

if TYPE_CHECKING:
    from prompttune.contract import Job

FIELD_METADATA_KEY = "prompttune-field"
STATUS_DETAILS_KEY = "grpc-status-details-bin"
# The server formats INVALID_ARGUMENT details as "<field path>: <message>".
_FIELD_DETAILS = re.compile(r"^(?P<field>[A-Za-z_][\w.\[\]]*): (?P<message>.*)$", re.DOTALL)


class PromptTuneError(Exception):
    """Base of every SDK error.

    ``code`` is the gRPC status name (e.g. "NOT_FOUND"), or "JOB_FAILED"/"JOB_CANCELLED" for
    :class:`JobFailedError`; ``details`` is the server's message.
    """

    def __init__(self, details: str, *, code: str = "UNKNOWN") -> None:
        super().__init__(f"{code}: {details}" if details else code)
        self.code = code
        self.details = details


@dataclass(frozen=True)
class FieldViolation:
    """One entry of the server's ``google.rpc.BadRequest`` error details."""

    field: str
    description: str


class InvalidArgumentError(PromptTuneError):
    """The request was rejected; ``field`` is the offending field path, or "" when unknown.

    ``violations`` holds the ``google.rpc.BadRequest`` field violations when the server sent
    them (and googleapis-common-protos is installed), else it is empty.
    """

    def __init__(
        self,
        details: str,
        *,
        code: str = "INVALID_ARGUMENT",
        field: str = "",
        violations: tuple[FieldViolation, ...] = (),
    ) -> None:
        super().__init__(details, code=code)
        self.field = field
        self.violations = violations


class NotFoundError(PromptTuneError):
    pass


class FailedPreconditionError(PromptTuneError):
    pass


class ResourceExhaustedError(PromptTuneError):
    """A budget or quota was exceeded."""


class UnavailableError(PromptTuneError):
    """The server or an upstream model endpoint is unreachable; retrying later may succeed."""


class DeadlineExceededError(PromptTuneError):
    pass


class UnauthenticatedError(PromptTuneError):
    pass


class PermissionDeniedError(PromptTuneError):
    pass


class CancelledError(PromptTuneError):
    pass


class InternalError(PromptTuneError):
    pass


class JobFailedError(PromptTuneError):
    """Raised by ``Client.optimize`` when the job ended FAILED or CANCELLED; ``job`` is final."""

    def __init__(self, job: Job) -> None:
        super().__init__(
            job.error or f"job {job.id} {job.state.value}", code=f"JOB_{job.state.name}"
        )
        self.job = job


_BY_CODE: dict[grpc.StatusCode, type[PromptTuneError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.CANCELLED: CancelledError,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.UNKNOWN: InternalError,
    grpc.StatusCode.DATA_LOSS: InternalError,
}


def error_from_rpc(error: grpc.RpcError) -> PromptTuneError:
    """Map a failed call to its SDK exception. ``error`` must also be a ``grpc.Call``."""
    code: grpc.StatusCode = error.code()
    details: str = error.details() or ""
    cls = _BY_CODE.get(code, PromptTuneError)
    if cls is not InvalidArgumentError:
        return cls(details, code=code.name)
    trailing = tuple(error.trailing_metadata() or ())
    violations = _violations(trailing)
    field = _metadata_value(trailing, FIELD_METADATA_KEY)
    if not field and violations:
        field = violations[0].field
    match = _FIELD_DETAILS.match(details)
    if match and (not field or match["field"] == field):
        field, details = match["field"], match["message"]
    return InvalidArgumentError(details, code=code.name, field=field, violations=violations)


def _metadata_value(metadata: Iterable[tuple[str, str | bytes]], wanted: str) -> str:
    for key, value in metadata:
        if key == wanted:
            return value if isinstance(value, str) else value.decode()
    return ""


def _violations(metadata: Iterable[tuple[str, str | bytes]]) -> tuple[FieldViolation, ...]:
    """Field violations from the `grpc-status-details-bin` trailer, when decodable."""
    blob = next((v for k, v in metadata if k == STATUS_DETAILS_KEY), None)
    if not isinstance(blob, bytes):
        return ()
    try:
        from google.rpc import error_details_pb2, status_pb2
    except ImportError:  # googleapis-common-protos is optional for the SDK
        return ()
    try:
        status = status_pb2.Status.FromString(blob)
    except DecodeError:
        return ()
    found: list[FieldViolation] = []
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        if detail.Is(bad_request.DESCRIPTOR) and detail.Unpack(bad_request):
            found.extend(
                FieldViolation(v.field, v.description) for v in bad_request.field_violations
            )
    return tuple(found)
