"""Container health probe: exits 0 when the gRPC health service answers SERVING.

Usage:
    python -m prompttune.server.healthcheck [HOST:PORT] [--service NAME] [--timeout S]
        [--tls-ca CA.pem [--tls-cert CLIENT.pem --tls-key CLIENT.key] [--server-name NAME]]

Defaults come from the environment, so one image serves plaintext, TLS and mutual TLS by its
settings alone: PROMPTTUNE_HEALTH_TARGET (127.0.0.1:50051), PROMPTTUNE_HEALTH_TLS_CA,
PROMPTTUNE_HEALTH_TLS_CERT, PROMPTTUNE_HEALTH_TLS_KEY and PROMPTTUNE_HEALTH_SERVER_NAME (the
name the server certificate must carry; a probe dialling 127.0.0.1 needs it when the
certificate names the service's DNS name). Exit codes: 0 serving, 1 not serving or
unreachable, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_SERVICE = "prompttune.v1.OptimizerService"
ENV_PREFIX = "PROMPTTUNE_HEALTH_"


@dataclass(frozen=True)
class ProbeTls:
    """PEM paths. `cert` and `key` (both or neither) present a client certificate (mTLS)."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=self.key.read_bytes() if self.key else None,
            certificate_chain=self.cert.read_bytes() if self.cert else None,
        )


def _channel(target: str, tls: ProbeTls | None) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(target)
    options = []
    if tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return grpc.secure_channel(target, tls.credentials(), options=options)


def probe(
    target: str,
    timeout: float = 3.0,
    tls: ProbeTls | None = None,
    service: str = DEFAULT_SERVICE,
) -> bool:
    """True when `service` on `target` answers SERVING within `timeout` seconds."""
    with _channel(target, tls) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="python -m prompttune.server.healthcheck")
    parser.add_argument("target", nargs="?", default=env(f"{ENV_PREFIX}TARGET", "127.0.0.1:50051"))
    parser.add_argument("--service", default=env(f"{ENV_PREFIX}SERVICE", DEFAULT_SERVICE))
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds")
    parser.add_argument("--tls-ca", default=env(f"{ENV_PREFIX}TLS_CA"), help="CA (PEM): use TLS")
    parser.add_argument("--tls-cert", default=env(f"{ENV_PREFIX}TLS_CERT"), help="client cert")
    parser.add_argument("--tls-key", default=env(f"{ENV_PREFIX}TLS_KEY"), help="client key")
    parser.add_argument("--server-name", default=env(f"{ENV_PREFIX}SERVER_NAME"))
    return parser


def _tls(args: argparse.Namespace, parser: argparse.ArgumentParser) -> ProbeTls | None:
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if not args.tls_ca:
        if args.tls_cert or args.server_name:
            parser.error("--tls-cert/--tls-key/--server-name need --tls-ca")
        return None
    return ProbeTls(
        ca=Path(args.tls_ca),
        cert=Path(args.tls_cert) if args.tls_cert else None,
        key=Path(args.tls_key) if args.tls_key else None,
        server_name=args.server_name or None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    tls = _tls(args, parser)
    try:
        healthy = probe(args.target, args.timeout, tls, args.service)
    except OSError as error:  # unreadable certificate files
        print(f"healthcheck: {error}", file=sys.stderr)
        return 2
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
