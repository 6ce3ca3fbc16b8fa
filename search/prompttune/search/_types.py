"""Domain types of the optimisation engine: tasks, examples, prompts, scores and results.

All types are frozen dataclasses; the gRPC layer converts protobuf messages to and from them.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field


class MetricName(enum.Enum):
    EXACT_MATCH = "exact_match"
    LABEL_CHOICE = "label_choice"
    CONTAINS = "contains"
    NUMERIC = "numeric"
    TOKEN_F1 = "token_f1"
    LLM_JUDGE = "llm_judge"
    EMBEDDING_SIMILARITY = "embedding_similarity"


class InstructionPlacement(enum.Enum):
    SYSTEM = "system"
    USER = "user"


class DemoLayout(enum.Enum):
    CHAT_TURNS = "chat_turns"
    INLINE = "inline"


@dataclass(frozen=True)
class Example:
    """One labelled example: named input fields and the expected output."""

    id: str
    inputs: Mapping[str, str]
    output: str


@dataclass(frozen=True)
class TaskSpec:
    """What the model must do and how its answers are scored."""

    description: str
    seed_instruction: str
    input_fields: tuple[str, ...] = ("input",)
    labels: tuple[str, ...] = ()
    metric: MetricName = MetricName.EXACT_MATCH
    output_name: str = "answer"
    # LLM_JUDGE only: what a good answer looks like, shown to the judge model.
    rubric: str = ""


@dataclass(frozen=True)
class DatasetSplits:
    """Train (demo pool and proposer examples), validation (selection) and test (report only)."""

    train: tuple[Example, ...]
    validation: tuple[Example, ...]
    test: tuple[Example, ...] = ()


@dataclass(frozen=True)
class PromptFormat:
    instruction_placement: InstructionPlacement = InstructionPlacement.SYSTEM
    demo_layout: DemoLayout = DemoLayout.CHAT_TURNS
    answer_prefix: str = ""
    # Think step by step, then end with "Answer: ..."; the metric reads the text after the
    # last "Answer:". The answer prefix is not used with reasoning.
    reasoning: bool = False


@dataclass(frozen=True)
class Prompt:
    """A complete prompt: instruction, demonstrations and layout. Render with `render_messages`.

    With `knn_k` > 0 the demonstrations are chosen per input at render time: the `knn_k`
    examples of `demo_pool` most similar to the input (sentence embeddings), after `demos`.
    """

    instruction: str
    demos: tuple[Example, ...] = ()
    format: PromptFormat = PromptFormat()
    input_fields: tuple[str, ...] = ("input",)
    output_name: str = "answer"
    labels: tuple[str, ...] = ()
    demo_pool: tuple[Example, ...] = ()
    knn_k: int = 0


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True)
class ModelEndpoint:
    """Where a chat model is served. The API key is looked up by env var name at call time."""

    base_url: str
    model: str
    api_key_env: str = ""
    temperature: float = 0.0
    max_tokens: int = 32
    max_concurrency: int = 4
    timeout_seconds: float = 60.0
    max_retries: int = 4
    # First retry delay in seconds; doubles per attempt (jittered, at most 30 s).
    retry_backoff_seconds: float = 0.5
    # Stable name for cache keys when base_url is not stable (a local server on a random port).
    cache_identity: str = ""
    # Shared by every job of the process (0 = unlimited): in-flight calls, requests and
    # prompt + completion tokens per minute to this endpoint.
    shared_max_concurrency: int = 0
    requests_per_minute: float = 0.0
    tokens_per_minute: float = 0.0
    # An endpoint failing every call for longer than this fails the job (0 = never).
    max_outage_seconds: float = 300.0
    # Prices in USD per 1,000,000 tokens; 0 = free.
    usd_per_million_prompt_tokens: float = 0.0
    usd_per_million_completion_tokens: float = 0.0


@dataclass(frozen=True)
class Usage:
    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    failed_calls: int = 0
    cost_usd: float = 0.0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Score:
    """A metric mean with its 95% bootstrap interval. Failed examples are excluded and counted."""

    mean: float
    ci_low: float
    ci_high: float
    examples: int
    failed: int = 0
    per_label: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ExampleResult:
    example_id: str
    answer: str
    score: float
    error: str = ""


@dataclass(frozen=True)
class Evaluation:
    score: Score
    results: tuple[ExampleResult, ...]


@dataclass(frozen=True)
class PromptScores:
    prompt: Prompt
    validation: Score
    test: Score | None
    prompt_tokens: int


@dataclass(frozen=True)
class SearchConfig:
    """Search settings and hard budgets. Defaults mirror the API's documented defaults."""

    max_trials: int = 24
    max_llm_calls: int = 2000
    max_wall_seconds: float = 1800.0
    max_tokens: int = 0
    max_cost_usd: float = 0.0
    num_instruction_candidates: int = 4
    max_demos: int = 4
    minibatch_size: int = 16
    seed: int = 0
    num_demo_sets: int = 3
    num_finalists: int = 3
    use_cache: bool = True
    # Instructions asked for in the reflection round after half the trials; 0 = no round.
    num_reflection_candidates: int = 2
    # Reasoning format as a search dimension: None = only for non-classification tasks.
    allow_reasoning: bool | None = None
    # Maximise score and minimise prompt tokens (no pruning; see `Runner`).
    multi_objective: bool = False
    # Workers running this job's trials at once (the primary plus parallelism - 1 helpers).
    parallelism: int = 1


@dataclass(frozen=True)
class Estimate:
    llm_calls: int
    tokens: int


@dataclass(frozen=True)
class SearchResult:
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


# Events the runner reports while it works; the service persists them with sequence numbers.


@dataclass(frozen=True)
class PhaseChanged:
    phase: str


@dataclass(frozen=True)
class TrialFinished:
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


SearchEvent = PhaseChanged | TrialFinished | NewBest | BudgetUsed
