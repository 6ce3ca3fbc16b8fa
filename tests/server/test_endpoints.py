"""The operator's endpoint registry, the caller-URL address guard and tenant-scoped caching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.fakes import FakeResolver, InMemoryResponseCache

from prompttune.contract import ModelKind, ModelSpec
from prompttune.search import ChatResponse, FailedPrecondition, InvalidArgument
from prompttune.server._addresses import (
    REFUSED,
    AddressGuard,
    ProtectedSocket,
    database_socket,
)
from prompttune.server._auth import PermissionDenied
from prompttune.server._cache import TenantCaches
from prompttune.server._endpoints import (
    EndpointConfig,
    EndpointConfigError,
    EndpointEntry,
    EndpointRegistry,
    RegistrySettings,
    load_endpoint_config,
)
from prompttune.server._local_model import LocalModelServer

REGISTRY_YAML = """
endpoints:
  openai:
    base_url: https://api.example.com/v1
    api_key_env: TEST_REGISTRY_KEY
    models: [small, large]
    max_concurrency: 8
    requests_per_minute: 600
    usd_per_million_prompt_tokens: 0.5
  private:
    base_url: http://10.1.2.3:8000/v1
    models: [tuned]
    tenants: [alpha]
allow_caller_endpoints: true
caller_networks: [203.0.113.0/24, 127.0.0.0/8]
caller_api_key_envs: [TEST_CALLER_KEY, TEST_UNSET_KEY]
"""


def registry(
    tmp_path: Path,
    *,
    multi_tenant: bool = False,
    resolver: FakeResolver | None = None,
    text: str = REGISTRY_YAML,
) -> EndpointRegistry:
    path = tmp_path / "endpoints.yaml"
    path.write_text(text, encoding="utf-8")
    config = load_endpoint_config(path)
    guard = AddressGuard(config.networks(), resolver or FakeResolver())
    return EndpointRegistry(
        config, LocalModelServer(), guard, RegistrySettings(multi_tenant=multi_tenant)
    )


def error_of(call: object) -> tuple[type[Exception], str]:
    assert callable(call)
    with pytest.raises((InvalidArgument, PermissionDenied, FailedPrecondition)) as caught:
        call()
    return type(caught.value), str(caught.value)


# ---- the registry file ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("endpoints:\n  x:\n    base_url: http://a/v1\n    models: [m]\n"
         "    colour: red\n", "x.colour"),
        ("allow_callers: true\n", "allow_callers"),
        ("endpoints:\n  x:\n    models: [m]\n", "base_url is required"),
        ("endpoints:\n  x:\n    base_url: http://a/v1\n", "at least one model"),
        ("endpoints:\n  x:\n    base_url: ftp://a\n    models: [m]\n", "not an http(s) URL"),
        ("caller_networks: [not-a-network]\n", "not-a-network"),
        ("caller_api_key_envs: [PROMPTTUNE_AUTH_TOKENS]\n", "reserved"),
        ("endpoints:\n  x:\n    base_url: http://a/v1\n    models: [m]\n"
         "    api_key_env: PROMPTTUNE_DB\n", "reserved"),
        ("endpoints:\n  x:\n    base_url: http://a/v1\n    models: [m]\n"
         "    max_concurrency: many\n", "endpoints.x.max_concurrency"),
        ("a: &a [1, 2]\nb: *a\n", "aliases are not allowed"),
    ],
)  # fmt: skip
def test_the_registry_file_is_parsed_strictly(tmp_path: Path, text: str, named: str) -> None:
    path = tmp_path / "endpoints.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(EndpointConfigError) as caught:
        load_endpoint_config(path)
    assert named in str(caught.value)


def test_the_registry_file_may_be_json(tmp_path: Path) -> None:
    path = tmp_path / "endpoints.json"
    document = {"endpoints": {"gw": {"base_url": "http://gw/v1", "models": ["m"]}}}
    path.write_text(json.dumps(document), encoding="utf-8")
    config = load_endpoint_config(path)
    assert config.endpoints == {"gw": EndpointEntry(base_url="http://gw/v1", models=("m",))}
    assert config.allow_caller_endpoints is False
    assert config.share_cache_across_tenants is False


# ---- resolving named endpoints ----------------------------------------------------------


def test_a_named_endpoint_takes_the_operators_url_key_and_default_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_REGISTRY_KEY", "sk-registry")
    endpoint = registry(tmp_path).resolve(ModelSpec.named("openai"), "model", "alpha")
    assert endpoint.base_url == "https://api.example.com/v1"
    assert endpoint.api_key_env == "TEST_REGISTRY_KEY"
    assert endpoint.model == "small"
    assert endpoint.cache_identity == "openai|small|https://api.example.com/v1"
    large = registry(tmp_path).resolve(ModelSpec.named("openai", model="large"), "m", "alpha")
    assert large.model == "large"
    with pytest.raises(InvalidArgument) as caught:
        registry(tmp_path).resolve(ModelSpec.named("openai", model="gpt-9"), "model", "alpha")
    assert caught.value.field == "model.model"


def test_request_limits_stay_the_jobs_own_and_prices_come_from_the_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_REGISTRY_KEY", "sk-registry")
    loose = ModelSpec(
        kind=ModelKind.OPENAI_COMPATIBLE,
        endpoint="openai",
        max_concurrency=100,
        requests_per_minute=10_000,
        tokens_per_minute=5,
        usd_per_million_prompt_tokens=0.0,
        usd_per_million_completion_tokens=2.0,
    )
    endpoint = registry(tmp_path).resolve(loose, "model", "alpha")
    assert endpoint.max_concurrency == 8  # the entry's 8, not the request's 100
    assert endpoint.shared_max_concurrency == 8
    # the shared buckets keep the operator's rates; the request's apply to its own job only
    assert endpoint.requests_per_minute == 600 and endpoint.job_requests_per_minute == 10_000
    assert endpoint.tokens_per_minute == 0 and endpoint.job_tokens_per_minute == 5
    assert endpoint.usd_per_million_prompt_tokens == 0.5  # the entry's price wins
    assert endpoint.usd_per_million_completion_tokens == 2.0  # stands in for a missing one
    tight = ModelSpec(kind=ModelKind.OPENAI_COMPATIBLE, endpoint="openai", requests_per_minute=60)
    resolved = registry(tmp_path).resolve(tight, "model", "alpha")
    assert (resolved.requests_per_minute, resolved.job_requests_per_minute) == (600, 60)


def test_unknown_and_forbidden_endpoints_give_the_same_error(tmp_path: Path) -> None:
    endpoints = registry(tmp_path, multi_tenant=True)
    assert endpoints.resolve(ModelSpec.named("private"), "model", "alpha").model == "tuned"

    def forbidden() -> object:
        return endpoints.resolve(ModelSpec.named("private"), "model", "beta")

    def unknown() -> object:
        return endpoints.resolve(ModelSpec.named("nonexistent"), "model", "beta")

    kind, message = error_of(forbidden)
    assert kind is InvalidArgument
    assert error_of(unknown) == (kind, message)


def test_a_tenants_view_resolves_as_that_tenant(tmp_path: Path) -> None:
    endpoints = registry(tmp_path, multi_tenant=True)
    assert endpoints.for_tenant("alpha").resolve(ModelSpec.named("private")).model == "tuned"
    with pytest.raises(InvalidArgument):
        endpoints.for_tenant("beta").check(ModelSpec.named("private"))


def test_an_entry_whose_key_is_missing_does_not_name_the_variable(tmp_path: Path) -> None:
    kind, message = error_of(
        lambda: registry(tmp_path).resolve(ModelSpec.named("openai"), "model", "alpha")
    )
    assert kind is FailedPrecondition
    assert "TEST_REGISTRY_KEY" not in message


def test_local_is_a_built_in_entry_checked_without_starting_the_model(tmp_path: Path) -> None:
    endpoints = registry(tmp_path, multi_tenant=True)
    endpoints.check(ModelSpec.local(), "model", "anyone")  # no llama.cpp process started
    with pytest.raises(InvalidArgument):
        endpoints.check(ModelSpec(kind=ModelKind.LOCAL, model="gpt-4"), "model", "anyone")
    restricted = "endpoints:\n  local:\n    tenants: [alpha]\n"
    with pytest.raises(InvalidArgument):
        registry(tmp_path, text=restricted).check(ModelSpec.local(), "model", "beta")


def test_gemma_is_a_built_in_entry_beside_local(tmp_path: Path) -> None:
    endpoints = registry(tmp_path, multi_tenant=True)
    gemma = endpoints.check(ModelSpec.named("gemma"), "model", "anyone")
    local = endpoints.check(ModelSpec.local(), "model", "anyone")
    assert (gemma.name, gemma.model) == ("gemma", "gemma-3-270m")
    assert (local.name, local.model) == ("local", "smollm2-135m-instruct")
    assert gemma.max_concurrency == local.max_concurrency == 2
    with pytest.raises(InvalidArgument) as caught:
        endpoints.check(ModelSpec.named("gemma", model="smollm2-135m-instruct"), "model", "x")
    assert caught.value.field == "model.model"
    restricted = "endpoints:\n  gemma:\n    tenants: [alpha]\n"
    restricted_registry = registry(tmp_path, text=restricted)
    restricted_registry.check(ModelSpec.named("gemma"), "model", "alpha")
    with pytest.raises(InvalidArgument):
        restricted_registry.check(ModelSpec.named("gemma"), "model", "beta")


def test_an_operator_gemma_entry_with_a_url_is_not_managed(tmp_path: Path) -> None:
    text = "endpoints:\n  gemma:\n    base_url: http://gpu-box:8000/v1\n    models: [gemma-3]\n"
    endpoint = registry(tmp_path, text=text).resolve(ModelSpec.named("gemma"), "model", "a")
    assert (endpoint.base_url, endpoint.model) == ("http://gpu-box:8000/v1", "gemma-3")


# ---- caller-supplied endpoints ----------------------------------------------------------


def test_caller_endpoints_are_refused_under_authentication(tmp_path: Path) -> None:
    endpoints = registry(tmp_path, multi_tenant=True)
    for spec in (
        ModelSpec.openai_compatible("http://203.0.113.5/v1", "m"),
        ModelSpec.openai_compatible("http://203.0.113.5/v1", "m", api_key_env="TEST_CALLER_KEY"),
        ModelSpec(kind=ModelKind.OPENAI_COMPATIBLE, endpoint="openai", api_key_env="HOME"),
    ):
        kind, message = error_of(lambda spec=spec: endpoints.check(spec, "model", "alpha"))
        assert kind is PermissionDenied and "not allowed" in message


def test_caller_endpoints_are_opt_in_in_single_tenant_mode(tmp_path: Path) -> None:
    closed = registry(tmp_path, text="endpoints: {}\n")
    spec = ModelSpec.openai_compatible("http://203.0.113.5/v1", "m")
    assert error_of(lambda: closed.check(spec, "model", "default"))[0] is PermissionDenied
    endpoint = registry(tmp_path).resolve(spec, "model", "default")
    assert endpoint.base_url == "http://203.0.113.5/v1"
    assert endpoint.cache_identity.startswith("caller|m|http://203.0.113.5/v1")


def test_no_error_tells_whether_a_server_variable_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_CALLER_KEY", "sk-caller")
    monkeypatch.setenv("PROMPTTUNE_AUTH_TOKENS", "secret=alpha")
    monkeypatch.delenv("TEST_UNSET_KEY", raising=False)
    endpoints = registry(tmp_path)
    url = "http://203.0.113.5/v1"
    errors = {
        error_of(
            lambda name=name: endpoints.check(
                ModelSpec.openai_compatible(url, "m", api_key_env=name), "model", "default"
            )
        )
        for name in ("HOME", "PATH", "NO_SUCH_VARIABLE_X", "TEST_UNSET_KEY",
                     "PROMPTTUNE_AUTH_TOKENS", "bad name")
    }  # fmt: skip
    assert len(errors) == 1
    spec = ModelSpec.openai_compatible(url, "m", api_key_env="TEST_CALLER_KEY")
    assert endpoints.resolve(spec, "model", "default").api_key_env == "TEST_CALLER_KEY"


# ---- the address guard ------------------------------------------------------------------

HOSTS = {
    "metadata-alias.example": ["169.254.169.254"],
    "mixed.example": ["203.0.113.9", "169.254.169.254"],
    "v6-metadata.example": ["fd00:ec2::254"],
    "public.example": ["203.0.113.7"],
    "db.example": ["203.0.113.20"],
}


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data",
        "http://metadata.google.internal/computeMetadata/v1",
        "http://metadata-alias.example/v1",
        "http://mixed.example/v1",
        "http://[fe80::1]/v1",
        "http://[::ffff:169.254.169.254]/v1",
        "http://[2002:a9fe:a9fe::1]/v1",  # 6to4 carrying 169.254.169.254
        "http://[64:ff9b::a9fe:a9fe]/v1",  # NAT64 of the same
        "http://v6-metadata.example/v1",
        "http://0.0.0.0:5432/v1",
        "http://127.0.0.1:50051/v1",
        "http://localhost:50051/v1",
        "http://db.example:5432/v1",
        "http://198.51.100.1/v1",  # outside the allowed networks
        "http://nxdomain.example/v1",  # does not resolve
    ],
)
def test_forbidden_addresses_are_refused_with_one_message(url: str) -> None:
    resolver = FakeResolver({**HOSTS, "localhost": ["127.0.0.1", "::1"]})
    guard = AddressGuard(
        EndpointConfig(caller_networks=("203.0.113.0/24", "127.0.0.0/8")).networks(),
        resolver,
        protected=[ProtectedSocket("db.example", 5432), ProtectedSocket("0.0.0.0", 50051)],
    )
    with pytest.raises(InvalidArgument) as caught:
        guard.check(url, "model.base_url")
    assert (caught.value.field, caught.value.message) == ("model.base_url", REFUSED)


def test_allowed_addresses_pass_the_guard() -> None:
    guard = AddressGuard(
        EndpointConfig().networks(),
        FakeResolver(HOSTS),
        protected=[ProtectedSocket("127.0.0.1", 5432)],
    )
    guard.check("https://public.example/v1", "f")
    guard.check("http://127.0.0.1:8080/v1", "f")  # loopback, but not one of the service's
    with pytest.raises(InvalidArgument, match="must be an http"):
        guard.check("file:///etc/passwd", "f")
    with pytest.raises(InvalidArgument, match="credentials"):
        guard.check("http://user:pw@public.example/v1", "f")


def test_the_database_socket_comes_from_its_url() -> None:
    assert database_socket("sqlite:///x.db") is None
    assert database_socket("postgresql+psycopg://u@db.internal/x") == ProtectedSocket(
        "db.internal", 5432
    )
    assert database_socket("postgresql://u@10.0.0.4:6432/x") == ProtectedSocket("10.0.0.4", 6432)


# ---- tenant-scoped cache ----------------------------------------------------------------


def test_cache_entries_of_one_tenant_are_invisible_to_another() -> None:
    inner = InMemoryResponseCache()
    caches = TenantCaches(inner)
    answer = ChatResponse("private answer", 3, 1)
    caches.for_tenant("alpha").put("key", answer)
    assert caches.for_tenant("alpha").get("key") == answer
    assert caches.for_tenant("beta").get("key") is None
    assert inner.get("key") is None  # scoped keys differ from the unscoped one
    shared = TenantCaches(inner, share_across_tenants=True)
    shared.for_tenant("alpha").put("key", answer)
    assert shared.for_tenant("beta").get("key") == answer
