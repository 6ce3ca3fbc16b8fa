"""The container probe (`python -m prompttune.server.healthcheck`) as a process against a real
`prompttune serve` over plaintext and mutual TLS, configured by flags or by environment."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.ops.conftest import Pki, ServeFactory

from prompttune.server.healthcheck import ProbeTls


def run_probe(*args: str, env: dict[str, str] | None = None) -> int:
    command = [sys.executable, "-m", "prompttune.server.healthcheck", *args]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTTUNE_HEALTH_")}
    return subprocess.run(command, env={**clean, **(env or {})}, timeout=30).returncode


def test_probe_plaintext(serve: ServeFactory) -> None:
    server = serve("--workers", "0")
    assert run_probe(server.target) == 0
    assert run_probe(server.target, "--service", "no.such.Service") == 1
    server.stop()
    assert run_probe(server.target, "--timeout", "1") == 1


def test_probe_mutual_tls_by_flags_and_by_environment(serve: ServeFactory, pki: Pki) -> None:
    tls = ProbeTls(pki.ca, pki.client_cert, pki.client_key, pki.server_name)
    server = serve(
        "--workers", "0",
        "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
        "--tls-client-ca", str(pki.ca),
        tls=tls,
    )  # fmt: skip
    flags = [
        "--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert),
        "--tls-key", str(pki.client_key), "--server-name", pki.server_name,
    ]  # fmt: skip
    assert run_probe(server.target, *flags) == 0
    environment = {
        "PROMPTTUNE_HEALTH_TARGET": server.target,
        "PROMPTTUNE_HEALTH_TLS_CA": str(pki.ca),
        "PROMPTTUNE_HEALTH_TLS_CERT": str(pki.client_cert),
        "PROMPTTUNE_HEALTH_TLS_KEY": str(pki.client_key),
        "PROMPTTUNE_HEALTH_SERVER_NAME": pki.server_name,
    }
    assert run_probe(env=environment) == 0
    # Each missing piece is reported unhealthy, not hung or crashed.
    assert run_probe(server.target, "--timeout", "2") == 1  # plaintext to a TLS port
    without_name = flags[:-2]
    assert run_probe(server.target, "--timeout", "2", *without_name) == 1
    without_cert = ["--tls-ca", str(pki.ca), "--server-name", pki.server_name]
    assert run_probe(server.target, "--timeout", "2", *without_cert) == 1
    assert run_probe(server.target, "--tls-cert", str(pki.client_cert)) == 2
