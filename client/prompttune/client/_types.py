"""Public SDK types: frozen dataclasses mirroring the prompttune.v1 API.

Conventions: durations are seconds (float), timestamps are timezone-aware UTC datetimes,
repeated fields are tuples. Numeric and text settings typed ``X | None`` default to ``None``,
which means "let the server choose its documented default".
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal


class Metric(enum.StrEnum):
    """How a model answer is compared with the expected output."""

    EXACT_MATCH = "exact_match"
    LABEL_CHOICE = "label_choice"
    CONTAINS = "contains"
    NUMERIC = "numeric"
    TOKEN_F1 = "token_f1"
    LLM_JUDGE = "llm_judge"
    EMBEDDING_SIMILARITY = "embedding_similarity"


class ModelKind(enum.StrEnum):
    LOCAL = "local"
    OPENAI_COMPATIBLE = "openai_compatible"


class InstructionPlacement(enum.StrEnum):
    SYSTEM = "system"
    USER = "user"


class DemoLayout(enum.StrEnum):
    CHAT_TURNS = "chat_turns"
    INLINE = "inline"


class JobState(enum.StrEnum):
    """Lifecycle of a job. UNSPECIFIED only appears if a newer server sends an unknown state."""

    UNSPECIFIED = "unspecified"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """True for SUCCEEDED, FAILED and CANCELLED: the job will not change any more."""
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True, init=False)
class Example:
    """One labelled example. ``inputs`` may be a plain string, short for ``{"input": text}``."""

    inputs: Mapping[str, str]
    output: str
    id: str

    def __init__(self, inputs: Mapping[str, str] | str, output: str = "", id: str = "") -> None:
        object.__setattr__(
            self, "inputs", {"input": inputs} if isinstance(inputs, str) else dict(inputs)
        )
        object.__setattr__(self, "output", output)
        object.__setattr__(self, "id", id)


@dataclass(frozen=True)
class TaskSpec:
    """What the model must do and how answers are scored.

    Empty ``input_fields`` means ``("input",)``; ``seed_instruction=None`` means the
    description; ``output_name=None`` means ``"answer"``. ``labels`` is required for
    ``Metric.LABEL_CHOICE``. ``rubric`` is required for ``Metric.LLM_JUDGE``, whose ``judge``
    model defaults to the task model.
    """

    description: str
    metric: Metric
    seed_instruction: str | None = None
    input_fields: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    output_name: str | None = None
    rubric: str = ""
    judge: ModelSpec | None = None


@dataclass(frozen=True)
class ModelSpec:
    """The model prompts are optimised for. Build with :meth:`local` or :meth:`openai_compatible`.

    ``api_key_env`` names a server-side environment variable; the key itself is never sent.
    ``max_tokens`` (per call, 1..4096, server default 32) and ``max_concurrency`` (1..256,
    server default 4, 1 for local) default to ``None``. ``requests_per_minute`` and
    ``tokens_per_minute`` limit the endpoint for all jobs of a server (``None``: server
    default); the ``usd_per_million_*`` prices (0: free) give each job's cost.
    """

    kind: ModelKind = ModelKind.LOCAL
    base_url: str = ""
    model: str = ""
    api_key_env: str = ""
    temperature: float = 0.0
    max_tokens: int | None = None
    max_concurrency: int | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    usd_per_million_prompt_tokens: float = 0.0
    usd_per_million_completion_tokens: float = 0.0

    @classmethod
    def local(cls, *, max_tokens: int | None = None) -> ModelSpec:
        """The embedded SmolLM2-135M-Instruct served by the server's managed llama.cpp."""
        return cls(kind=ModelKind.LOCAL, max_tokens=max_tokens)

    @classmethod
    def openai_compatible(
        cls,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "",
        temperature: float = 0.0,
        max_tokens: int | None = None,
    ) -> ModelSpec:
        """Any OpenAI-compatible chat completions endpoint, e.g. ``https://api.openai.com/v1``."""
        return cls(
            kind=ModelKind.OPENAI_COMPATIBLE,
            base_url=base_url,
            model=model,
            api_key_env=api_key_env,
            temperature=temperature,
            max_tokens=max_tokens,
        )


@dataclass(frozen=True)
class Budget:
    """Hard limits of one search; ``None`` takes the server default.

    Server defaults: 24 trials, 2000 LLM calls, 1800 wall seconds, unlimited tokens.
    """

    max_trials: int | None = None
    max_llm_calls: int | None = None
    max_wall_seconds: float | None = None
    max_tokens: int | None = None
    max_cost_usd: float | None = None


@dataclass(frozen=True)
class SearchSpec:
    """Search settings; ``None`` takes the server default (see optimizer.proto).

    ``max_demos=0`` searches zero-shot prompts only; ``num_instruction_candidates=0`` keeps the
    seed instruction.
    """

    budget: Budget = field(default_factory=Budget)
    num_instruction_candidates: int | None = None
    max_demos: int | None = None
    minibatch_size: int | None = None
    seed: int = 0
    num_demo_sets: int | None = None
    num_finalists: int | None = None
    proposer: ModelSpec | None = None
    disable_cache: bool = False
    allow_reasoning: bool | None = None
    multi_objective: bool = False
    num_reflection_candidates: int | None = None
    parallelism: int | None = None


@dataclass(frozen=True)
class SplitRatio:
    """Fractions of a single example pool used for train / validation / test, summing to 1."""

    train: float = 0.5
    validation: float = 0.25
    test: float = 0.25
    seed: int = 0


@dataclass(frozen=True)
class Dataset:
    """Labelled examples: explicit splits, or one pool cut by ``split``.

    Prefer the constructors :meth:`from_splits` and :meth:`from_examples`.
    Raises ValueError when both forms are mixed.
    """

    train: tuple[Example, ...] = ()
    validation: tuple[Example, ...] = ()
    test: tuple[Example, ...] = ()
    examples: tuple[Example, ...] = ()
    split: SplitRatio | None = None

    def __post_init__(self) -> None:
        if self.examples and (self.train or self.validation or self.test):
            raise ValueError("Dataset takes either explicit splits or examples, not both")

    @classmethod
    def from_splits(
        cls,
        train: Iterable[Example],
        validation: Iterable[Example],
        test: Iterable[Example] = (),
    ) -> Dataset:
        return cls(train=tuple(train), validation=tuple(validation), test=tuple(test))

    @classmethod
    def from_examples(cls, examples: Iterable[Example], split: SplitRatio | None = None) -> Dataset:
        return cls(examples=tuple(examples), split=split or SplitRatio())


@dataclass(frozen=True)
class PromptFormat:
    instruction_placement: InstructionPlacement = InstructionPlacement.SYSTEM
    demo_layout: DemoLayout = DemoLayout.CHAT_TURNS
    answer_prefix: str = ""
    reasoning: bool = False


@dataclass(frozen=True)
class Prompt:
    """A prompt ready to use; turn it into chat messages with ``Client.render_prompt``."""

    instruction: str
    demos: tuple[Example, ...] = ()
    format: PromptFormat = field(default_factory=PromptFormat)
    input_fields: tuple[str, ...] = ()
    output_name: str = ""
    labels: tuple[str, ...] = ()
    # Dynamic kNN demos: the server picks the knn_k pool examples nearest to each input.
    demo_pool: tuple[Example, ...] = ()
    knn_k: int = 0


@dataclass(frozen=True)
class Score:
    """Mean metric value in [0, 1] with its 95% bootstrap confidence interval.

    ``failed`` examples (LLM call failed after retries) are excluded from the mean.
    ``per_label`` maps label -> accuracy, for classification only.
    """

    mean: float
    ci_low: float
    ci_high: float
    examples: int
    failed: int = 0
    per_label: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class PromptScores:
    """A prompt with its validation score and, when the dataset has a test split, test score."""

    prompt: Prompt
    validation: Score
    test: Score | None
    prompt_tokens: int


@dataclass(frozen=True)
class Usage:
    """LLM calls sent to endpoints (cache misses) and their token counts."""

    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    failed_calls: int = 0
    cost_usd: float = 0.0


@dataclass(frozen=True)
class JobResult:
    """Outcome of a finished search. When ``improved`` is False, ``best`` is the baseline."""

    baseline: PromptScores
    best: PromptScores
    improved: bool
    summary: str
    usage: Usage
    trials_completed: int
    trials_pruned: int
    wall_seconds: float
    stop_reason: str
    pareto: tuple[PromptScores, ...] = ()
    usage_by_role: Mapping[str, Usage] = field(default_factory=dict)


@dataclass(frozen=True)
class Progress:
    """Live progress; ``best_score`` is a progress signal, not a final score."""

    phase: str = ""
    trials_completed: int = 0
    best_score: float = 0.0
    usage: Usage = field(default_factory=Usage)


@dataclass(frozen=True)
class Estimate:
    """Upper bound on LLM calls a job may send and a rough token count for them."""

    llm_calls: int
    tokens: int


@dataclass(frozen=True)
class Job:
    """One optimisation job. ``result`` is set once SUCCEEDED, ``error`` once FAILED."""

    id: str
    state: JobState
    create_time: datetime
    update_time: datetime
    task: TaskSpec
    model: ModelSpec
    search: SearchSpec
    progress: Progress
    result: JobResult | None = None
    error: str = ""
    estimate: Estimate | None = None
    request_id: str = ""

    @property
    def done(self) -> bool:
        """True once the job is SUCCEEDED, FAILED or CANCELLED."""
        return self.state.terminal


@dataclass(frozen=True)
class JobPage:
    """One page of ``Client.list_jobs``; ``next_page_token`` is empty on the last page."""

    jobs: tuple[Job, ...]
    next_page_token: str


@dataclass(frozen=True)
class StateChanged:
    state: JobState
    error: str = ""


@dataclass(frozen=True)
class PhaseChanged:
    """``phase`` is one of "splitting", "proposing", "searching", "validating", "testing"."""

    phase: str


@dataclass(frozen=True)
class TrialFinished:
    """``score`` is measured on the ``examples`` this trial saw (minibatch or validation)."""

    trial: int
    score: float
    examples: int
    pruned: bool
    config: str


@dataclass(frozen=True)
class NewBest:
    trial: int
    score: float


@dataclass(frozen=True)
class BudgetUsed:
    usage: Usage


EventKind = Literal[
    "state_changed", "phase_changed", "trial_finished", "new_best", "budget_used", "unknown"
]


@dataclass(frozen=True)
class JobEvent:
    """One event of a job. ``kind`` names the payload field that is set; the others are None.

    ``kind`` is "unknown" for event types newer than this SDK. ``sequence`` starts at 1 and
    strictly increases per job.
    """

    job_id: str
    sequence: int
    time: datetime
    kind: EventKind
    state_changed: StateChanged | None = None
    phase_changed: PhaseChanged | None = None
    trial_finished: TrialFinished | None = None
    new_best: NewBest | None = None
    budget_used: BudgetUsed | None = None


@dataclass(frozen=True)
class ChatMessage:
    """One chat message; ``role`` is "system", "user" or "assistant"."""

    role: str
    content: str


@dataclass(frozen=True)
class ExampleResult:
    """The model's answer to one example; ``error`` is set when the LLM call failed."""

    id: str
    answer: str
    score: float
    error: str = ""

    @property
    def failed(self) -> bool:
        return bool(self.error)


@dataclass(frozen=True)
class Evaluation:
    """Result of ``Client.evaluate_prompt``: the score and one result per example, in order."""

    score: Score
    results: tuple[ExampleResult, ...]
    usage: Usage
