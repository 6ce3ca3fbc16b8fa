"""The API's concepts, defined once: frozen, typed dataclasses used by the SDK and the engine.

Conventions: field names equal the prompttune.v1 proto field names, so one codec maps both
ways by name (`prompttune.contract.wire`) and one maps to task and result files
(`prompttune.contract.documents`). Defaults are the documented server defaults, written here
and nowhere else. Durations are seconds, timestamps timezone-aware UTC datetimes, repeated
fields tuples. Nothing here imports protobuf or any engine package.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime


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


class Scoring(enum.StrEnum):
    """How answers are scored. AUTO: label probabilities where the endpoint returns log
    probabilities and the labels differ in their first tokens, generation elsewhere."""

    AUTO = "auto"
    GENERATION = "generation"
    LABEL_PROBABILITIES = "label_probabilities"


class Objective(enum.StrEnum):
    """What the search maximises over the examples it scores."""

    MEAN = "mean"
    MACRO_F1 = "macro_f1"
    WORST_LABEL = "worst_label"
    WORST_SLICE = "worst_slice"


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
    """One labelled example. ``inputs`` may be a plain string, short for ``{"input": text}``.
    ``tags`` (name -> value, e.g. ``{"dialect": "en-GB"}``) define the slices scores are
    broken down by."""

    inputs: Mapping[str, str]
    output: str
    id: str
    tags: Mapping[str, str]

    def __init__(
        self,
        inputs: Mapping[str, str] | str,
        output: str = "",
        id: str = "",
        tags: Mapping[str, str] | None = None,
    ) -> None:
        object.__setattr__(
            self, "inputs", {"input": inputs} if isinstance(inputs, str) else dict(inputs)
        )
        object.__setattr__(self, "output", output)
        object.__setattr__(self, "id", id)
        object.__setattr__(self, "tags", dict(tags or {}))

    def __hash__(self) -> int:
        return hash(
            (
                self.id,
                tuple(sorted(self.inputs.items())),
                self.output,
                tuple(sorted(self.tags.items())),
            )
        )


@dataclass(frozen=True)
class ModelSpec:
    """The model a prompt is for.

    ``endpoint`` names an entry of the server's endpoint registry ("local" is the embedded
    SmolLM2-135M-Instruct). ``base_url`` and ``api_key_env`` describe a caller-supplied
    endpoint, which servers refuse unless their operator allows it; ``api_key_env`` names a
    server-side environment variable, the key itself is never sent. ``max_tokens`` is per call
    (1..4096); ``max_concurrency`` 0 takes the endpoint's default. Rates and prices may only
    tighten, or stand in for, what the registry sets.
    """

    kind: ModelKind = ModelKind.LOCAL
    endpoint: str = ""
    base_url: str = ""
    model: str = ""
    api_key_env: str = ""
    temperature: float = 0.0
    max_tokens: int = 32
    max_concurrency: int = 0
    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    usd_per_million_prompt_tokens: float = 0.0
    usd_per_million_completion_tokens: float = 0.0

    @classmethod
    def local(cls, *, max_tokens: int = 32) -> ModelSpec:
        """The embedded SmolLM2-135M-Instruct served by the server's managed llama.cpp."""
        return cls(kind=ModelKind.LOCAL, max_tokens=max_tokens)

    @classmethod
    def named(cls, endpoint: str, *, model: str = "", max_tokens: int = 32) -> ModelSpec:
        """An endpoint of the server's registry, by name."""
        return cls(
            kind=ModelKind.OPENAI_COMPATIBLE, endpoint=endpoint, model=model, max_tokens=max_tokens
        )

    @classmethod
    def openai_compatible(
        cls,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "",
        temperature: float = 0.0,
        max_tokens: int = 32,
    ) -> ModelSpec:
        """A caller-supplied OpenAI-compatible endpoint (only where the operator allows it)."""
        return cls(
            kind=ModelKind.OPENAI_COMPATIBLE,
            base_url=base_url,
            model=model,
            api_key_env=api_key_env,
            temperature=temperature,
            max_tokens=max_tokens,
        )

    @property
    def endpoint_name(self) -> str:
        """The registry name this spec refers to; "" for a caller-supplied URL."""
        if self.endpoint:
            return self.endpoint
        return "local" if self.kind is ModelKind.LOCAL else ""

    @property
    def label(self) -> str:
        """A short human name: "gemma", "remote/gpt-4o-mini", "local", or the URL's model."""
        where = self.endpoint_name or self.base_url
        return f"{where}/{self.model}" if where and self.model else where or self.model


@dataclass(frozen=True)
class TaskSpec:
    """What the model must do and how answers are scored.

    ``seed_instruction`` empty means the description. ``labels`` is required for
    ``Metric.LABEL_CHOICE``; ``rubric`` for ``Metric.LLM_JUDGE``, whose ``judge`` model
    defaults to the task model. ``baseline`` is the prompt a person wrote for the task, the
    job's baseline; None: the seed instruction zero-shot in the user message with an answer
    cue.
    """

    description: str
    metric: Metric = Metric.EXACT_MATCH
    seed_instruction: str = ""
    input_fields: tuple[str, ...] = ("input",)
    labels: tuple[str, ...] = ()
    output_name: str = "answer"
    rubric: str = ""
    judge: ModelSpec | None = None
    baseline: Prompt | None = None

    @property
    def instruction(self) -> str:
        """The baseline's instruction: the seed instruction, or the description."""
        return (self.seed_instruction or self.description).strip()


@dataclass(frozen=True)
class Budget:
    """Hard limits of one search over task, proposer and judge calls. 0 = unlimited where
    noted: ``max_tokens`` and ``max_cost_usd``."""

    max_trials: int = 24
    max_llm_calls: int = 2000
    max_wall_seconds: float = 1800.0
    max_tokens: int = 0
    max_cost_usd: float = 0.0


@dataclass(frozen=True)
class SearchSpec:
    """Search settings (see optimizer.proto for each field's range).

    ``max_demos=0`` searches zero-shot prompts only; ``num_instruction_candidates=0`` keeps the
    seed instruction; ``allow_reasoning=None`` allows reasoning only for tasks that are not
    classification; ``proposer=None`` proposes with the task model. ``calibrate=None``
    searches calibration whenever label probabilities are used; ``selection_fraction=None``
    holds back half the validation split to pick the winner when it has at least 20 examples.
    """

    budget: Budget = field(default_factory=Budget)
    num_instruction_candidates: int = 4
    max_demos: int = 4
    minibatch_size: int = 16
    seed: int = 0
    num_demo_sets: int = 3
    num_finalists: int = 3
    proposer: ModelSpec | None = None
    disable_cache: bool = False
    allow_reasoning: bool | None = None
    multi_objective: bool = False
    num_reflection_candidates: int = 2
    parallelism: int = 1
    scoring: Scoring = Scoring.AUTO
    calibrate: bool | None = None
    objective: Objective = Objective.MEAN
    slice_tag: str = ""
    selection_fraction: float | None = None


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

    @property
    def size(self) -> int:
        return len(self.train) + len(self.validation) + len(self.test) + len(self.examples)


@dataclass(frozen=True)
class PromptFormat:
    """Layout of a prompt. With ``reasoning`` the model thinks step by step and ends with
    "Answer: ..."; the metric reads the text after the last "Answer:" and ``answer_prefix``
    is not used."""

    instruction_placement: InstructionPlacement = InstructionPlacement.SYSTEM
    demo_layout: DemoLayout = DemoLayout.CHAT_TURNS
    answer_prefix: str = ""
    reasoning: bool = False


@dataclass(frozen=True)
class Calibration:
    """Contextual calibration of label probabilities: each label's probability is multiplied
    by its weight before the argmax (a label without a weight keeps 1). Apply it with
    `calibrated_prediction`."""

    weights: Mapping[str, float] = field(default_factory=dict)
    content_free_inputs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Prompt:
    """A complete prompt: instruction, demonstrations and layout. Render with `render`.

    With ``knn_k`` > 0 the demonstrations are chosen per input at render time: the ``knn_k``
    examples of ``demo_pool`` most similar to the input (sentence embeddings), after ``demos``.
    """

    instruction: str
    demos: tuple[Example, ...] = ()
    format: PromptFormat = field(default_factory=PromptFormat)
    input_fields: tuple[str, ...] = ("input",)
    output_name: str = "answer"
    labels: tuple[str, ...] = ()
    demo_pool: tuple[Example, ...] = ()
    knn_k: int = 0
    calibration: Calibration | None = None


@dataclass(frozen=True)
class ChatMessage:
    """One chat message; ``role`` is "system", "user" or "assistant"."""

    role: str
    content: str


@dataclass(frozen=True)
class Usage:
    """LLM calls sent to endpoints (cache misses), their tokens and cost."""

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
class ConfusionMatrix:
    """Expected label (rows) x predicted label (columns), row-major ``counts``; the labels may
    end with "(none)" for answers that named no label."""

    labels: tuple[str, ...] = ()
    counts: tuple[int, ...] = ()

    def count(self, expected: str, predicted: str) -> int:
        """Examples that expected `expected` and were predicted `predicted`."""
        size = len(self.labels)
        return self.counts[self.labels.index(expected) * size + self.labels.index(predicted)]


@dataclass(frozen=True)
class LabelMetrics:
    precision: float = 0.0
    recall: float = 0.0
    f1: float = 0.0
    support: int = 0


@dataclass(frozen=True)
class SliceScore:
    """The score of the examples whose tag ``tag`` has value ``value``."""

    tag: str
    value: str
    mean: float = 0.0
    ci_low: float = 0.0
    ci_high: float = 0.0
    examples: int = 0


@dataclass(frozen=True)
class Score:
    """Mean metric value in [0, 1] with its 95% bootstrap interval.

    ``failed`` examples (LLM call failed after retries) are excluded from the mean and counted.
    ``per_label`` maps label -> accuracy, for classification only, as do ``confusion``,
    ``label_metrics`` and ``macro_f1``. ``slices`` break the score down by example tags.
    """

    mean: float
    ci_low: float
    ci_high: float
    examples: int
    failed: int = 0
    per_label: Mapping[str, float] = field(default_factory=dict)
    confusion: ConfusionMatrix | None = None
    label_metrics: Mapping[str, LabelMetrics] = field(default_factory=dict)
    macro_f1: float = 0.0
    slices: tuple[SliceScore, ...] = ()
    worst_slice: SliceScore | None = None
    scoring: Scoring = Scoring.GENERATION


@dataclass(frozen=True)
class PromptScores:
    """A prompt with its validation score and, when the dataset has a test split, test score.

    ``validation`` is measured on the examples the search scored; ``selection`` on the ones
    held back to pick the winner, and ``optimism`` is validation.mean - selection.mean.
    """

    prompt: Prompt
    validation: Score
    test: Score | None = None
    prompt_tokens: int = 0
    selection: Score | None = None
    optimism: float = 0.0


@dataclass(frozen=True)
class JobResult:
    """Outcome of a search. When ``improved`` is False, ``best`` is the baseline. ``partial``:
    the job was cancelled or failed, and this is the best found before it stopped."""

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
    partial: bool = False
    scoring: Scoring = Scoring.GENERATION
    scoring_note: str = ""
    dropped_instructions: tuple[DroppedInstruction, ...] = ()
    models: tuple[ModelResult, ...] = ()
    recommendation: Recommendation | None = None


@dataclass(frozen=True)
class DroppedInstruction:
    """A proposed instruction discarded before any trial, and why."""

    instruction: str
    reason: str


@dataclass(frozen=True)
class ModelResult:
    """One target model's outcome in a multi-model job."""

    model: ModelSpec
    result: JobResult
    seconds_per_example: float = 0.0
    on_frontier: bool = False


@dataclass(frozen=True)
class Recommendation:
    """Which model of a multi-model job to run (an index into ``JobResult.models``), and why."""

    model_index: int = 0
    reason: str = ""


@dataclass(frozen=True)
class Progress:
    """Live progress; ``best_score`` is a progress signal, not a final score."""

    phase: str = ""
    trials_completed: int = 0
    best_score: float = 0.0
    usage: Usage = field(default_factory=Usage)


@dataclass(frozen=True)
class EndpointCheck:
    """Pre-flight reachability of one endpoint a job uses."""

    endpoint: str
    field: str
    reachable: bool
    error: str = ""


@dataclass(frozen=True)
class Estimate:
    """Upper bound on LLM calls a job may send, a rough token count for them, and whether
    each endpoint answered a pre-flight check."""

    llm_calls: int
    tokens: int
    endpoints: tuple[EndpointCheck, ...] = ()


@dataclass(frozen=True)
class Job:
    """One optimisation job. ``result`` is set once SUCCEEDED (and, marked partial, when a
    cancelled or failed job had found something); ``error`` once FAILED."""

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
    models: tuple[ModelSpec, ...] = ()
    template_job_id: str = ""

    @property
    def done(self) -> bool:
        """True once the job is SUCCEEDED, FAILED or CANCELLED."""
        return self.state.terminal


@dataclass(frozen=True)
class JobPage:
    """One page of ``list_jobs``; ``next_page_token`` is empty on the last page."""

    jobs: tuple[Job, ...]
    next_page_token: str


@dataclass(frozen=True)
class StateChanged:
    state: JobState
    error: str = ""


@dataclass(frozen=True)
class PhaseChanged:
    """``phase``: "splitting", "proposing", "searching", "reflecting", "validating", "testing"."""

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


@dataclass(frozen=True)
class Notice:
    """Something the caller should know while a job runs; ``code`` is stable, e.g.
    "endpoint_failing"."""

    code: str
    message: str


SearchEvent = PhaseChanged | TrialFinished | NewBest | BudgetUsed | Notice
"""What the engine reports while it works; the service stores each as a `JobEvent`."""

_EVENT_KINDS = (
    "state_changed",
    "phase_changed",
    "trial_finished",
    "new_best",
    "budget_used",
    "notice",
)


@dataclass(frozen=True)
class JobEvent:
    """One event of a job: exactly one payload is set, named by ``kind`` ("unknown" for
    event types newer than this code). ``sequence`` starts at 1 and strictly increases."""

    job_id: str
    sequence: int
    time: datetime
    state_changed: StateChanged | None = None
    phase_changed: PhaseChanged | None = None
    trial_finished: TrialFinished | None = None
    new_best: NewBest | None = None
    budget_used: BudgetUsed | None = None
    notice: Notice | None = None

    @property
    def kind(self) -> str:
        return next((name for name in _EVENT_KINDS if getattr(self, name) is not None), "unknown")


@dataclass(frozen=True)
class ExampleResult:
    """The model's answer to one example; ``error`` is set when the LLM call failed."""

    id: str
    answer: str
    score: float
    error: str = ""
    prediction: str = ""
    label_probabilities: Mapping[str, float] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return bool(self.error)


@dataclass(frozen=True)
class Evaluation:
    """A prompt's score on given examples and one result per example, in order."""

    score: Score
    results: tuple[ExampleResult, ...]
    usage: Usage = field(default_factory=Usage)


@dataclass(frozen=True)
class PairedComparison:
    """b - a over the examples both prompts scored: the mean difference, its 95% paired
    bootstrap interval, a permutation p-value, and per-label recall differences. ``verdict``
    is "b_better", "b_worse" or "no_difference"."""

    difference: float = 0.0
    ci_low: float = 0.0
    ci_high: float = 0.0
    p_value: float = 1.0
    examples: int = 0
    per_label_difference: Mapping[str, float] = field(default_factory=dict)
    verdict: str = "no_difference"


@dataclass(frozen=True)
class Comparison:
    """Two prompts scored on the same examples, and their paired comparison."""

    a: Evaluation
    b: Evaluation
    comparison: PairedComparison


@dataclass(frozen=True)
class JobDataset:
    """A job's labelled examples as its search split them."""

    job_id: str
    train: tuple[Example, ...] = ()
    validation: tuple[Example, ...] = ()
    test: tuple[Example, ...] = ()


@dataclass(frozen=True)
class EvaluationProgress:
    done: int
    total: int


@dataclass(frozen=True)
class JobSpec:
    """A validated CreateJob request: what a worker runs. Built once, at the service's edge."""

    task: TaskSpec
    dataset: Dataset
    model: ModelSpec = field(default_factory=ModelSpec)
    search: SearchSpec = field(default_factory=SearchSpec)
    request_id: str = ""
    models: tuple[ModelSpec, ...] = ()
    template_job_id: str = ""

    @property
    def target_models(self) -> tuple[ModelSpec, ...]:
        """Every model the job searches a prompt for: ``model``, then ``models``."""
        return (self.model, *self.models)
