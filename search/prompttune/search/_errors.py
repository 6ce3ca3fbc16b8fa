"""Domain errors shared by the engine and the service.

The gRPC layer maps each class to one status code through a single table; nothing below the
servicer knows about status codes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prompttune.contract import JobResult


class PromptTuneError(Exception):
    """Base class of every error prompttune raises on purpose."""


class InvalidArgument(PromptTuneError):
    """A request field is malformed.

    `field` is its dotted path, e.g. ``dataset.train[3].output``.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class NotFound(PromptTuneError):
    """The named resource does not exist (or is not visible to the caller)."""


class FailedPrecondition(PromptTuneError):
    """The request is well-formed but the system is not in a state to serve it."""


class BudgetExceeded(PromptTuneError):
    """A hard budget (LLM calls, tokens or wall time) would be exceeded by the next call.

    `limit` names the budget field, e.g. ``max_llm_calls``.
    """

    def __init__(self, limit: str) -> None:
        super().__init__(f"budget exhausted: {limit}")
        self.limit = limit


class UpstreamUnavailable(PromptTuneError):
    """An LLM or embedding endpoint failed every call for longer than its outage limit."""


class EndpointFailing(UpstreamUnavailable):
    """An endpoint answered the first calls of a job only with errors (it refuses
    connections, rejects the key, sends malformed replies): the job stops at once."""


class LLMCallFailed(PromptTuneError):
    """One LLM call failed after all retries. The example it served counts as failed.

    `transient` is True when the endpoint looked unavailable (429, 5xx, timeout, connection
    error) rather than rejecting this request; only transient failures count as an outage.
    `status` names the failure for summaries: "HTTP 401", "APIConnectionError",
    "malformed response", ...; empty means the message itself.
    """

    def __init__(self, message: str, *, transient: bool = True, status: str = "") -> None:
        super().__init__(message)
        self.transient = transient
        self.status = status or message


class SearchCancelled(PromptTuneError):
    """The observer asked the runner to stop. `partial` is the best found before it stopped
    (marked partial; scores on the examples scored so far), or None when nothing was scored."""

    def __init__(self, message: str = "search cancelled", partial: JobResult | None = None):
        super().__init__(message)
        self.partial = partial


class SearchFailed(PromptTuneError):
    """The search could not score any prompt: e.g. every LLM call failed. `cause` says why in
    a sentence ("every call to endpoint local failed: HTTP 401 (29 calls)"); `partial` is
    the best found before it failed, if anything."""

    def __init__(self, cause: str, partial: JobResult | None = None) -> None:
        super().__init__(cause)
        self.cause = cause
        self.partial = partial
