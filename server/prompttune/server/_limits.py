"""Input limits of the service. Violations are INVALID_ARGUMENT naming the field."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_examples: int = 20_000
    max_chars_per_field: int = 20_000
    max_labels: int = 200
    max_trials: int = 10_000
    max_request_bytes: int = 32 * 1024 * 1024
    max_tokens_per_call: int = 4096
    max_concurrency: int = 256
