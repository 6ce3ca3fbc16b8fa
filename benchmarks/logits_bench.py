"""Task-model cost per scored example on the embedded models: label-probability calls and
generation calls, as the managed llama.cpp server answered them before (`logits_all`, and
llama-cpp-python's own log probabilities) and as it answers them now (no `logits_all`, and the
first-token fast path of `prompttune.server._llama_serve`).

For each embedded model, loads it four times in this process (one instance per kind of call:
label or generation, logits_all on or off) and scores the same SST-2 test sentences with a
prompt of the form the search returns (instruction and four demonstrations as chat turns,
answer cue last), one sentence after another, so every instance reuses the cached prompt
prefix as a scoring run does. One untimed warm-up call per instance; the four kinds alternate
per sentence. Prints CPU seconds per call (the process's CPU time: on a shared machine wall time
measures the neighbours), wall seconds beside it, and the ratios the issue asks about.

    PYTHONPATH=proto:client:server:search python benchmarks/logits_bench.py [CALLS]
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llama_cpp import Llama

from prompttune.server._llama_serve import install_first_token_fast_path, register_plain_format
from prompttune.server._local_model import EMBEDDED_MODELS, EmbeddedModel

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "sst2"
INSTRUCTION = "Classify the sentiment of the movie review as positive or negative."
THREADS = 2


def load(model: EmbeddedModel, logits_all: bool) -> Llama:
    return Llama(
        str(model.locate()),
        n_ctx=2048,
        n_threads=THREADS,
        logits_all=logits_all,
        chat_format=model.chat_format or None,
        verbose=False,
    )


def messages(demos: list[dict[str, str]], sentence: str) -> Any:
    turns: list[dict[str, str]] = []
    for index, demo in enumerate(demos):
        lead = f"{INSTRUCTION}\n\n" if index == 0 else ""
        turns.append({"role": "user", "content": f"{lead}{demo['input']}\nSentiment:"})
        turns.append({"role": "assistant", "content": demo["output"]})
    turns.append({"role": "user", "content": f"{sentence}\nSentiment:"})
    return turns


def label_call(llama: Llama, chat: Any) -> None:
    llama.create_chat_completion(
        chat, temperature=0.0, max_tokens=1, logprobs=True, top_logprobs=20
    )


def generation_call(llama: Llama, chat: Any) -> None:
    llama.create_chat_completion(chat, temperature=0.0, max_tokens=32)


def timed(call: Callable[[Llama, Any], None], llama: Llama, chat: Any) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    call(llama, chat)
    return time.process_time() - cpu, time.perf_counter() - wall


def measure(model: EmbeddedModel, demos: list[dict[str, str]], sentences: list[str]) -> dict:
    kinds = {
        "label_old": (label_call, load(model, True)),
        "label_new": (label_call, load(model, False)),
        "generation_old": (generation_call, load(model, True)),
        "generation_new": (generation_call, load(model, False)),
    }
    for call, llama in kinds.values():
        call(llama, messages(demos, "An untimed warm-up sentence."))
    cpu: dict[str, list[float]] = {kind: [] for kind in kinds}
    wall: dict[str, list[float]] = {kind: [] for kind in kinds}
    for sentence in sentences:
        chat = messages(demos, sentence)
        for kind, (call, llama) in kinds.items():
            spent_cpu, spent_wall = timed(call, llama, chat)
            cpu[kind].append(spent_cpu)
            wall[kind].append(spent_wall)
    figures = {f"cpu_{k}": statistics.mean(v) for k, v in cpu.items()}
    figures |= {f"wall_{k}": statistics.mean(v) for k, v in wall.items()}
    return figures


def main(argv: list[str]) -> int:
    calls = int(argv[0]) if argv else 20
    register_plain_format()
    install_first_token_fast_path()
    train = [json.loads(line) for line in (DATA / "train.jsonl").read_text().splitlines()]
    demos = [next(d for d in train if d["output"] == label) for label in ("positive", "negative")]
    demos += [
        next(d for d in train[10:] if d["output"] == label) for label in ("negative", "positive")
    ]
    lines = (DATA / "test.jsonl").read_text(encoding="utf-8").splitlines()[:calls]
    sentences = [json.loads(line)["input"] for line in lines]
    print(f"{calls} SST-2 test sentences, 4 demonstrations, {THREADS} threads; CPU s per call")
    print(
        "| model | label, before | label, now | generation, before | generation, now | "
        "label now / generation now | label now / label before |"
    )
    print("|---|---|---|---|---|---|---|")
    for model in EMBEDDED_MODELS:
        f = measure(model, demos, sentences)
        print(
            f"| {model.alias} | {f['cpu_label_old']:.3f} | {f['cpu_label_new']:.3f} | "
            f"{f['cpu_generation_old']:.3f} | {f['cpu_generation_new']:.3f} | "
            f"x{f['cpu_label_new'] / f['cpu_generation_new']:.2f} | "
            f"x{f['cpu_label_new'] / f['cpu_label_old']:.2f} |",
            flush=True,
        )
        print(
            f"  wall s/call: label {f['wall_label_old']:.3f} -> {f['wall_label_new']:.3f}, "
            f"generation {f['wall_generation_old']:.3f} -> {f['wall_generation_new']:.3f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
