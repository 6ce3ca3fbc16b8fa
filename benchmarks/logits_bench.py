"""Generation speed of the managed llama.cpp server with and without `--logits_all true`.

For each embedded model, starts one server of each kind and sends the same 20 SST-2 prompts
(generation, up to 32 tokens, as scoring by generation does) to both in alternation, so load
from other processes falls on both alike. Prints seconds per call and their ratio.

    PYTHONPATH=proto:client:server:search python benchmarks/logits_bench.py
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prompttune.server._local_model import (
    EMBEDDED_MODELS,
    EmbeddedModel,
    LocalModelConfig,
    _free_port,
    server_command,
)

CALLS = 20
SST2 = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "sst2" / "test.jsonl"
INSTRUCTION = "Classify the sentiment of the movie review as positive or negative."


def start(model: EmbeddedModel, logits_all: bool) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    command = server_command(model, model.locate(), port, LocalModelConfig())
    command[command.index("--logits_all") + 1] = "true" if logits_all else "false"
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}/v1"
    for _ in range(480):
        try:
            with urllib.request.urlopen(f"{base_url}/models", timeout=2):
                return process, base_url
        except OSError:
            time.sleep(0.25)
    raise RuntimeError(f"{model.alias} server did not start")


def timed_call(base_url: str, model: str, sentence: str) -> float:
    body = {
        "model": model,
        "temperature": 0,
        "max_tokens": 32,
        "messages": [{"role": "user", "content": f"{INSTRUCTION}\n\n{sentence}\nSentiment:"}],
    }
    request = urllib.request.Request(
        f"{base_url}/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=300) as reply:
        reply.read()
    return time.perf_counter() - started


def measure(model: EmbeddedModel, sentences: list[str]) -> dict[str, float]:
    servers = {flag: start(model, flag) for flag in (False, True)}
    seconds: dict[bool, list[float]] = {False: [], True: []}
    try:
        for sentence in sentences:
            for flag, (_, base_url) in servers.items():
                seconds[flag].append(timed_call(base_url, model.alias, sentence))
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait()
    without, with_all = statistics.mean(seconds[False]), statistics.mean(seconds[True])
    return {"without": without, "with": with_all, "ratio": with_all / without}


def main() -> None:
    lines = SST2.read_text(encoding="utf-8").splitlines()[:CALLS]
    sentences = [json.loads(line)["input"] for line in lines]
    for model in EMBEDDED_MODELS:
        figures = measure(model, sentences)
        print(
            f"{model.alias}: {CALLS} generation calls, s/call without logits_all "
            f"{figures['without']:.3f}, with {figures['with']:.3f}, ratio {figures['ratio']:.2f}",
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
