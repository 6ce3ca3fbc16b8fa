"""Engine-only types: the dataset splits a search runs on and where a chat model is served.

Every API concept (tasks, examples, prompts, scores, results, events) is a
`prompttune.contract` type; nothing here repeats one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from prompttune.contract import Example

# (host, port) -> the addresses a connection may use, checked; raises OSError when refused.
AddressPin = Callable[[str, int], tuple[str, ...]]


@dataclass(frozen=True)
class DatasetSplits:
    """Train (demo pool and proposer examples), validation (selection) and test (report only)."""

    train: tuple[Example, ...]
    validation: tuple[Example, ...]
    test: tuple[Example, ...] = ()


@dataclass(frozen=True)
class ModelEndpoint:
    """Where a chat model is served. The API key is looked up by env var name at call time."""

    base_url: str
    model: str
    api_key_env: str = ""
    temperature: float = 0.0
    max_tokens: int = 32
    max_concurrency: int = 4
    timeout_seconds: float = 60.0
    max_retries: int = 4
    # First retry delay in seconds; doubles per attempt (jittered, at most 30 s).
    retry_backoff_seconds: float = 0.5
    # Stable name for cache keys when base_url is not stable (a local server on a random port).
    cache_identity: str = ""
    # Shared by every job of the process (0 = unlimited): in-flight calls, requests and
    # prompt + completion tokens per minute to this endpoint (the operator's limits).
    shared_max_concurrency: int = 0
    requests_per_minute: float = 0.0
    tokens_per_minute: float = 0.0
    # This job's own rates (its model spec's; 0 = none): they slow its calls only.
    job_requests_per_minute: float = 0.0
    job_tokens_per_minute: float = 0.0
    # An endpoint failing every call for longer than this fails the job (0 = never).
    max_outage_seconds: float = 300.0
    # Prices in USD per 1,000,000 tokens; 0 = free.
    usd_per_million_prompt_tokens: float = 0.0
    usd_per_million_completion_tokens: float = 0.0
    # How messages and summaries name this endpoint (its registry name); empty: the URL.
    name: str = ""
    # Caller-supplied URLs: every connection resolves its host through this and connects to
    # an address it returned, so the address checked is the address called (a DNS answer
    # that changes after the job's check cannot redirect calls). None: plain DNS.
    connect_addresses: AddressPin | None = field(default=None, compare=False, repr=False)
