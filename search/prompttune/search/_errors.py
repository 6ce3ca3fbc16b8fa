"""Domain errors shared by the engine and the service.

The gRPC layer maps each class to one status code through a single table; nothing below the
servicer knows about status codes.
"""

from __future__ import annotations


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


class LLMCallFailed(PromptTuneError):
    """One LLM call failed after all retries. The example it served counts as failed.

    `transient` is True when the endpoint looked unavailable (429, 5xx, timeout, connection
    error) rather than rejecting this request; only transient failures count as an outage.
    """

    def __init__(self, message: str, *, transient: bool = True) -> None:
        super().__init__(message)
        self.transient = transient


class SearchCancelled(PromptTuneError):
    """The observer asked the runner to stop; the job ends without a result."""
