"""Model specs: validation and resolution to an endpoint the engine can call."""

from __future__ import annotations

import os
import urllib.parse

from prompttune.search import InvalidArgument, ModelEndpoint
from prompttune.server._limits import Limits
from prompttune.server._local_model import LOCAL_MODEL_NAME, LocalModelServer
from prompttune.v1 import optimizer_pb2 as pb

DEFAULT_MAX_TOKENS = 32


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


class ModelResolver:
    """Turns model specs into endpoints; the local spec starts the managed server on demand."""

    def __init__(self, local_server: LocalModelServer) -> None:
        self._local = local_server

    def resolve(self, spec: pb.ModelSpec, field: str = "model") -> ModelEndpoint:
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
