"""Server-wide endpoint flags (flow control, the registry file, caller endpoints) reach the
server configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from prompttune.server._endpoints import EndpointConfig, EndpointDefaults
from prompttune.server._taskfile import TaskFileError
from prompttune.server.cli import build_parser, endpoint_config, endpoint_defaults


def test_serve_and_worker_take_server_wide_endpoint_limits() -> None:
    for command in (["serve"], ["worker"]):
        args = build_parser().parse_args(
            [*command, "--endpoint-concurrency", "8", "--endpoint-rpm", "600",
             "--endpoint-tpm", "90000", "--max-outage-seconds", "30"]
        )  # fmt: skip
        assert endpoint_defaults(args) == EndpointDefaults(
            max_concurrency=8,
            requests_per_minute=600.0,
            tokens_per_minute=90000.0,
            max_outage_seconds=30.0,
        )


def test_endpoint_limits_default_to_the_library_defaults() -> None:
    args = build_parser().parse_args(["serve"])
    assert endpoint_defaults(args) == EndpointDefaults()


def test_serve_and_worker_read_the_endpoint_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = tmp_path / "endpoints.yaml"
    registry.write_text(
        "endpoints:\n  gw:\n    base_url: http://gw/v1\n    models: [m]\n", encoding="utf-8"
    )
    monkeypatch.delenv("PROMPTTUNE_ENDPOINTS", raising=False)
    for command in ("serve", "worker"):
        args = build_parser().parse_args([command, "--endpoints", str(registry)])
        config = endpoint_config(args)
        assert list(config.endpoints) == ["gw"] and not config.allow_caller_endpoints
        opened = build_parser().parse_args([command, "--allow-caller-endpoints"])
        assert endpoint_config(opened) == EndpointConfig(allow_caller_endpoints=True)
    monkeypatch.setenv("PROMPTTUNE_ENDPOINTS", str(registry))
    assert list(endpoint_config(build_parser().parse_args(["serve"])).endpoints) == ["gw"]
    registry.write_text("endpoints:\n  gw:\n    base_urll: http://gw/v1\n", encoding="utf-8")
    with pytest.raises(TaskFileError, match="base_urll"):
        endpoint_config(build_parser().parse_args(["serve"]))
