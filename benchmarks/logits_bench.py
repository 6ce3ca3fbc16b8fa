"""Generation cost of the embedded models with and without `logits_all` (which the managed
llama.cpp server needs to return log probabilities).

For each embedded model, loads it twice in this process (logits_all on and off, one thread
each) and sends the same SST-2 prompts (generation, up to 32 tokens, as scoring by generation
does) to both in alternation. Prints CPU seconds per call (the process's CPU time: on a shared
machine wall time measures the neighbours) and wall seconds beside it, and their ratios.

    PYTHONPATH=proto:client:server:search python benchmarks/logits_bench.py [CALLS]
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from llama_cpp import Llama

from prompttune.server._llama_serve import register_plain_format
from prompttune.server._local_model import EMBEDDED_MODELS, EmbeddedModel

SST2 = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "sst2" / "test.jsonl"
INSTRUCTION = "Classify the sentiment of the movie review as positive or negative."


def load(model: EmbeddedModel, logits_all: bool) -> Llama:
    return Llama(
        str(model.locate()),
        n_ctx=2048,
        n_threads=1,
        logits_all=logits_all,
        chat_format=model.chat_format or None,
        verbose=False,
    )


def timed_call(llama: Llama, sentence: str) -> tuple[float, float]:
    messages: Any = [{"role": "user", "content": f"{INSTRUCTION}\n\n{sentence}\nSentiment:"}]
    cpu, wall = time.process_time(), time.perf_counter()
    llama.create_chat_completion(messages, temperature=0.0, max_tokens=32)
    return time.process_time() - cpu, time.perf_counter() - wall


def measure(model: EmbeddedModel, sentences: list[str]) -> dict[str, float]:
    llamas = {flag: load(model, flag) for flag in (False, True)}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    wall: dict[bool, list[float]] = {False: [], True: []}
    for sentence in sentences:
        for flag, llama in llamas.items():
            spent_cpu, spent_wall = timed_call(llama, sentence)
            cpu[flag].append(spent_cpu)
            wall[flag].append(spent_wall)
    figures = {}
    for name, table in (("cpu", cpu), ("wall", wall)):
        without, with_all = statistics.mean(table[False]), statistics.mean(table[True])
        figures |= {f"{name}_without": without, f"{name}_with": with_all}
        figures[f"{name}_ratio"] = with_all / without
    return figures


def main(argv: list[str]) -> int:
    calls = int(argv[0]) if argv else 20
    register_plain_format()
    lines = SST2.read_text(encoding="utf-8").splitlines()[:calls]
    sentences = [json.loads(line)["input"] for line in lines]
    for model in EMBEDDED_MODELS:
        f = measure(model, sentences)
        print(
            f"{model.alias}: {calls} generation calls each; CPU s/call without logits_all "
            f"{f['cpu_without']:.3f}, with {f['cpu_with']:.3f} (x{f['cpu_ratio']:.2f}); wall "
            f"s/call {f['wall_without']:.3f} vs {f['wall_with']:.3f} (x{f['wall_ratio']:.2f})",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
