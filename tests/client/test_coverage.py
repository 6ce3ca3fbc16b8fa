"""Every RPC of OptimizerService has a method on the SDK client."""

from __future__ import annotations

import re

from prompttune.client import Client
from prompttune.v1 import optimizer_pb2


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def test_every_rpc_has_a_client_method() -> None:
    service = optimizer_pb2.DESCRIPTOR.services_by_name["OptimizerService"]
    names = [_snake(method.name) for method in service.methods]

    missing = [name for name in names if not callable(getattr(Client, name, None))]

    assert names and missing == []
