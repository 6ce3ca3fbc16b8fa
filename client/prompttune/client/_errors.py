"""SDK exceptions; gRPC status codes are mapped to them once, in :func:`error_from_rpc`."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:
    from prompttune.client._types import Job

FIELD_METADATA_KEY = "prompttune-field"
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


class InvalidArgumentError(PromptTuneError):
    """The request was rejected; ``field`` is the offending field path, or "" when unknown."""

    def __init__(self, details: str, *, code: str = "INVALID_ARGUMENT", field: str = "") -> None:
        super().__init__(details, code=code)
        self.field = field


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
    field = _field_from_metadata(error.trailing_metadata())
    match = _FIELD_DETAILS.match(details)
    if match and (not field or match["field"] == field):
        field, details = match["field"], match["message"]
    return InvalidArgumentError(details, code=code.name, field=field)


def _field_from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    for key, value in metadata or ():
        if key == FIELD_METADATA_KEY:
            return value if isinstance(value, str) else value.decode()
    return ""
