"""Container health probe: exits 0 when the gRPC health service answers SERVING.

Usage: python -m prompttune.server.healthcheck [HOST:PORT] (default 127.0.0.1:50051)
"""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def probe(target: str, timeout: float = 3.0) -> bool:
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="prompttune.v1.OptimizerService"),
                timeout=timeout,
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def main() -> int:
    target = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"
    return 0 if probe(target) else 1


if __name__ == "__main__":
    sys.exit(main())
