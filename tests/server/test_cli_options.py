"""Server-wide endpoint flow-control flags reach the server configuration."""

from __future__ import annotations

from prompttune.server._endpoints import EndpointDefaults
from prompttune.server.cli import build_parser, endpoint_defaults


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
