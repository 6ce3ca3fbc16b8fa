"""Every RPC of OptimizerService has a method on the SDK clients, sync and async."""

from __future__ import annotations

import re

import pytest

from prompttune.client import AsyncClient, Client
from prompttune.v1 import optimizer_pb2

# RPCs served by a method of another name: StreamEvaluation is how `evaluate_prompt` scores
# (EvaluatePrompt only for servers that predate it); ComparePrompts is `compare` (and `check`).
SERVED_BY = {"stream_evaluation": "evaluate_prompt", "compare_prompts": "compare"}


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@pytest.mark.parametrize("client_class", [Client, AsyncClient])
def test_every_rpc_has_a_client_method(client_class: type) -> None:
    service = optimizer_pb2.DESCRIPTOR.services_by_name["OptimizerService"]
    names = [_snake(method.name) for method in service.methods]

    missing = [
        name
        for name in names
        if not callable(getattr(client_class, SERVED_BY.get(name, name), None))
    ]

    assert {"delete_job", "stream_evaluation"} <= set(names) and missing == []
