"""Demonstration-set candidates drawn from the train split.

Static strategies, cycled: label-stratified random, embedding-diverse (farthest-point
selection over sentence embeddings, a max-min form of MMR) and plain random. Every set has
`max_demos` examples in a fixed order; a trial uses the first k. For classification the
order alternates labels. Two more strategies: bootstrapped (train examples the task model
already answers correctly under the seed instruction, as in MIPROv2; the runner pays those
calls through its gateway) and dynamic kNN (a demo pool from which each input retrieves its
nearest examples at render time). Deterministic for a seed.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from prompttune.contract import Example, TaskSpec, format_inputs
from prompttune.search._protocols import Embedder

_DIVERSE_POOL = 256
KNN_POOL = 200
BOOTSTRAP_FACTOR = 3


@dataclass(frozen=True)
class DemoSet:
    """An ordered candidate set of demonstrations; trials use a prefix of it."""

    name: str
    examples: tuple[Example, ...]
    # A kNN set is a demo pool: prompts retrieve their demos from it per input.
    knn: bool = False


def _stratified(
    task: TaskSpec, train: Sequence[Example], size: int, rng: random.Random
) -> list[Example]:
    by_label: dict[str, list[Example]] = {}
    for example in train:
        by_label.setdefault(example.output, []).append(example)
    queues = [rng.sample(group, len(group)) for _, group in sorted(by_label.items())]
    rng.shuffle(queues)
    chosen: list[Example] = []
    while len(chosen) < size and any(queues):
        for queue in queues:
            if queue and len(chosen) < size:
                chosen.append(queue.pop())
    return chosen


def _diverse(
    task: TaskSpec, train: Sequence[Example], size: int, rng: random.Random, embedder: Embedder
) -> list[Example]:
    pool = rng.sample(list(train), min(len(train), _DIVERSE_POOL))
    texts = [f"{format_inputs(ex.inputs, task.input_fields)}\n{ex.output}" for ex in pool]
    vectors = embedder.embed(texts)
    chosen = [rng.randrange(len(pool))]
    nearest = vectors @ vectors[chosen[0]]
    while len(chosen) < min(size, len(pool)):
        nearest[chosen] = np.inf
        candidate = int(np.argmin(nearest))
        chosen.append(candidate)
        nearest = np.maximum(nearest, vectors @ vectors[candidate])
    return [pool[i] for i in chosen]


def balance_labels(examples: Sequence[Example]) -> tuple[Example, ...]:
    """Reorders demos so labels alternate (round robin in order of first appearance), so any
    prefix a trial uses is as label-balanced as the set allows."""
    queues: dict[str, list[Example]] = {}
    for example in examples:
        queues.setdefault(example.output, []).append(example)
    ordered: list[Example] = []
    while any(queues.values()):
        for queue in queues.values():
            if queue:
                ordered.append(queue.pop(0))
    return tuple(ordered)


def knn_demo_set(train: Sequence[Example], seed: int = 0) -> DemoSet | None:
    """The demo pool of dynamic kNN prompts: up to 200 train examples (None if train has
    fewer than two)."""
    if len(train) < 2:
        return None
    ordered = sorted(train, key=lambda ex: ex.id)
    if len(ordered) > KNN_POOL:
        ordered = sorted(random.Random(f"{seed}:knn").sample(ordered, KNN_POOL), key=lambda e: e.id)
    return DemoSet("knn", tuple(ordered), knn=True)


def bootstrap_candidates(
    train: Sequence[Example], max_demos: int, seed: int = 0
) -> tuple[Example, ...]:
    """The train examples a bootstrap round tries: up to 3 x `max_demos`, seeded."""
    ordered = sorted(train, key=lambda ex: ex.id)
    count = min(len(ordered), BOOTSTRAP_FACTOR * max(0, max_demos))
    return tuple(random.Random(f"{seed}:bootstrap").sample(ordered, count))


def bootstrapped_demo_set(
    task: TaskSpec,
    tried: Sequence[Example],
    correct_ids: set[str],
    max_demos: int,
) -> DemoSet | None:
    """Up to `max_demos` of the `tried` examples the task model answered correctly (label
    balanced for classification); None when it answered none correctly."""
    correct = [ex for ex in tried if ex.id in correct_ids]
    if not correct:
        return None
    if task.labels:
        correct = list(balance_labels(correct))
    return DemoSet("bootstrapped", tuple(correct[:max_demos]))


DEMO_STRATEGIES = ("stratified", "diverse", "random")


def build_demo_sets(
    task: TaskSpec,
    train: Sequence[Example],
    embedder: Embedder,
    num_sets: int,
    max_demos: int,
    seed: int = 0,
) -> tuple[DemoSet, ...]:
    """Up to `num_sets` distinct demo sets of `max_demos` examples per strategy (stratified,
    diverse, random; fewer if train is small), strategies interleaved."""
    if not train or max_demos <= 0 or num_sets <= 0:
        return ()
    ordered = sorted(train, key=lambda ex: ex.id)
    size = min(max_demos, len(ordered))
    sets: list[DemoSet] = []
    seen: set[tuple[str, ...]] = set()
    for index in range(num_sets * len(DEMO_STRATEGIES)):
        rng = random.Random(f"{seed}:demos:{index}")
        strategy = DEMO_STRATEGIES[index % len(DEMO_STRATEGIES)]
        if strategy == "stratified" and task.labels:
            chosen = _stratified(task, ordered, size, rng)
        elif strategy == "diverse":
            chosen = _diverse(task, ordered, size, rng, embedder)
        else:
            strategy, chosen = "random", rng.sample(ordered, size)
        if task.labels and strategy != "stratified":
            chosen = list(balance_labels(chosen))
        ids = tuple(ex.id for ex in chosen)
        if ids not in seen:
            seen.add(ids)
            sets.append(DemoSet(f"{strategy}-{index}", tuple(chosen)))
    return tuple(sets)
