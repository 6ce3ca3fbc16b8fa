"""Bearer-token authentication (checked before a request is parsed), tenant isolation, TLS
and mutual TLS."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tests.server.conftest import (
    FAKE_MODEL,
    FAKE_REGISTRY,
    REGISTRY_MODEL,
    TASK,
    FakeModels,
    fake_adapters,
    small_dataset,
)

from prompttune.client import (
    Client,
    JobState,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
    UnavailableError,
)
from prompttune.server import EmbeddedServer, ServerConfig
from prompttune.server._app import TlsConfig
from prompttune.server._auth import (
    AuthConfigError,
    AuthInterceptor,
    TokenRegistry,
    hash_token,
    load_registry,
)
from prompttune.v1 import optimizer_pb2 as pb

TOKENS = {"token-alpha": "alpha", hash_token("token-beta"): "beta"}


def make_server(tmp_path: Path, **config: object) -> EmbeddedServer:
    settings = ServerConfig(
        db_url=f"sqlite:///{tmp_path / 'auth.db'}", workers=0, endpoint_config=FAKE_REGISTRY
    )
    settings = ServerConfig(**{**settings.__dict__, **config})  # type: ignore[arg-type]
    return EmbeddedServer(settings, fake_adapters(FakeModels()))


@pytest.fixture
def auth_server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    with make_server(tmp_path, auth=TokenRegistry.from_mapping(TOKENS)) as server:
        yield server


def test_registry_keeps_only_hashes_and_reads_env_and_file(tmp_path: Path) -> None:
    registry = TokenRegistry.from_mapping(TOKENS)
    assert "token-alpha" not in repr(registry)
    assert registry.tenant_for("token-alpha") == "alpha"
    assert registry.tenant_for("token-beta") == "beta"
    assert registry.tenant_for("token-gamma") is None
    from_env = load_registry(None, {"PROMPTTUNE_AUTH_TOKENS": "t1=acme, t2=globex"})
    assert from_env is not None and from_env.tenant_for("t2") == "globex"
    path = tmp_path / "tokens.yaml"
    path.write_text(f"sha256:{hash_token('filetoken')}: files\n", encoding="utf-8")
    from_file = load_registry(path, {})
    assert from_file is not None and from_file.tenant_for("filetoken") == "files"
    assert load_registry(None, {}) is None
    with pytest.raises(AuthConfigError):
        TokenRegistry.from_env_value("no-separator")


def test_calls_without_a_valid_token_are_unauthenticated(auth_server: EmbeddedServer) -> None:
    for token in (None, "wrong-token"):
        with Client(auth_server.target, timeout=5, token=token) as client:
            with pytest.raises(UnauthenticatedError):
                client.list_jobs()
            with pytest.raises(UnauthenticatedError):
                list(client.watch_job("job-0000"))
    basic = {"authorization": "Basic abc"}
    with (
        Client(auth_server.target, timeout=5, metadata=basic) as c,
        pytest.raises(UnauthenticatedError),
    ):
        c.get_job("job-0000")


METHOD = "/prompttune.v1.OptimizerService/CreateJob"


def raw_create(target: str, body: bytes, token: str | None) -> grpc.RpcError:
    """Sends `body` as the CreateJob request bytes; returns the error it was refused with."""
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    with grpc.insecure_channel(target, options=options) as channel:
        call = channel.unary_unary(
            METHOD, request_serializer=lambda raw: raw, response_deserializer=lambda raw: raw
        )
        with pytest.raises(grpc.RpcError) as caught:
            call(body, metadata=metadata, timeout=60)
    return caught.value


def test_an_unauthenticated_request_is_refused_before_it_is_parsed(
    auth_server: EmbeddedServer,
) -> None:
    # 30 MB of bytes that are no valid message: parsing them would answer INVALID_ARGUMENT.
    garbage = b"\xff" * (30 * 1024 * 1024)
    refused = raw_create(auth_server.target, garbage, token=None)
    assert refused.code() is grpc.StatusCode.UNAUTHENTICATED
    assert raw_create(auth_server.target, garbage, "wrong").code() is (
        grpc.StatusCode.UNAUTHENTICATED
    )
    parsed = raw_create(auth_server.target, b"\xff" * 64, "token-alpha")
    assert parsed.code() is grpc.StatusCode.INVALID_ARGUMENT


class _Details:
    def __init__(self, method: str, metadata: tuple[tuple[str, str], ...]) -> None:
        self.method = method
        self.invocation_metadata = metadata


def test_the_interceptor_never_calls_the_deserializer_of_a_refused_call() -> None:
    import asyncio

    parsed: list[bytes] = []

    def deserializer(data: bytes) -> pb.CreateJobRequest:
        parsed.append(data)
        return pb.CreateJobRequest.FromString(data)

    async def behaviour(request: object, context: object) -> None:
        raise AssertionError("the handler must not run")

    async def continuation(details: object) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(behaviour, request_deserializer=deserializer)

    interceptor = AuthInterceptor(TokenRegistry.from_mapping(TOKENS))
    refused = asyncio.run(interceptor.intercept_service(continuation, _Details(METHOD, ())))
    assert refused.request_deserializer(b"\xff" * 1024) is None
    bearer = (("authorization", "Bearer token-alpha"),)
    admitted = asyncio.run(interceptor.intercept_service(continuation, _Details(METHOD, bearer)))
    admitted.request_deserializer(b"")
    assert parsed == [b""]


def test_streaming_request_methods_are_checked_too() -> None:
    import asyncio

    from prompttune.server._auth import Unauthenticated

    async def behaviour(requests: object, context: object) -> object:
        raise AssertionError("the handler must not run")
        yield  # an async generator, like a stream-stream servicer method

    async def continuation(details: object) -> grpc.RpcMethodHandler:
        return grpc.stream_stream_rpc_method_handler(behaviour)

    async def call() -> None:
        interceptor = AuthInterceptor(TokenRegistry.from_mapping(TOKENS))
        handler = await interceptor.intercept_service(continuation, _Details(METHOD, ()))
        assert handler.stream_stream is not None
        async for _reply in handler.stream_stream(iter(()), None):
            pass

    with pytest.raises(Unauthenticated):
        asyncio.run(call())


def test_caller_supplied_endpoints_are_refused_under_authentication(
    auth_server: EmbeddedServer,
) -> None:
    with Client(auth_server.target, timeout=5, token="token-alpha") as alpha:
        with pytest.raises(PermissionDeniedError, match="registry"):
            alpha.create_job(TASK, small_dataset(), FAKE_MODEL)
        assert alpha.list_jobs().jobs == ()


def test_health_checking_stays_open(auth_server: EmbeddedServer) -> None:
    with grpc.insecure_channel(auth_server.target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_a_tenant_cannot_see_another_tenants_jobs(auth_server: EmbeddedServer) -> None:
    with (
        Client(auth_server.target, timeout=5, token="token-alpha") as alpha,
        Client(auth_server.target, timeout=5, token="token-beta") as beta,
    ):
        job = alpha.create_job(TASK, small_dataset(), REGISTRY_MODEL, request_id="same-key")
        assert alpha.get_job(job.id).id == job.id
        with pytest.raises(NotFoundError):
            beta.get_job(job.id)
        with pytest.raises(NotFoundError):
            beta.cancel_job(job.id)
        with pytest.raises(NotFoundError):
            list(beta.watch_job(job.id))
        assert [j.id for j in alpha.list_jobs().jobs] == [job.id]
        assert beta.list_jobs().jobs == ()
        # Idempotency keys are per tenant: beta's "same-key" is a different job.
        other = beta.create_job(TASK, small_dataset(), REGISTRY_MODEL, request_id="same-key")
        assert other.id != job.id
        assert alpha.create_job(
            TASK, small_dataset(), REGISTRY_MODEL, request_id="same-key"
        ).id == (job.id)
        assert alpha.cancel_job(job.id).state is JobState.CANCELLED


def test_single_tenant_mode_needs_no_token(tmp_path: Path) -> None:
    with make_server(tmp_path) as server, Client(server.target, timeout=5) as client:
        job = client.create_job(TASK, small_dataset(), REGISTRY_MODEL)
        assert [j.id for j in client.list_jobs().jobs] == [job.id]


# ---- TLS ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: bytes
    server_cert: Path
    server_key: Path
    ca_file: Path
    client_cert: bytes
    client_key: bytes


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    ca: bool = False,
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
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca_key = _key()
    ca = _cert("prompttune test CA", ca_key, None, ca=True)
    issuer = (ca.subject, ca_key)
    server_key, client_key = _key(), _key()
    server = _cert("localhost", server_key, issuer)
    client = _cert("client", client_key, issuer)
    pem = serialization.Encoding.PEM
    (folder / "server.pem").write_bytes(server.public_bytes(pem))
    (folder / "server.key").write_bytes(_pem_key(server_key))
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    return Pki(
        ca=ca.public_bytes(pem),
        server_cert=folder / "server.pem",
        server_key=folder / "server.key",
        ca_file=folder / "ca.pem",
        client_cert=client.public_bytes(pem),
        client_key=_pem_key(client_key),
    )


def test_tls(tmp_path: Path, pki: Pki) -> None:
    tls = TlsConfig(cert=pki.server_cert, key=pki.server_key)
    with make_server(tmp_path, tls=tls) as server:
        credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca)
        with Client(server.target, timeout=5, credentials=credentials) as client:
            assert client.list_jobs().jobs == ()
        with Client(server.target, timeout=2) as plaintext, pytest.raises(UnavailableError):
            plaintext.list_jobs()


def test_mutual_tls_requires_a_client_certificate(tmp_path: Path, pki: Pki) -> None:
    tls = TlsConfig(cert=pki.server_cert, key=pki.server_key, client_ca=pki.ca_file)
    with make_server(tmp_path, tls=tls) as server:
        with_cert = grpc.ssl_channel_credentials(pki.ca, pki.client_key, pki.client_cert)
        with Client(server.target, timeout=5, credentials=with_cert) as client:
            assert client.list_jobs().jobs == ()
        without = grpc.ssl_channel_credentials(root_certificates=pki.ca)
        with (
            Client(server.target, timeout=3, credentials=without) as client,
            pytest.raises(UnavailableError),
        ):
            client.list_jobs()
