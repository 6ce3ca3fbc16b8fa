"""Instruction candidates: the seed instruction plus rewrites proposed by an LLM.

Grounded proposals in the spirit of MIPROv2: the proposer model first summarises the dataset
from sampled train examples (one call per run, also kept by the response cache), then each
proposal sees the task description, that summary, its own sample of train examples and a
different style tip. A reflection round in the spirit of OPRO and GEPA shows the proposer
the instructions tried so far with their scores and examples the current best gets wrong.

Every call runs at temperature 0, so the response cache makes reruns free. Proposals arrive
as free text from possibly tiny models; they are cleaned, length-checked and filtered before
they cost a trial: a proposal that does not read as an instruction for this task (too few or
too many words, no verb, mostly numbers or label words, too little embedding similarity to
the task) or nearly repeats a kept one is dropped, and the reason recorded
(`InstructionProposer.dropped`). The seed instruction is never dropped. A failed call or an
exhausted budget just yields fewer candidates; nothing here raises.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from prompttune.contract import (
    ChatMessage,
    DroppedInstruction,
    Example,
    TaskSpec,
    field_title,
    format_inputs,
)
from prompttune.search._errors import BudgetExceeded, LLMCallFailed
from prompttune.search._gateway import LLMGateway
from prompttune.search._protocols import ChatRequest, Embedder

STYLE_TIPS: tuple[str, ...] = (
    "Be concise: one short, direct sentence.",
    "Ask the model to read the input carefully and think step by step before answering.",
    "Give the model a persona: an expert in this task.",
    "Focus on the output format: the answer must be only the final answer, nothing else.",
    "List the allowed answers explicitly and say to reply with exactly one of them.",
    "Mention the most common mistake to avoid for this task.",
    "Start with a verb and describe exactly what to look for in the input.",
    "Use plain, simple words that a beginner would understand.",
)
MIN_INSTRUCTION_CHARS = 15
MAX_INSTRUCTION_CHARS = 400
MIN_SUMMARY_CHARS = 20
MAX_SUMMARY_CHARS = 400
DUPLICATE_COSINE = 0.95
COPIED_WORDS = 8  # a run of this many words from an example is a quote of it
# An instruction has at least this many words, and at most this many (a longer one is a
# paragraph of advice, not an instruction a person would ship).
MIN_INSTRUCTION_WORDS = 3
MAX_INSTRUCTION_WORDS = 80
# More than this share of numbers, percentages and label words is a list, not an
# instruction ("Positive: 100% Positive Negative: 89.7% Negative Neutral:").
MAX_NUMBERS_OR_LABELS_SHARE = 0.5
# Least embedding cosine similarity to the task description or the seed instruction.
# Measured with MiniLM on 32 real SmolLM2-135M proposals and reflections for SST-2 (2026-12):
# the on-task ones scored 0.54-0.95, the off-task ones ("Your entire dataset needs to be
# processed.", "Write a poem ...") 0.02-0.34; one quote of a review scored 0.48.
TASK_SIMILARITY = 0.40
# Imperative and task verbs an instruction uses (matched with -s/-es/-ed/-ing endings too).
TASK_VERBS = frozenset(
    "classify decide determine label answer read identify say tell choose pick give write "  # noqa: SIM905
    "reply respond output predict judge rate assess evaluate categorize categorise find "
    "compute calculate solve return select state indicate mark detect analyze analyse check "
    "consider look examine review assign sort tag extract summarize summarise translate "
    "explain describe infer recognize recognise distinguish count list name use provide "
    "think grade score match verify guess estimate".split()
)
# A question is an instruction too ("Is the review positive?").
QUESTION_WORDS = frozenset(
    "is are does do did was were can could will would should which what who how".split()  # noqa: SIM905
)
PROPOSER_ROLE = "proposer"
log = structlog.get_logger(__name__)
PROPOSER_SYSTEM = "You write clear instructions for a small language model."
SUMMARY_SYSTEM = "You describe datasets briefly and accurately."

_LEADING_LABEL = re.compile(
    r"^(?:here(?:'s| is)[^:]*:|(?:new |improved |rewritten |final )?"
    r"(?:instruction|prompt|summary|description)s?\s*\d*\s*:)\s*",
    re.IGNORECASE,
)
_BULLET = re.compile(r"^(?:[-*•>#]+|\d+[.)])\s+")
# The section headers of the proposer's own prompts. A reply that repeats one echoes the
# prompt back ("Task: ... Dataset summary: ...") instead of writing an instruction.
_ECHOED_HEADER = re.compile(
    r"^(?:task|dataset summary|current instruction|allowed answers|examples?"
    r"(?: from the dataset)?|tip|accuracy|model answer|expected [\w ]{1,40}"
    r"|instructions tried so far[^:]*)\s*:",
    re.IGNORECASE,
)
_QUOTES = "\"'`“”‘’*_ "


@dataclass(frozen=True)
class ScoredInstruction:
    """An instruction tried in the search with its best minibatch score (examples scored)."""

    text: str
    score: float
    examples: int


@dataclass(frozen=True)
class Mistake:
    """A validation example the current best prompt gets wrong, with the model's answer."""

    example: Example
    answer: str


@dataclass(frozen=True)
class ProposerSettings:
    max_tokens: int = 80
    summary_max_tokens: int = 120
    num_examples: int = 4
    summary_examples: int = 8
    duplicate_cosine: float = DUPLICATE_COSINE


def normalize_instruction(text: str) -> str:
    """Comparison key for duplicate detection: lower-case words only."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def _clean_line(line: str) -> str:
    line = _BULLET.sub("", line.strip())
    line = _LEADING_LABEL.sub("", line).strip()
    return line.strip(_QUOTES).strip()


def parse_proposal(text: str) -> str | None:
    """The instruction in a free-text proposal, or None when there is no usable one.

    Strips code fences, bullets, quotes and prefixes such as "Instruction:", skips preamble
    lines ("Here is ...:"), joins the first paragraph and enforces 15..400 characters. A reply
    that repeats a section header of the proposer's prompt ("Task:", "Dataset summary:", ...)
    before its first paragraph ends is an echo of the prompt, not an instruction: None.
    """
    paragraph: list[str] = []
    for raw in text.replace("```", "\n").splitlines():
        cleaned = _clean_line(raw)
        if _ECHOED_HEADER.match(cleaned):
            return None
        if not cleaned:
            if paragraph:
                break
            continue
        if not paragraph and (cleaned.endswith(":") or len(cleaned) < MIN_INSTRUCTION_CHARS):
            continue
        paragraph.append(cleaned)
    candidate = " ".join(paragraph).strip()
    if len(candidate) > MAX_INSTRUCTION_CHARS and paragraph:
        candidate = paragraph[0]
    if not MIN_INSTRUCTION_CHARS <= len(candidate) <= MAX_INSTRUCTION_CHARS:
        return None
    return candidate


def answers_instead_of_instructing(candidate: str, labels: Sequence[str]) -> bool:
    """True when a classification proposal reads like an answer ("The sentiment is
    positive."): it names exactly one of several labels. Small proposer models often solve an
    example instead of writing an instruction."""
    if len(labels) < 2:
        return False
    named = [
        label
        for label in labels
        if re.search(rf"(?<!\w){re.escape(label.strip())}(?!\w)", candidate, re.IGNORECASE)
    ]
    return len(named) == 1


def _words(text: str) -> list[str]:
    return [word.strip(".,;:!?\"'()[]{}*`") for word in text.split()]


def _is_number(word: str) -> bool:
    return bool(re.fullmatch(r"[-+]?[\d.,/]*\d[\d.,/]*%?", word))


def _is_verb(word: str) -> bool:
    word = word.lower()
    stems = {word, word.removesuffix("s"), word.removesuffix("es"), word.removesuffix("ed")}
    stems |= {word.removesuffix("d"), word.removesuffix("ing"), word.removesuffix("ing") + "e"}
    return bool(stems & TASK_VERBS)


def instruction_problem(text: str, task: TaskSpec) -> str | None:
    """Why `text` does not read as an instruction for `task` (None when it does): too few
    or too many words, mostly numbers or label words, or no verb. Checks words only; the
    similarity to the task needs an embedder (`InstructionProposer`)."""
    words = [word for word in _words(text) if word]
    if len(words) < MIN_INSTRUCTION_WORDS:
        return f"too short ({len(words)} word{'' if len(words) == 1 else 's'})"
    if len(words) > MAX_INSTRUCTION_WORDS:
        return f"too long ({len(words)} words)"
    labels = {normalize_instruction(label) for label in task.labels}
    listed = sum(1 for w in words if _is_number(w) or normalize_instruction(w) in labels)
    if listed / len(words) > MAX_NUMBERS_OR_LABELS_SHARE:
        return "mostly numbers or labels"
    if words[0].lower() not in QUESTION_WORDS and not any(_is_verb(w) for w in words):
        return "no verb"
    return None


def _word_runs(text: str, words: int) -> set[str]:
    tokens = normalize_instruction(text).split()
    return {" ".join(tokens[i : i + words]) for i in range(len(tokens) - words + 1)}


def copies_example(text: str, examples: Sequence[Example], words: int = COPIED_WORDS) -> bool:
    """True when `text` repeats `words` consecutive words of an example's inputs or output.

    Small proposer models often copy an example into their reply; an instruction or a summary
    that quotes an example verbatim describes that example, not the task."""
    runs = _word_runs(text, words)
    return bool(runs) and any(
        runs & _word_runs(" ".join([*ex.inputs.values(), ex.output]), words) for ex in examples
    )


def parse_summary(text: str) -> str:
    """A dataset summary from free text: cleaned lines, cut at a sentence end within 400
    characters; "" when nothing usable (shorter than 20 characters) is left."""
    lines = [_clean_line(raw) for raw in text.replace("```", "\n").splitlines()]
    body = " ".join(line for line in lines if line and not line.endswith(":"))
    body = " ".join(body.split())
    if len(body) > MAX_SUMMARY_CHARS:
        cut = body[:MAX_SUMMARY_CHARS]
        end = max(cut.rfind(". "), cut.rfind("! "), cut.rfind("? "))
        body = cut[: end + 1] if end >= MIN_SUMMARY_CHARS else cut.rsplit(" ", 1)[0]
    return body if len(body) >= MIN_SUMMARY_CHARS else ""


def _example_block(task: TaskSpec, example: Example) -> str:
    text = format_inputs(example.inputs, task.input_fields, labelled=True)
    return f"{text}\n{field_title(task.output_name)}: {example.output}"


def _instruction_history(tried: Sequence[ScoredInstruction]) -> str:
    ordered = sorted(tried, key=lambda t: (t.score, t.text))  # OPRO: best last
    return "\n".join(
        f'Instruction: "{t.text}"\nAccuracy: {100 * t.score:.0f}% ({t.examples} examples)'
        for t in ordered
    )


def _mistake_block(task: TaskSpec, mistake: Mistake) -> str:
    text = format_inputs(mistake.example.inputs, task.input_fields, labelled=True)
    answer = " ".join(mistake.answer.split())[:200] or "(empty)"
    expected = f"Expected {task.output_name.replace('_', ' ')}: {mistake.example.output}"
    return f"{text}\n{expected}\nModel answer: {answer}"


class InstructionProposer:
    """Proposes instruction candidates through the proposer gateway (role "proposer").

    Keeps the dataset summary of each seed for its lifetime (one call per run). Use from one
    event loop.
    """

    def __init__(
        self,
        gateway: LLMGateway,
        settings: ProposerSettings | None = None,
        embedder: Embedder | None = None,
    ) -> None:
        self._gateway = gateway
        self._settings = settings or ProposerSettings()
        self._embedder = embedder
        self._summaries: dict[int, str] = {}
        # Proposals discarded before any trial, in the order they arrived.
        self.dropped: list[DroppedInstruction] = []

    async def _ask(self, system: str, user: str, max_tokens: int, sample: int = 0) -> str:
        messages = (ChatMessage("system", system), ChatMessage("user", user))
        try:
            response = await self._gateway.complete(
                ChatRequest(messages, 0.0, max_tokens, sample), PROPOSER_ROLE
            )
        except (LLMCallFailed, BudgetExceeded):
            return ""
        return response.text

    def _sample(self, train: Sequence[Example], count: int, key: str) -> list[Example]:
        ordered = sorted(train, key=lambda ex: ex.id)
        return random.Random(key).sample(ordered, min(count, len(ordered)))

    async def summarize(self, task: TaskSpec, train: Sequence[Example], seed: int = 0) -> str:
        """A two-or-three-sentence dataset summary ("" when the proposer gave nothing usable)."""
        if seed in self._summaries:
            return self._summaries[seed]
        examples = self._sample(train, self._settings.summary_examples, f"{seed}:summary")
        summary = ""
        if examples:
            blocks = "\n\n".join(_example_block(task, ex) for ex in examples)
            user = (
                f"Task: {task.description}\n\nExamples from the dataset:\n\n{blocks}\n\n"
                "Describe this dataset in two or three sentences: what the inputs are, what "
                "the expected outputs look like, and any pattern that matters for getting the "
                "answer right. Reply with the description only."
            )
            text = await self._ask(SUMMARY_SYSTEM, user, self._settings.summary_max_tokens)
            summary = parse_summary(text)
            if copies_example(summary, examples):
                log.info("proposer.summary_skipped", reason="copies an example", text=summary)
                summary = ""
        self._summaries[seed] = summary
        return summary

    def meta_prompt(
        self, task: TaskSpec, examples: Sequence[Example], tip: str, summary: str = ""
    ) -> str:
        lines = [f"Task: {task.description}"]
        if summary:
            lines.append(f"Dataset summary: {summary}")
        lines.append(f"Current instruction: {task.instruction}")
        if task.labels:
            lines.append("Allowed answers: " + ", ".join(task.labels))
        lines.extend(f"Example:\n{_example_block(task, example)}" for example in examples)
        lines.append(f"Tip: {tip}")
        lines.append(
            "Write one improved instruction for this task. Reply with the instruction only."
        )
        return "\n\n".join(lines)

    def _drop(self, text: str, reason: str) -> None:
        self.dropped.append(DroppedInstruction(text[:MAX_INSTRUCTION_CHARS], reason))
        log.info("proposer.dropped", reason=reason, text=text[:160])

    def _screen(self, task: TaskSpec, text: str, examples: Sequence[Example]) -> str | None:
        """The instruction in one proposal reply, or None (the reason recorded) when it is
        unusable, an answer, a copy of an example or not an instruction for `task`."""
        proposal = parse_proposal(text)
        if proposal is None:
            reply = " ".join(text.split())
            if reply:
                self._drop(reply, instruction_problem(reply, task) or "no instruction in the reply")
            return None
        if answers_instead_of_instructing(proposal, task.labels):
            reason: str | None = "answers an example instead of instructing"
        elif copies_example(proposal, examples):
            reason = "copies an example"
        else:
            reason = instruction_problem(proposal, task)
        if reason is not None:
            self._drop(proposal, reason)
            return None
        return proposal

    def _merge(
        self,
        task: TaskSpec,
        existing: Sequence[str],
        texts: Sequence[str],
        shown: Sequence[Sequence[Example]],
    ) -> tuple[str, ...]:
        """`existing` plus the usable, distinct proposals parsed from `texts`; `shown[i]` are
        the examples the prompt of `texts[i]` showed (a proposal copying one is unusable)."""
        candidates = list(existing)
        seen = {normalize_instruction(text) for text in existing}
        for text, examples in zip(texts, shown, strict=True):
            proposal = self._screen(task, text, examples)
            if proposal is None:
                continue
            key = normalize_instruction(proposal)
            if key in seen:
                self._drop(proposal, "duplicate of a kept instruction")
                continue
            seen.add(key)
            candidates.append(proposal)
        if self._embedder is None:
            return tuple(candidates)
        return self._close_to_task(task, candidates, len(existing), self._embedder)

    def _close_to_task(
        self, task: TaskSpec, candidates: Sequence[str], keep_first: int, embedder: Embedder
    ) -> tuple[str, ...]:
        """Drops the candidates after the first `keep_first` that are less similar than
        `TASK_SIMILARITY` to both the task description and the seed instruction, or at
        least `duplicate_cosine` similar to a kept candidate. One embedding call."""
        if len(candidates) <= keep_first:
            return tuple(candidates)
        anchors = [task.description, task.instruction]
        vectors = embedder.embed([*anchors, *candidates])
        rows = vectors[len(anchors) :]
        kept = list(range(keep_first))
        for index in range(keep_first, len(candidates)):
            related = max(float(rows[index] @ anchor) for anchor in vectors[: len(anchors)])
            closest = max((float(rows[index] @ rows[other]) for other in kept), default=0.0)
            if related < TASK_SIMILARITY:
                reason = f"unrelated to the task (similarity {related:.2f} < {TASK_SIMILARITY:.2f})"
                self._drop(candidates[index], reason)
            elif closest >= self._settings.duplicate_cosine:
                self._drop(candidates[index], f"near duplicate of a kept one ({closest:.2f})")
            else:
                kept.append(index)
        return tuple(candidates[i] for i in kept)

    async def propose(
        self, task: TaskSpec, train: Sequence[Example], count: int, seed: int = 0
    ) -> tuple[str, ...]:
        """The seed instruction first, then up to `count` distinct proposed instructions."""
        if count <= 0:
            return (task.instruction,)
        summary = await self.summarize(task, train, seed)
        shown = [
            self._sample(train, self._settings.num_examples, f"{seed}:proposal:{index}")
            for index in range(count)
        ]
        prompts = [
            self.meta_prompt(task, examples, STYLE_TIPS[index % len(STYLE_TIPS)], summary)
            for index, examples in enumerate(shown)
        ]
        texts = await asyncio.gather(
            *(
                self._ask(PROPOSER_SYSTEM, user, self._settings.max_tokens, i // len(STYLE_TIPS))
                for i, user in enumerate(prompts)
            )
        )
        return self._merge(task, [task.instruction], texts, shown)

    def reflection_prompt(
        self,
        task: TaskSpec,
        tried: Sequence[ScoredInstruction],
        mistakes: Sequence[Mistake],
        tip: str,
        summary: str = "",
    ) -> str:
        lines = [f"Task: {task.description}"]
        if summary:
            lines.append(f"Dataset summary: {summary}")
        if task.labels:
            lines.append("Allowed answers: " + ", ".join(task.labels))
        lines.append("Instructions tried so far, worst to best, with their accuracy:")
        lines.append(_instruction_history(tried))
        if mistakes:
            lines.append("Examples the best instruction gets wrong:")
            lines.extend(_mistake_block(task, mistake) for mistake in mistakes)
        lines.append(f"Tip: {tip}")
        lines.append(
            "Write one new instruction that avoids these mistakes and scores higher than every "
            "instruction above. Reply with the instruction only."
        )
        return "\n\n".join(lines)

    async def reflect(
        self,
        task: TaskSpec,
        train: Sequence[Example],
        tried: Sequence[ScoredInstruction],
        mistakes: Sequence[Mistake],
        existing: Sequence[str],
        count: int,
        seed: int = 0,
    ) -> tuple[str, ...]:
        """Up to `count` new instructions (none equal or too close to `existing`)."""
        if count <= 0 or not tried:
            return ()
        summary = await self.summarize(task, train, seed)
        prompts, shown = [], []
        for index in range(count):
            rng = random.Random(f"{seed}:reflection:{index}")
            picked = rng.sample(list(mistakes), min(3, len(mistakes)))
            tip = STYLE_TIPS[(index + 3) % len(STYLE_TIPS)]
            prompts.append(self.reflection_prompt(task, tried, picked, tip, summary))
            shown.append([mistake.example for mistake in picked])
        texts = await asyncio.gather(
            *(self._ask(PROPOSER_SYSTEM, user, self._settings.max_tokens) for user in prompts)
        )
        merged = self._merge(task, existing, texts, shown)
        return merged[len(existing) :]
