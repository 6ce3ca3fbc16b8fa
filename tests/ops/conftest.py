"""Real processes for the ops tests: `prompttune serve`, the fake OpenAI endpoint, a PKI."""

from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from prompttune.server.healthcheck import ProbeTls, probe

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServeProcess:
    """A running `prompttune serve`; `stop()` sends SIGTERM and returns its stderr."""

    process: subprocess.Popen[bytes]
    target: str
    stderr_path: Path
    stopped: bool = field(default=False)

    def stop(self) -> str:
        if not self.stopped:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            finally:
                if self.process.poll() is None:
                    self.process.kill()
                    self.process.wait()
            self.stopped = True
        return self.stderr_path.read_text()


ServeFactory = Callable[..., ServeProcess]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeFactory]:
    """Starts `prompttune serve` with extra arguments and waits until health answers."""
    started: list[ServeProcess] = []

    def start(
        *extra: str, tls: ProbeTls | None = None, env: dict[str, str] | None = None
    ) -> ServeProcess:
        port = free_port()
        stderr_path = tmp_path / f"serve-{port}.stderr"
        command: Sequence[str] = [
            sys.executable, "-m", "prompttune.server.cli", "serve", "--port", str(port),
            "--db", f"sqlite:///{tmp_path / f'serve-{port}.db'}", "--allow-caller-endpoints",
            *extra,
        ]  # fmt: skip
        with stderr_path.open("wb") as stderr:
            process = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=stderr, env={**os.environ, **(env or {})}
            )
        server = ServeProcess(process, f"127.0.0.1:{port}", stderr_path)
        started.append(server)
        deadline = time.monotonic() + 90
        while not probe(server.target, timeout=1, tls=tls):
            assert process.poll() is None, stderr_path.read_text()
            assert time.monotonic() < deadline, "server did not become healthy"
            time.sleep(0.2)
        return server

    yield start
    for server in started:
        server.stop()


@dataclass(frozen=True)
class Pki:
    """A CA, a server certificate for `server_name` only, and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    server_name: str = "prompttune.internal"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    san: x509.GeneralName | None = None,
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = issuer or (subject, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName([san]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(
    folder: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("ops-pki")
    ca_key, server_key, client_key = _key(), _key(), _key()
    ca = _cert("prompttune ops test CA", ca_key, None)
    issuer = (ca.subject, ca_key)
    server = _cert("prompttune", server_key, issuer, x509.DNSName("prompttune.internal"))
    client = _cert("probe", client_key, issuer, x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    _write(folder, "ca", ca, ca_key)
    _write(folder, "server", server, server_key)
    _write(folder, "client", client, client_key)
    return Pki(
        ca=folder / "ca.pem",
        server_cert=folder / "server.pem",
        server_key=folder / "server.key",
        client_cert=folder / "client.pem",
        client_key=folder / "client.key",
    )
