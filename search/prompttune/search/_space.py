"""The search space: candidate tables, Optuna distributions and trial -> prompt mapping.

Optuna sees only small parameters: candidate indices and format choices. The instruction
table grows during a run (a reflection round appends candidates), so the "instruction"
parameter uses a fresh `IntDistribution(0, n - 1)` per phase. Optuna accepts a changed range
for an int parameter (only the distribution kind and `log` must match), and TPE samples each
parameter independently against the current range, so the earlier trials' indices keep
their meaning and their history. Categorical choices never change within a study.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution

from prompttune.contract import (
    DemoLayout,
    Example,
    InstructionPlacement,
    Prompt,
    PromptFormat,
    TaskSpec,
    answer_max_tokens,
)
from prompttune.search._demos import DemoSet
from prompttune.search._evaluate import CallSettings

# Instruction characters stored with each trial for dashboards.
SHOWN_INSTRUCTION_CHARS = 500
# Answer cap of reasoning prompts: the model writes its steps before "Answer: ...".
REASONING_MAX_TOKENS = 256

# (instruction index, demo key, layout, placement, answer prefix, reasoning, calibrate)
PromptKey = tuple[int, tuple[str, ...], str, str, str, bool, bool]


@dataclass(frozen=True)
class TrialConfig:
    """One point of the search space: candidate indices and format choices."""

    instruction: int = 0
    demo_set: int = 0
    n_demos: int = 0
    placement: InstructionPlacement = InstructionPlacement.SYSTEM
    layout: DemoLayout = DemoLayout.CHAT_TURNS
    answer_prefix: str = ""
    reasoning: bool = False
    # Contextual calibration of label probabilities (applied by the trial, see _labelprobs).
    calibrate: bool = False

    def params(self) -> dict[str, Any]:
        return {
            "instruction": self.instruction,
            "demo_set": self.demo_set,
            "n_demos": self.n_demos,
            "placement": self.placement.value,
            "layout": self.layout.value,
            "answer_prefix": self.answer_prefix,
            "reasoning": self.reasoning,
            "calibrate": self.calibrate,
        }

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> TrialConfig:
        return cls(
            instruction=int(params["instruction"]),
            demo_set=int(params["demo_set"]),
            n_demos=int(params["n_demos"]),
            placement=InstructionPlacement(params["placement"]),
            layout=DemoLayout(params["layout"]),
            answer_prefix=str(params["answer_prefix"]),
            reasoning=bool(params.get("reasoning", False)),
            calibrate=bool(params.get("calibrate", False)),
        )

    def describe(self) -> str:
        return " ".join(f"{name}={value!r}" for name, value in self.params().items())


# The zero-shot prompt a person writes: the seed instruction and the input in the user
# message, then the answer cue. Its answer prefix is the space's (`SearchSpace.baseline`).
BASELINE = TrialConfig(placement=InstructionPlacement.USER)
# The instruction index of a task's own baseline prompt (`TaskSpec.baseline`): no trial has it.
TASK_BASELINE_INDEX = -1


@dataclass
class SearchSpace:
    """Candidate tables of one run. `instructions[0]` is the seed instruction."""

    instructions: tuple[str, ...]
    demo_sets: tuple[DemoSet, ...]
    max_demos: int
    answer_prefix: str
    reasoning: bool = False
    reasoning_max_tokens: int = REASONING_MAX_TOKENS
    # Values of "calibrate" the search tries; (False,): not a search dimension.
    calibrate_choices: tuple[bool, ...] = (False,)

    def baseline(self) -> TrialConfig:
        """The generated baseline's configuration: `BASELINE` with this space's answer cue."""
        return replace(BASELINE, answer_prefix=self.answer_prefix)

    def baseline_for(self, task: TaskSpec) -> tuple[PromptKey, Prompt]:
        """The job's baseline: the task's own prompt when it has one (its key, derived from
        its content, never equals a trial's), else the generated baseline."""
        if task.baseline is None:
            return self.prompt_for(task, self.baseline())
        prompt = task.baseline
        digest = hashlib.sha256(repr(prompt).encode()).hexdigest()[:16]
        key = (
            TASK_BASELINE_INDEX,
            (f"task-baseline:{digest}",),
            prompt.format.demo_layout.value,
            prompt.format.instruction_placement.value,
            prompt.format.answer_prefix,
            prompt.format.reasoning,
            prompt.calibration is not None,
        )
        return key, prompt

    def distributions(self) -> dict[str, BaseDistribution]:
        found: dict[str, BaseDistribution] = {
            "instruction": IntDistribution(0, len(self.instructions) - 1),
            # unrelated sets: categorical, so the sampler models each set on its own
            "demo_set": CategoricalDistribution(list(range(max(1, len(self.demo_sets))))),
            "n_demos": IntDistribution(0, self.max_demos),
            "placement": CategoricalDistribution([p.value for p in InstructionPlacement]),
            "layout": CategoricalDistribution([d.value for d in DemoLayout]),
            "answer_prefix": CategoricalDistribution(["", self.answer_prefix]),
        }
        if self.reasoning:
            found["reasoning"] = CategoricalDistribution([False, True])
        if self.calibrate_choices != (False,):
            found["calibrate"] = CategoricalDistribution(list(self.calibrate_choices))
        return found

    def params(self, config: TrialConfig) -> dict[str, Any]:
        """`config` as Optuna parameters of this space (no "reasoning" when it is off; a
        forced "calibrate" takes its one value)."""
        names = self.distributions()
        found = {name: value for name, value in config.params().items() if name in names}
        if "calibrate" in found and found["calibrate"] not in self.calibrate_choices:
            found["calibrate"] = self.calibrate_choices[0]
        return found

    def calibrated(self, config: TrialConfig) -> bool:
        """Whether the trial's prompt is calibrated: asked for, and a value this space tries."""
        return config.calibrate and True in self.calibrate_choices

    def size(self) -> int:
        """Number of distinct prompts (keys) in the space; the search stops when all ran."""
        demo_keys: set[tuple[str, ...]] = set()
        for demo_set in self.demo_sets:
            for k in range(1, min(self.max_demos, len(demo_set.examples)) + 1):
                demo_keys.add(_demo_key(demo_set, k))
        # two answer prefixes, plus one reasoning variant (which ignores the prefix)
        formats = len(InstructionPlacement) * (3 if self.reasoning else 2)
        formats *= len(self.calibrate_choices)
        return len(self.instructions) * formats * (1 + len(DemoLayout) * len(demo_keys))

    def prompt_for(self, task: TaskSpec, config: TrialConfig) -> tuple[PromptKey, Prompt]:
        """The prompt of a trial and its identity key (equal keys render equal prompts). A
        calibrated trial's prompt still lacks its `Calibration`: estimating it takes calls
        (`_labelprobs.calibrate`)."""
        demo_set = self.demo_sets[config.demo_set] if self.demo_sets and config.n_demos else None
        demos: tuple[Example, ...] = ()
        pool: tuple[Example, ...] = ()
        k = 0
        if demo_set is not None and demo_set.knn:
            pool, k = demo_set.examples, min(config.n_demos, len(demo_set.examples))
        elif demo_set is not None:
            demos = demo_set.examples[: config.n_demos]
        layout = config.layout if demos or k else DemoLayout.CHAT_TURNS
        reasoning = config.reasoning and self.reasoning
        prefix = "" if reasoning else config.answer_prefix
        prompt = Prompt(
            instruction=self.instructions[config.instruction],
            demos=demos,
            format=PromptFormat(config.placement, layout, prefix, reasoning),
            input_fields=task.input_fields,
            output_name=task.output_name,
            labels=task.labels,
            demo_pool=pool,
            knn_k=k,
        )
        demo_key = _demo_key(demo_set, k) if demo_set is not None and k else _ids(demos)
        key = (
            config.instruction,
            demo_key,
            layout.value,
            config.placement.value,
            prefix,
            reasoning,
            self.calibrated(config),
        )
        return key, prompt

    def describe(self, config: TrialConfig) -> dict[str, str]:
        """What a dashboard shows of a trial: its instruction (cut to `SHOWN_INSTRUCTION_CHARS`),
        demonstrations and format."""
        instruction = self.instructions[config.instruction]
        demo_set = self.demo_sets[config.demo_set] if self.demo_sets and config.n_demos else None
        if demo_set is None:
            demos = "none"
        elif demo_set.knn:
            demos = f"{demo_set.name}: {config.n_demos} nearest of {len(demo_set.examples)}"
        else:
            ids = ", ".join(_ids(demo_set.examples[: config.n_demos]))
            demos = f"{demo_set.name}: {ids}"
        reasoning = config.reasoning and self.reasoning
        prefix = "" if reasoning else config.answer_prefix
        layout = config.layout.value if demo_set is not None else DemoLayout.CHAT_TURNS.value
        shape = f"placement={config.placement.value} layout={layout} answer_prefix={prefix!r}"
        calibrate = self.calibrated(config)
        return {
            "instruction": instruction[:SHOWN_INSTRUCTION_CHARS],
            "demos": demos,
            "format": f"{shape} reasoning={reasoning} calibrate={calibrate}",
        }

    def call_settings(self, prompt: Prompt, base: CallSettings) -> CallSettings:
        """Reasoning prompts get a larger answer cap: max(task cap, reasoning cap)."""
        if not prompt.format.reasoning:
            return base
        cap = answer_max_tokens(prompt, base.max_tokens, self.reasoning_max_tokens)
        return replace(base, max_tokens=cap)


def _ids(demos: tuple[Example, ...]) -> tuple[str, ...]:
    return tuple(demo.id for demo in demos)


def _demo_key(demo_set: DemoSet, k: int) -> tuple[str, ...]:
    if demo_set.knn:
        return (f"knn:{demo_set.name}:{k}",)
    return _ids(demo_set.examples[:k])
