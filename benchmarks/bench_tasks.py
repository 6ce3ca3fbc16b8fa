"""Benchmark tasks and their fixed, deterministic splits from ``../shared/datasets``.

Every method of the search benchmark sees exactly the same train / validation / test examples:
they are sampled once per (task, sizes, seed), label-stratified with largest-remainder quotas,
from the dataset's own train.jsonl, dev.jsonl and test.jsonl.

Six tasks are the ones the engine was tuned on; five are held out (benchmarks/HELD_OUT.md,
decided before search v2 changed the engine) and are reported in their own section. Every task
carries a hand-written prompt: what a careful person would write without any search (a clear
instruction naming the labels, the input in the user message, an answer cue, zero-shot).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prompttune.contract import (
    DemoLayout,
    Example,
    InstructionPlacement,
    Metric,
    Prompt,
    PromptFormat,
    TaskSpec,
)
from prompttune.search import DatasetSplits

REPO_ROOT = Path(__file__).resolve().parent.parent


def datasets_root() -> Path:
    """``$PROMPTTUNE_DATASETS`` or ``../shared/datasets`` beside the repository (as CI lays it)."""
    override = os.environ.get("PROMPTTUNE_DATASETS")
    return Path(override) if override else REPO_ROOT.parent / "shared" / "datasets"


def _labels_file(folder: str) -> tuple[str, ...]:
    path = datasets_root() / folder / "labels.txt"
    return tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line)


@dataclass(frozen=True)
class BenchTask:
    """One benchmark task: where its data lives and how every method is told to solve it.

    `dspy_input` / `dspy_output` name DSPy's signature fields; prompttune's side uses one plain
    input field and `output_name` (the answer cue "Sentiment:" and the demo labels).
    `handwritten`: the hand-written prompt's instruction. `labels_folder`: read the labels from
    that dataset folder's labels.txt instead of `labels`. `held_out`: see HELD_OUT.md.
    """

    name: str
    folder: str
    description: str
    seed_instruction: str
    labels: tuple[str, ...]
    output_name: str
    dspy_input: str
    dspy_output: str
    handwritten: str
    metric: Metric = Metric.LABEL_CHOICE
    held_out: bool = False
    labels_folder: str = ""

    @property
    def slug(self) -> str:
        return self.name.replace("/", "__")

    @property
    def label_set(self) -> tuple[str, ...]:
        return _labels_file(self.labels_folder) if self.labels_folder else self.labels

    def _prompt(self, instruction: str) -> Prompt:
        """`instruction` and the input in the user message, ending with the answer cue."""
        cue = self.output_name.replace("_", " ").capitalize() + ":"
        return Prompt(
            instruction=instruction,
            format=PromptFormat(InstructionPlacement.USER, DemoLayout.CHAT_TURNS, cue),
            input_fields=("input",),
            output_name=self.output_name,
            labels=self.label_set,
        )

    def zero_shot_prompt(self) -> Prompt:
        """The seed instruction zero-shot, as the engine's default baseline writes it."""
        return self._prompt(self.seed_instruction)

    def handwritten_prompt(self) -> Prompt:
        """The hand-written prompt; "{labels}" in its text lists the label set."""
        return self._prompt(self.handwritten.replace("{labels}", ", ".join(self.label_set)))

    def spec(self, baseline: Prompt | None = None) -> TaskSpec:
        return TaskSpec(
            description=self.description,
            seed_instruction=self.seed_instruction,
            input_fields=("input",),
            labels=self.label_set,
            metric=self.metric,
            output_name=self.output_name,
            baseline=baseline,
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
            "Read the movie review sentence below and decide whether the reviewer likes the "
            "film. Answer with exactly one word: positive or negative.",
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
            "Is the following text message spam (advertising, prizes, scams, paid services) or "
            "ham (an ordinary personal message)? Answer with exactly one word: spam or ham.",
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
            "What is the topic of the news article below? Answer with one of: World (politics, "
            "conflicts, international news), Sports, Business (companies, markets, economy) or "
            "Sci/Tech (science, technology, internet).",
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
            "Decide whether the sentence below is plausible: does the athlete named play the "
            "sport the action belongs to? Answer yes if it is plausible, no if it is not.",
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
            "Work out the value of the Boolean expression below (not binds tightest, then and, "
            "then or; brackets first). Answer with exactly one word: True or False.",
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
            "Each person below says whether the previous one lies. Follow the chain from the "
            "first person and decide whether the last person tells the truth. Answer Yes or No.",
        ),
        BenchTask(
            "banking77",
            "banking77",
            "Assign a customer's message to a bank to one of 77 intents.",
            "Classify the customer's banking request into its intent.",
            (),
            "intent",
            "query",
            "intent",
            "Which of the bank's customer-service intents does the message below express? "
            "Answer with one intent name exactly as written here: {labels}.",
            held_out=True,
            labels_folder="banking77",
        ),
        BenchTask(
            "gsm8k",
            "gsm8k",
            "Solve a grade-school math word problem; the answer is a whole number.",
            "Solve the math word problem and give the final answer as a number.",
            (),
            "answer",
            "question",
            "answer",
            "Solve the math word problem below. Answer with the final number only, in digits, "
            "without units.",
            metric=Metric.NUMERIC,
            held_out=True,
        ),
        BenchTask(
            "bbh/causal_judgement",
            "bbh/causal_judgement",
            "Answer a question about whether one event caused another, as a typical person would.",
            "Answer the question about causation as a typical person would. Answer Yes or No.",
            ("Yes", "No"),
            "answer",
            "question",
            "answer",
            "Read the story and the question about causation below. Answer as a typical person "
            "would judge it, with exactly one word: Yes or No.",
            held_out=True,
        ),
        BenchTask(
            "bbh/hyperbaton",
            "bbh/hyperbaton",
            "Choose which of two sentences has the correct English adjective order.",
            "Which sentence has the correct adjective order? Answer (A) or (B).",
            ("(A)", "(B)"),
            "answer",
            "question",
            "answer",
            "English adjectives go in the order opinion, size, age, shape, colour, origin, "
            "material, purpose. Choose the option whose adjectives follow that order. Answer "
            "(A) or (B).",
            held_out=True,
        ),
        BenchTask(
            "bbh/snarks",
            "bbh/snarks",
            "Choose which of two nearly identical statements is sarcastic.",
            "Which statement is sarcastic? Answer (A) or (B).",
            ("(A)", "(B)"),
            "answer",
            "question",
            "answer",
            "The two statements below differ in a few words; one of them is sarcastic (says the "
            "opposite of what it means). Choose the sarcastic one. Answer (A) or (B).",
            held_out=True,
        ),
    )
}


@dataclass(frozen=True)
class SplitSizes:
    train: int = 50
    validation: int = 60
    test: int = 100


def read_jsonl(path: Path) -> list[Example]:
    examples = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                row = json.loads(line)
                examples.append(Example({"input": row["input"]}, row["output"], id=row["id"]))
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
