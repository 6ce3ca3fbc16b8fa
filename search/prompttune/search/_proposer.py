"""Instruction candidates: the seed instruction plus rewrites proposed by an LLM.

Each proposal asks for one instruction with a different style tip, at temperature 0, so the
response cache makes reruns free. Proposals arrive as free text from possibly tiny models;
they are cleaned, length-checked and de-duplicated, and anything unusable is dropped. A
failed call or an exhausted budget just yields fewer candidates; nothing here raises.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Sequence

from prompttune.search._errors import BudgetExceeded, LLMCallFailed
from prompttune.search._gateway import LLMGateway
from prompttune.search._protocols import ChatRequest
from prompttune.search._render import field_title, format_inputs
from prompttune.search._types import ChatMessage, Example, TaskSpec

STYLE_TIPS: tuple[str, ...] = (
    "Be concise: one short, direct sentence.",
    "Ask the model to read the input carefully and think step by step before answering.",
    "Give the model a persona: an expert in this task.",
    "Focus on the output format: the answer must be only the final answer, nothing else.",
    "List the allowed answers explicitly and say to reply with exactly one of them.",
    "Mention the most common mistake to avoid for this task.",
)
MIN_INSTRUCTION_CHARS = 15
MAX_INSTRUCTION_CHARS = 400
PROPOSER_ROLE = "proposer"

_LEADING_LABEL = re.compile(
    r"^(?:here(?:'s| is)[^:]*:|(?:new |improved |rewritten |final )?"
    r"(?:instruction|prompt)s?\s*\d*\s*:)\s*",
    re.IGNORECASE,
)
_BULLET = re.compile(r"^(?:[-*•>#]+|\d+[.)])\s+")
_QUOTES = "\"'`“”‘’*_ "


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
    lines ("Here is ...:"), joins the first paragraph and enforces 15..400 characters.
    """
    paragraph: list[str] = []
    for raw in text.replace("```", "\n").splitlines():
        cleaned = _clean_line(raw)
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


class InstructionProposer:
    """Proposes instruction candidates through the proposer gateway (role "proposer")."""

    def __init__(self, gateway: LLMGateway, max_tokens: int = 80, num_examples: int = 4) -> None:
        self._gateway = gateway
        self._max_tokens = max_tokens
        self._num_examples = num_examples

    def meta_prompt(self, task: TaskSpec, examples: Sequence[Example], tip: str) -> str:
        lines = [f"Task: {task.description}", f"Current instruction: {task.seed_instruction}"]
        if task.labels:
            lines.append("Allowed answers: " + ", ".join(task.labels))
        for example in examples:
            text = format_inputs(example.inputs, task.input_fields, labelled=True)
            lines.append(f"Example:\n{text}\n{field_title(task.output_name)}: {example.output}")
        lines.append(f"Tip: {tip}")
        lines.append(
            "Write one improved instruction for this task. Reply with the instruction only."
        )
        return "\n\n".join(lines)

    def _request(
        self, task: TaskSpec, train: Sequence[Example], index: int, seed: int
    ) -> ChatRequest:
        rng = random.Random(f"{seed}:proposal:{index}")
        ordered = sorted(train, key=lambda ex: ex.id)
        examples = rng.sample(ordered, min(self._num_examples, len(ordered)))
        tip = STYLE_TIPS[index % len(STYLE_TIPS)]
        system = "You write clear instructions for a small language model."
        messages = (
            ChatMessage("system", system),
            ChatMessage("user", self.meta_prompt(task, examples, tip)),
        )
        return ChatRequest(messages, 0.0, self._max_tokens, sample=index // len(STYLE_TIPS))

    async def _propose_one(self, request: ChatRequest) -> str | None:
        try:
            response = await self._gateway.complete(request, PROPOSER_ROLE)
        except (LLMCallFailed, BudgetExceeded):
            return None
        return parse_proposal(response.text)

    async def propose(
        self, task: TaskSpec, train: Sequence[Example], count: int, seed: int = 0
    ) -> tuple[str, ...]:
        """The seed instruction first, then up to `count` distinct proposed instructions."""
        requests = [self._request(task, train, index, seed) for index in range(max(0, count))]
        proposals = await asyncio.gather(*(self._propose_one(r) for r in requests))
        candidates = [task.seed_instruction]
        seen = {normalize_instruction(task.seed_instruction)}
        for proposal in proposals:
            key = normalize_instruction(proposal) if proposal else ""
            if proposal and key and key not in seen:
                seen.add(key)
                candidates.append(proposal)
        return tuple(candidates)
