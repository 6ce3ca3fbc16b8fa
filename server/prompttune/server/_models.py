"""Model specs: validation and resolution to an endpoint the engine can call."""

from __future__ import annotations

import dataclasses
import os
import urllib.parse
from dataclasses import dataclass

from prompttune.search import InvalidArgument, ModelEndpoint
from prompttune.server._limits import Limits
from prompttune.server._local_model import LOCAL_MODEL_NAME, LocalModelServer
from prompttune.v1 import optimizer_pb2 as pb

DEFAULT_MAX_TOKENS = 32


@dataclass(frozen=True)
class EndpointDefaults:
    """Server-wide flow control of every endpoint, shared by all jobs of the process.

    A model spec's `requests_per_minute` / `tokens_per_minute` override the rates; 0 means
    unlimited. `max_outage_seconds`: an endpoint failing every call (after retries) for longer
    fails the job; 0 = never.
    """

    max_concurrency: int = 64
    local_max_concurrency: int = 2
    requests_per_minute: float = 0.0
    tokens_per_minute: float = 0.0
    max_outage_seconds: float = 300.0


def validate_model_spec(spec: pb.ModelSpec, field: str, limits: Limits) -> None:
    """Raises InvalidArgument naming the first malformed field of the spec."""
    kind = spec.kind or pb.MODEL_KIND_LOCAL
    if kind not in (pb.MODEL_KIND_LOCAL, pb.MODEL_KIND_OPENAI_COMPATIBLE):
        raise InvalidArgument(f"{field}.kind", f"unknown model kind {spec.kind}")
    if kind == pb.MODEL_KIND_OPENAI_COMPATIBLE:
        url = urllib.parse.urlparse(spec.base_url)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise InvalidArgument(f"{field}.base_url", "must be an http(s) URL")
        if not spec.model.strip():
            raise InvalidArgument(f"{field}.model", "is required for OPENAI_COMPATIBLE")
    if spec.api_key_env and not spec.api_key_env.replace("_", "").isalnum():
        raise InvalidArgument(f"{field}.api_key_env", "must be an environment variable name")
    if not 0.0 <= spec.temperature <= 2.0:
        raise InvalidArgument(f"{field}.temperature", "must be in [0, 2]")
    if spec.max_tokens > limits.max_tokens_per_call:
        raise InvalidArgument(
            f"{field}.max_tokens", f"must be at most {limits.max_tokens_per_call}"
        )
    if spec.max_concurrency > limits.max_concurrency:
        raise InvalidArgument(
            f"{field}.max_concurrency", f"must be at most {limits.max_concurrency}"
        )
    for price in ("usd_per_million_prompt_tokens", "usd_per_million_completion_tokens"):
        if not 0.0 <= getattr(spec, price) < 1e6:
            raise InvalidArgument(f"{field}.{price}", "must be in [0, 1e6)")


class ModelResolver:
    """Turns model specs into endpoints; the local spec starts the managed server on demand."""

    def __init__(
        self, local_server: LocalModelServer, defaults: EndpointDefaults | None = None
    ) -> None:
        self._local = local_server
        self._defaults = defaults or EndpointDefaults()

    def resolve(self, spec: pb.ModelSpec, field: str = "model") -> ModelEndpoint:
        """The endpoint of `spec` with its flow-control limits and prices."""
        defaults = self._defaults
        endpoint = self._resolve_location(spec, field)
        local = (spec.kind or pb.MODEL_KIND_LOCAL) == pb.MODEL_KIND_LOCAL
        return dataclasses.replace(
            endpoint,
            shared_max_concurrency=(
                defaults.local_max_concurrency if local else defaults.max_concurrency
            ),
            requests_per_minute=spec.requests_per_minute or defaults.requests_per_minute,
            tokens_per_minute=spec.tokens_per_minute or defaults.tokens_per_minute,
            max_outage_seconds=defaults.max_outage_seconds,
            usd_per_million_prompt_tokens=spec.usd_per_million_prompt_tokens,
            usd_per_million_completion_tokens=spec.usd_per_million_completion_tokens,
        )

    def _resolve_location(self, spec: pb.ModelSpec, field: str) -> ModelEndpoint:
        max_tokens = spec.max_tokens or DEFAULT_MAX_TOKENS
        if (spec.kind or pb.MODEL_KIND_LOCAL) == pb.MODEL_KIND_LOCAL:
            # llama.cpp serves one request at a time; a second request in flight only hides the
            # HTTP round trip between them.
            return ModelEndpoint(
                base_url=self._local.base_url(),
                model=LOCAL_MODEL_NAME,
                temperature=spec.temperature,
                max_tokens=max_tokens,
                max_concurrency=spec.max_concurrency or 2,
                cache_identity=f"local|{LOCAL_MODEL_NAME}|{self._local.model_file_name()}",
            )
        if spec.api_key_env and spec.api_key_env not in os.environ:
            raise InvalidArgument(
                f"{field}.api_key_env",
                f"environment variable {spec.api_key_env} is not set on the server",
            )
        return ModelEndpoint(
            base_url=spec.base_url,
            model=spec.model,
            api_key_env=spec.api_key_env,
            temperature=spec.temperature,
            max_tokens=max_tokens,
            max_concurrency=spec.max_concurrency or 4,
        )
