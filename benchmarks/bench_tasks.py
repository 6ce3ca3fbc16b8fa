"""Benchmark tasks and their fixed, deterministic splits from ``../shared/datasets``.

Every method of the search benchmark sees exactly the same train / validation / test examples:
they are sampled once per (task, sizes, seed), label-stratified with largest-remainder quotas,
from the dataset's own train.jsonl, dev.jsonl and test.jsonl.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prompttune.search import DatasetSplits, Example, MetricName, TaskSpec

REPO_ROOT = Path(__file__).resolve().parent.parent


def datasets_root() -> Path:
    """``$PROMPTTUNE_DATASETS`` or ``../shared/datasets`` beside the repository (as CI lays it)."""
    override = os.environ.get("PROMPTTUNE_DATASETS")
    return Path(override) if override else REPO_ROOT.parent / "shared" / "datasets"


@dataclass(frozen=True)
class BenchTask:
    """One benchmark task: where its data lives and how every method is told to solve it.

    `dspy_input` / `dspy_output` name DSPy's signature fields; prompttune's side uses one plain
    input field and `output_name` (the answer prefix "Sentiment:" and the demo labels).
    """

    name: str
    folder: str
    description: str
    seed_instruction: str
    labels: tuple[str, ...]
    output_name: str
    dspy_input: str
    dspy_output: str

    @property
    def slug(self) -> str:
        return self.name.replace("/", "__")

    def spec(self) -> TaskSpec:
        return TaskSpec(
            description=self.description,
            seed_instruction=self.seed_instruction,
            input_fields=("input",),
            labels=self.labels,
            metric=MetricName.LABEL_CHOICE,
            output_name=self.output_name,
        )


TASKS: dict[str, BenchTask] = {
    task.name: task
    for task in (
        BenchTask(
            "sst2",
            "sst2",
            "Decide whether a movie-review sentence expresses a positive or negative sentiment.",
            "Classify the sentiment of the movie review as positive or negative.",
            ("positive", "negative"),
            "sentiment",
            "sentence",
            "sentiment",
        ),
        BenchTask(
            "sms_spam",
            "sms_spam",
            "Decide whether an SMS text message is spam or a normal message (ham).",
            "Classify the SMS message as ham (a normal message) or spam.",
            ("ham", "spam"),
            "label",
            "message",
            "label",
        ),
        BenchTask(
            "agnews",
            "agnews",
            "Assign a news article (title and description) to one of four topics.",
            "Classify the news article into one topic: World, Sports, Business or Sci/Tech.",
            ("World", "Sports", "Business", "Sci/Tech"),
            "topic",
            "article",
            "topic",
        ),
        BenchTask(
            "bbh/sports_understanding",
            "bbh/sports_understanding",
            "Decide whether a sentence about sports and athletes is plausible.",
            "Is the following sentence plausible? Answer yes or no.",
            ("yes", "no"),
            "answer",
            "question",
            "answer",
        ),
        BenchTask(
            "bbh/boolean_expressions",
            "bbh/boolean_expressions",
            "Evaluate a Boolean expression built from True, False, and, or, not and brackets.",
            "Evaluate the Boolean expression. Answer True or False.",
            ("True", "False"),
            "answer",
            "expression",
            "answer",
        ),
        BenchTask(
            "bbh/web_of_lies",
            "bbh/web_of_lies",
            "Follow a chain of people who lie or tell the truth and decide whether the last "
            "one tells the truth.",
            "Decide whether the last person in the question tells the truth. Answer Yes or No.",
            ("Yes", "No"),
            "answer",
            "question",
            "answer",
        ),
    )
}


@dataclass(frozen=True)
class SplitSizes:
    train: int = 50
    validation: int = 50
    test: int = 100


def read_jsonl(path: Path) -> list[Example]:
    examples = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                row = json.loads(line)
                examples.append(Example(row["id"], {"input": row["input"]}, row["output"]))
    return examples


def stratified_sample(examples: Sequence[Example], size: int, seed: str) -> tuple[Example, ...]:
    """`size` examples with label shares as in `examples` (largest remainder), seeded order."""
    if size >= len(examples):
        chosen = list(examples)
    else:
        by_label: dict[str, list[Example]] = {}
        for example in examples:
            by_label.setdefault(example.output, []).append(example)
        exact = {label: size * len(group) / len(examples) for label, group in by_label.items()}
        quotas = {label: int(share) for label, share in exact.items()}
        by_remainder = sorted(exact, key=lambda label: (quotas[label] - exact[label], label))
        for label in by_remainder[: size - sum(quotas.values())]:
            quotas[label] += 1
        rng = random.Random(f"{seed}:pick")
        chosen = []
        for label in sorted(by_label):
            group = sorted(by_label[label], key=lambda ex: ex.id)
            chosen.extend(rng.sample(group, quotas[label]))
    ordered = sorted(chosen, key=lambda ex: ex.id)
    random.Random(f"{seed}:order").shuffle(ordered)
    return tuple(ordered)


def load_splits(task: BenchTask, sizes: SplitSizes, seed: int = 0) -> DatasetSplits:
    """The task's fixed splits. Raises FileNotFoundError when the shared datasets are missing."""
    folder = datasets_root() / task.folder
    parts = {}
    for split, file, size in (
        ("train", "train.jsonl", sizes.train),
        ("validation", "dev.jsonl", sizes.validation),
        ("test", "test.jsonl", sizes.test),
    ):
        parts[split] = stratified_sample(
            read_jsonl(folder / file), size, f"{seed}:{task.name}:{split}"
        )
    return DatasetSplits(**parts)
