"""The operator's endpoint registry: named model endpoints, who may use them, and how a
request's model spec resolves to an endpoint the engine can call.

Endpoints belong to the operator. A request names a registry entry (``ModelSpec.endpoint``;
kind LOCAL names the built-in entry "local", the managed SmolLM2 server; the built-in "gemma" is
the managed Gemma 3 270M server); the entry fixes the
base URL, the environment variable holding the key, the models, limits and prices. A request
may only tighten an entry's limits, and its prices only stand in where the entry has none.
Caller-supplied ``base_url`` / ``api_key_env`` are refused under authentication, and in
single-tenant mode unless the operator allows them; then the URL's addresses pass the
`AddressGuard` and the key variable an operator allow-list.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from prompttune.contract import ModelSpec, from_document, preview
from prompttune.search import FailedPrecondition, InvalidArgument, ModelEndpoint
from prompttune.server._addresses import AddressGuard
from prompttune.server._auth import PermissionDenied
from prompttune.server._local_model import GEMMA_MODEL_NAME, LOCAL_MODEL_NAME, LocalModelServer

ENDPOINTS_ENV = "PROMPTTUNE_ENDPOINTS"
LOCAL_ENDPOINT = "local"
GEMMA_ENDPOINT = "gemma"
# Built-in entries served by a managed llama.cpp server, and the embedded model of each.
MANAGED_MODELS = {LOCAL_ENDPOINT: LOCAL_MODEL_NAME, GEMMA_ENDPOINT: GEMMA_MODEL_NAME}
# Variables of the service itself (tokens, database URL): never a key a request may name.
RESERVED_ENV_PREFIX = "PROMPTTUNE_"
ANY_KEY_ENV = "*"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_MAX_MODEL_CHARS = 256
_MAX_URL_CHARS = 2048
_MAX_PRICE = 1e6
_DEFAULT_JOB_CONCURRENCY = 4
_LOCAL_JOB_CONCURRENCY = 2
_CALLER_REFUSED = (
    "caller-supplied base_url and api_key_env are not allowed on this server; "
    "name an endpoint of the server's registry instead"
)
_KEY_REFUSED = "is not a key variable this server lets callers use"


class EndpointConfigError(ValueError):
    """The endpoint registry file is unreadable or malformed; the message names the key."""


@dataclass(frozen=True)
class EndpointDefaults:
    """Flow control of caller-supplied endpoints and of the built-in "local" entry, shared by
    all jobs of the process. A model spec's `requests_per_minute` / `tokens_per_minute`
    override the rates; 0 means unlimited. `max_outage_seconds`: an endpoint failing every
    call (after retries) for longer fails the job; 0 = never."""

    max_concurrency: int = 64
    local_max_concurrency: int = 2
    requests_per_minute: float = 0.0
    tokens_per_minute: float = 0.0
    max_outage_seconds: float = 300.0


def _check_env_name(name: str, what: str) -> None:
    if not _ENV_NAME.match(name):
        raise ValueError(f"{what} {preview(name)} is not an environment variable name")
    if name.startswith(RESERVED_ENV_PREFIX):
        raise ValueError(f"{what} {name} is reserved for the server's own settings")


@dataclass(frozen=True)
class EndpointEntry:
    """One named endpoint of the registry.

    `models`: the model names requests may ask for, the first being the default. Only the
    entries "local" and "gemma" may leave `base_url` empty: each is then its managed llama.cpp
    server.
    `max_concurrency`: calls in flight to this endpoint across all jobs of the process (a
    request may ask for fewer per job). Rates per minute, 0 = unlimited. Prices in USD per
    million tokens; unset lets a request's price stand in. `tenants`: who may use it (unset =
    every tenant). `max_outage_seconds`: an endpoint failing every call for longer fails the
    job (0 = never). `timeout_seconds`: per HTTP attempt.
    """

    base_url: str = ""
    models: tuple[str, ...] = ()
    api_key_env: str = ""
    max_concurrency: int = 64
    requests_per_minute: float = 0.0
    tokens_per_minute: float = 0.0
    usd_per_million_prompt_tokens: float | None = None
    usd_per_million_completion_tokens: float | None = None
    tenants: tuple[str, ...] | None = None
    max_outage_seconds: float = 300.0
    timeout_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.base_url and not re.match(r"^https?://[^/\s]+", self.base_url):
            raise ValueError(f"base_url {preview(self.base_url)} is not an http(s) URL")
        if any(not model.strip() or len(model) > _MAX_MODEL_CHARS for model in self.models):
            raise ValueError("models must be non-empty names")
        if self.api_key_env:
            _check_env_name(self.api_key_env, "api_key_env")
        if not 1 <= self.max_concurrency <= 10_000:
            raise ValueError("max_concurrency must be in [1, 10000]")
        self._check_numbers()

    def _check_numbers(self) -> None:
        for name in ("requests_per_minute", "tokens_per_minute", "max_outage_seconds"):
            if not 0.0 <= getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be at least 0")
        if not 0.0 < self.timeout_seconds <= 3600.0:
            raise ValueError("timeout_seconds must be in (0, 3600]")
        for name in ("usd_per_million_prompt_tokens", "usd_per_million_completion_tokens"):
            price = getattr(self, name)
            if price is not None and not 0.0 <= price < _MAX_PRICE:
                raise ValueError(f"{name} must be in [0, 1e6)")

    def admits(self, tenant: str) -> bool:
        return self.tenants is None or tenant in self.tenants


@dataclass(frozen=True)
class EndpointConfig:
    """The operator's endpoint settings, read from `--endpoints FILE` / $PROMPTTUNE_ENDPOINTS.

    `endpoints`: the registry by name; an entry "local" or "gemma" replaces the built-in one.
    `allow_caller_endpoints`: single-tenant mode only; lets requests carry a `base_url` whose
    addresses are all inside `caller_networks` (CIDR), and an `api_key_env` listed in
    `caller_api_key_envs` ("*" lists every name outside PROMPTTUNE_*; meant for a private
    in-process server). `share_cache_across_tenants`: one response cache for every tenant.
    """

    endpoints: Mapping[str, EndpointEntry] = field(default_factory=dict)
    allow_caller_endpoints: bool = False
    caller_networks: tuple[str, ...] = ("0.0.0.0/0", "::/0")
    caller_api_key_envs: tuple[str, ...] = ()
    share_cache_across_tenants: bool = False

    def __post_init__(self) -> None:
        for name, entry in self.endpoints.items():
            if not _NAME.match(name):
                raise ValueError(f"endpoint name {preview(name)} must match {_NAME.pattern}")
            if not entry.base_url and name not in MANAGED_MODELS:
                raise ValueError(f"endpoint {name}: base_url is required")
            if entry.base_url and not entry.models:
                raise ValueError(f"endpoint {name}: models must list at least one model")
        for text in self.caller_networks:
            ipaddress.ip_network(text)  # ValueError names the bad network
        for name in self.caller_api_key_envs:
            if name != ANY_KEY_ENV:
                _check_env_name(name, "caller_api_key_envs entry")

    def networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(text) for text in self.caller_networks)


class _NoAliasLoader(yaml.SafeLoader):
    """Refuses YAML aliases: a few hundred bytes of nested aliases expand to gigabytes."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("YAML aliases are not allowed")
        return super().compose_node(parent, index)


def load_endpoint_config(path: Path) -> EndpointConfig:
    """Reads a YAML or JSON registry file strictly: unknown keys and wrong types are errors
    naming the key path. Raises EndpointConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            document = json.loads(text)
        else:
            document = yaml.load(text, Loader=_NoAliasLoader)
        return from_document(EndpointConfig, document or {})
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise EndpointConfigError(f"{path}: {error}") from error


def endpoint_config_path(path: str | None, environ: Mapping[str, str] = os.environ) -> Path | None:
    """`path`, else $PROMPTTUNE_ENDPOINTS, else None (the built-in "local" entry only)."""
    chosen = path or environ.get(ENDPOINTS_ENV) or None
    return Path(chosen) if chosen else None


def _price(configured: float | None, requested: float) -> float:
    """The entry's price; the request's only where the entry sets none."""
    return requested if configured is None else configured


@dataclass(frozen=True)
class RegistrySettings:
    """How an `EndpointRegistry` treats callers: `multi_tenant` is True when authentication
    is on (caller-supplied endpoints are then always refused)."""

    multi_tenant: bool = False
    defaults: EndpointDefaults = field(default_factory=EndpointDefaults)


class EndpointRegistry:
    """Resolves model specs to endpoints for a tenant. Thread-safe.

    `resolve` raises InvalidArgument naming the field for malformed or unknown choices and
    PermissionDenied for caller-supplied endpoints the server does not allow. An unknown
    endpoint and one the tenant may not use raise the same error.
    """

    def __init__(
        self,
        config: EndpointConfig,
        local_server: LocalModelServer,
        guard: AddressGuard,
        settings: RegistrySettings | None = None,
    ) -> None:
        self._settings = settings or RegistrySettings()
        defaults = self._settings.defaults
        built_in = EndpointEntry(
            max_concurrency=defaults.local_max_concurrency,
            requests_per_minute=defaults.requests_per_minute,
            tokens_per_minute=defaults.tokens_per_minute,
            max_outage_seconds=defaults.max_outage_seconds,
        )
        entries = {name: built_in for name in MANAGED_MODELS} | dict(config.endpoints)
        for name, model in MANAGED_MODELS.items():
            if not entries[name].models:
                entries[name] = dataclasses.replace(entries[name], models=(model,))
        self._entries = entries
        self._config = config
        self._local = local_server
        self._guard = guard

    def for_tenant(self, tenant: str) -> TenantEndpoints:
        """This registry as seen by `tenant`."""
        return TenantEndpoints(self, tenant)

    def check(self, spec: ModelSpec, field: str, tenant: str) -> ModelEndpoint:
        """Everything `resolve` checks, without starting the managed local model (whose
        endpoint then has no base URL). Resolves caller hosts (blocking: call off the event
        loop)."""
        return self._resolve(spec, field, tenant, start_local=False)

    def resolve(self, spec: ModelSpec, field: str, tenant: str) -> ModelEndpoint:
        """The endpoint `spec` names for `tenant`; the "local" entry starts the managed
        llama.cpp server on first use. Blocking: call off the event loop."""
        return self._resolve(spec, field, tenant, start_local=True)

    def _resolve(
        self, spec: ModelSpec, field: str, tenant: str, start_local: bool
    ) -> ModelEndpoint:
        if spec.base_url or spec.api_key_env:
            return self._caller_endpoint(spec, field)
        name = spec.endpoint_name
        if not name:
            raise InvalidArgument(
                f"{field}.endpoint", "is required: name an endpoint of the server's registry"
            )
        entry = self._entries.get(name)
        if entry is None or not entry.admits(tenant):
            # One message for both: no oracle of which endpoints exist.
            raise InvalidArgument(f"{field}.endpoint", "is not an endpoint available to you")
        if entry.api_key_env and entry.api_key_env not in os.environ:
            raise FailedPrecondition(f"endpoint {name} is not configured on this server")
        model = _model_of(entry, spec.model, f"{field}.model", name)
        return self._entry_endpoint(name, entry, spec, model, start_local)

    def _entry_endpoint(
        self, name: str, entry: EndpointEntry, spec: ModelSpec, model: str, start_local: bool
    ) -> ModelEndpoint:
        managed = not entry.base_url
        base_url, identity = entry.base_url, f"{name}|{model}|{entry.base_url}"
        if managed and start_local:
            # The managed server listens on a new port per run: the model file names it.
            embedded = MANAGED_MODELS[name]
            base_url = self._local.base_url(embedded)
            identity = f"{name}|{model}|{self._local.cache_identity(embedded)}"
        per_job = spec.max_concurrency or (
            _LOCAL_JOB_CONCURRENCY if managed else _DEFAULT_JOB_CONCURRENCY
        )
        return ModelEndpoint(
            name=name,
            base_url=base_url,
            model=model,
            api_key_env=entry.api_key_env,
            temperature=spec.temperature,
            max_tokens=spec.max_tokens,
            max_concurrency=min(per_job, entry.max_concurrency),
            timeout_seconds=entry.timeout_seconds,
            cache_identity=identity,
            shared_max_concurrency=entry.max_concurrency,
            requests_per_minute=entry.requests_per_minute,
            tokens_per_minute=entry.tokens_per_minute,
            job_requests_per_minute=spec.requests_per_minute,
            job_tokens_per_minute=spec.tokens_per_minute,
            max_outage_seconds=entry.max_outage_seconds,
            usd_per_million_prompt_tokens=_price(
                entry.usd_per_million_prompt_tokens, spec.usd_per_million_prompt_tokens
            ),
            usd_per_million_completion_tokens=_price(
                entry.usd_per_million_completion_tokens, spec.usd_per_million_completion_tokens
            ),
        )

    def _caller_endpoint(self, spec: ModelSpec, field: str) -> ModelEndpoint:
        if self._settings.multi_tenant or not self._config.allow_caller_endpoints:
            raise PermissionDenied(f"{field}: {_CALLER_REFUSED}")
        if spec.endpoint:
            raise InvalidArgument(
                f"{field}.endpoint", "cannot be combined with base_url or api_key_env"
            )
        if spec.api_key_env and not self._key_allowed(spec.api_key_env):
            raise InvalidArgument(f"{field}.api_key_env", _KEY_REFUSED)
        if not spec.base_url:
            raise InvalidArgument(f"{field}.base_url", "is required with api_key_env")
        self._guard.check(spec.base_url, f"{field}.base_url")
        if not spec.model.strip():
            raise InvalidArgument(f"{field}.model", "is required for a caller-supplied endpoint")
        defaults = self._settings.defaults
        return ModelEndpoint(
            # The caller's own host names its endpoint in failure causes and checks.
            name=urllib.parse.urlsplit(spec.base_url).netloc or "caller",
            base_url=spec.base_url,
            model=spec.model,
            api_key_env=spec.api_key_env,
            temperature=spec.temperature,
            max_tokens=spec.max_tokens,
            max_concurrency=spec.max_concurrency or _DEFAULT_JOB_CONCURRENCY,
            cache_identity=f"caller|{spec.model}|{spec.base_url}|{spec.api_key_env}",
            shared_max_concurrency=defaults.max_concurrency,
            requests_per_minute=defaults.requests_per_minute,
            tokens_per_minute=defaults.tokens_per_minute,
            job_requests_per_minute=spec.requests_per_minute,
            job_tokens_per_minute=spec.tokens_per_minute,
            max_outage_seconds=defaults.max_outage_seconds,
            usd_per_million_prompt_tokens=spec.usd_per_million_prompt_tokens,
            usd_per_million_completion_tokens=spec.usd_per_million_completion_tokens,
            connect_addresses=self._guard.connect_addresses,
        )

    def _key_allowed(self, name: str) -> bool:
        """Listed by the operator, not reserved, and set. One answer for every way of failing,
        so a caller cannot learn which variables the server has."""
        allowed = self._config.caller_api_key_envs
        listed = name in allowed or ANY_KEY_ENV in allowed
        valid = bool(_ENV_NAME.match(name)) and not name.startswith(RESERVED_ENV_PREFIX)
        return listed and valid and name in os.environ


@dataclass(frozen=True)
class TenantEndpoints:
    """An `EndpointRegistry` bound to one tenant: `resolve(spec, field)` for code that
    resolves the specs of one job or call."""

    registry: EndpointRegistry
    tenant: str

    def check(self, spec: ModelSpec, field: str = "model") -> ModelEndpoint:
        return self.registry.check(spec, field, self.tenant)

    def resolve(self, spec: ModelSpec, field: str = "model") -> ModelEndpoint:
        return self.registry.resolve(spec, field, self.tenant)


def _model_of(entry: EndpointEntry, requested: str, field: str, name: str) -> str:
    if not requested:
        return entry.models[0]
    if requested not in entry.models:
        raise InvalidArgument(
            field, f"{preview(requested)} is not served by endpoint {name}: {list(entry.models)}"
        )
    return requested
