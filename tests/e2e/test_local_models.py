"""The two embedded models on their managed llama.cpp servers: each answers under its own
name through the endpoint registry and returns label log probabilities."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest
from tests.fakes import FakeResolver

from prompttune.contract import ModelSpec
from prompttune.server._addresses import AddressGuard
from prompttune.server._endpoints import EndpointConfig, EndpointRegistry
from prompttune.server._llama_serve import first_token_completion
from prompttune.server._local_model import LocalModelConfig, LocalModelServer, find_smollm2_gguf

pytestmark = pytest.mark.e2e

QUESTION = (
    "Classify the sentiment of the movie review as positive or negative.\n\n"
    "a charming yet poignant tale of the irrevocable ties that bind .\nSentiment:"
)


def chat(base_url: str, model: str, **options: Any) -> dict[str, Any]:
    body = {"model": model, "temperature": 0, **options}
    body["messages"] = [{"role": "user", "content": QUESTION}]
    request = urllib.request.Request(
        f"{base_url}/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as reply:
        answer: dict[str, Any] = json.loads(reply.read())
    return answer


def test_local_and_gemma_answer_with_label_log_probabilities() -> None:
    local_models = LocalModelServer(LocalModelConfig(n_ctx=512))
    config = EndpointConfig()
    endpoints = EndpointRegistry(
        config, local_models, AddressGuard(config.networks(), FakeResolver())
    )
    try:
        resolved = [
            endpoints.resolve(spec, "model", "anyone")
            for spec in (ModelSpec.local(), ModelSpec.named("gemma"))
        ]
        assert [endpoint.model for endpoint in resolved] == [
            "smollm2-135m-instruct",
            "gemma-3-270m",
        ]
        assert resolved[0].base_url != resolved[1].base_url
        assert resolved[0].cache_identity != resolved[1].cache_identity
        for endpoint in resolved:
            scored = chat(
                endpoint.base_url, endpoint.model, max_tokens=1, logprobs=True, top_logprobs=20
            )
            top = scored["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
            tokens = {entry["token"].strip().lower() for entry in top}
            assert 18 <= len(top) <= 20  # alternatives that read alike are merged
            assert "positive" in tokens, (endpoint.model, tokens)
            generated = chat(endpoint.base_url, endpoint.model, max_tokens=8)
            assert generated["model"] == endpoint.model
            assert "positive" in generated["choices"][0]["message"]["content"].lower()
    finally:
        local_models.close()


def test_the_first_token_fast_path_matches_llama_cpp_s_own_log_probabilities() -> None:
    """The managed server's one-token path (no `logits_all`) gives the same top tokens and
    log probabilities as llama-cpp-python with `logits_all`, also when the next prompt shares
    a cached prefix with the previous one."""
    from llama_cpp import Llama

    gguf = str(find_smollm2_gguf())
    reference = Llama(gguf, n_ctx=512, n_threads=2, logits_all=True, verbose=False)
    fast = Llama(gguf, n_ctx=512, n_threads=2, verbose=False)
    for question in (QUESTION, QUESTION.replace("charming yet poignant", "dull and tired")):
        tokens = reference.tokenize(question.encode(), add_bos=True, special=True)
        want = reference.create_completion(tokens, max_tokens=1, temperature=0, logprobs=20)
        got = first_token_completion(fast, tokens, 20, "m")
        want_top = want["choices"][0]["logprobs"]["top_logprobs"][0]  # type: ignore[index]
        got_top = got["choices"][0]["logprobs"]["top_logprobs"][0]
        assert got["choices"][0]["text"] == want["choices"][0]["text"]  # type: ignore[index]
        shared = set(want_top) & set(got_top)
        assert len(shared) >= 18
        for token in shared:
            assert got_top[token] == pytest.approx(want_top[token], abs=1e-3)
    assert fast.n_tokens == len(tokens)  # the second prompt reused the first one's prefix
