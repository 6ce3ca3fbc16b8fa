"""Health checking and server reflection, as infrastructure tools expect them.

Health reports every service separately (and "" for the server as a whole): SERVING once the
server listens, NOT_SERVING for all of them as soon as it starts draining, before in-flight
RPCs finish, so `Health/Watch` streams and probes see the change first. Reflection answers
on both `grpc.reflection.v1` (grpcurl, Postman, current grpc tools) and the older
`grpc.reflection.v1alpha`; the two protocols are the same messages under two package names.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
REFLECTION_V1ALPHA: str = reflection.SERVICE_NAME
_SERVING = health_pb2.HealthCheckResponse.SERVING


class HealthReporter:
    """Owns the health servicer of one server; `services` are full service names."""

    def __init__(self, services: tuple[str, ...]) -> None:
        self.services = ("", *services, HEALTH_SERVICE, REFLECTION_V1, REFLECTION_V1ALPHA)
        self._servicer = health.aio.HealthServicer()

    def attach(self, server: grpc.aio.Server) -> None:
        """Adds Health and both reflection protocols to `server` (before it starts)."""
        health_pb2_grpc.add_HealthServicer_to_server(self._servicer, server)
        add_reflection(server, self.services[1:])

    async def serving(self) -> None:
        for name in self.services:
            await self._servicer.set(name, _SERVING)

    async def not_serving(self, services: tuple[str, ...] = ()) -> None:
        """NOT_SERVING for `services` (default: the whole server, "" and every service),
        e.g. when the server can no longer run jobs. Serving again takes `serving()`."""
        for name in services or self.services:
            await self._servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    async def draining(self) -> None:
        """NOT_SERVING for every service, for good: later `set` calls are ignored."""
        await self._servicer.enter_graceful_shutdown()


def add_reflection(server: grpc.aio.Server, services: tuple[str, ...]) -> None:
    """One reflection servicer answering on the v1 and v1alpha method names."""
    servicer = reflection.aio.ReflectionServicer(services)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        tuple(
            grpc.method_handlers_generic_handler(name, {"ServerReflectionInfo": handler})
            for name in (REFLECTION_V1, REFLECTION_V1ALPHA)
        )
    )
