"""Failed LLM calls of one job, per endpoint: the summary a failed job reports, and the early
stop for an endpoint that has answered nothing but errors."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

from prompttune.search._errors import EndpointFailing, LLMCallFailed

# Failed calls in a row, with no success at all, after which an endpoint fails the job.
MAX_FAILURES_WITHOUT_SUCCESS = 8


@dataclass
class _Endpoint:
    succeeded: int = 0
    failed_in_a_row: int = 0
    failures: Counter[str] = field(default_factory=Counter)


class FailureTally:
    """Counts one job's failed calls by endpoint and status. Thread-safe.

    `failed` raises `EndpointFailing` once an endpoint has failed `limit` calls in a row
    without ever succeeding in this job (0 = never); an endpoint that has answered once is
    left to the outage limit (`EndpointLimits.max_outage_seconds`).
    """

    def __init__(self, limit: int = MAX_FAILURES_WITHOUT_SUCCESS) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._endpoints: dict[str, _Endpoint] = {}

    def check(self, endpoint: str) -> None:
        """Raises `EndpointFailing` when `endpoint` was already found failing: calls queued
        behind the ones that failed are not sent."""
        with self._lock:
            record = self._endpoints.get(endpoint)
            hopeless = record is not None and self._hopeless(record)
        if hopeless:
            raise EndpointFailing(self.summary())

    def _hopeless(self, record: _Endpoint) -> bool:
        return not record.succeeded and record.failed_in_a_row >= self._limit > 0

    def succeeded(self, endpoint: str) -> None:
        with self._lock:
            record = self._endpoints.setdefault(endpoint, _Endpoint())
            record.succeeded += 1
            record.failed_in_a_row = 0

    def failed(self, endpoint: str, error: LLMCallFailed) -> None:
        with self._lock:
            record = self._endpoints.setdefault(endpoint, _Endpoint())
            record.failures[error.status] += 1
            record.failed_in_a_row += 1
            hopeless = self._hopeless(record)
        if hopeless:
            raise EndpointFailing(self.summary()) from error

    def summary(self) -> str:
        """One sentence per endpoint with failures, e.g. "every call to endpoint local failed:
        HTTP 401 (29 calls)"; empty when no call failed."""
        with self._lock:
            parts = [
                _sentence(name, record)
                for name, record in self._endpoints.items()
                if record.failures
            ]
        return "; ".join(parts)


def _sentence(name: str, record: _Endpoint) -> str:
    counts = ", ".join(
        f"{status} ({count} call{'s' if count != 1 else ''})"
        for status, count in record.failures.most_common()
    )
    if not record.succeeded:
        return f"every call to endpoint {name} failed: {counts}"
    return f"calls to endpoint {name} failed: {counts} ({record.succeeded} succeeded)"
