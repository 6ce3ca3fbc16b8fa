"""Protobuf <-> engine conversion, with the request checks that belong to the wire format:
enum values, ranges, sizes and defaults. Errors name the request field that is wrong."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from prompttune.search import (
    BudgetUsed,
    DatasetSplits,
    DemoLayout,
    Evaluation,
    Example,
    InstructionPlacement,
    InvalidArgument,
    MetricName,
    NewBest,
    PhaseChanged,
    Prompt,
    PromptFormat,
    PromptScores,
    Score,
    SearchConfig,
    SearchEvent,
    SearchResult,
    TaskSpec,
    TrialFinished,
    Usage,
)
from prompttune.server._limits import Limits
from prompttune.v1 import optimizer_pb2 as pb

_METRICS = {
    pb.METRIC_EXACT_MATCH: MetricName.EXACT_MATCH,
    pb.METRIC_LABEL_CHOICE: MetricName.LABEL_CHOICE,
    pb.METRIC_CONTAINS: MetricName.CONTAINS,
    pb.METRIC_NUMERIC: MetricName.NUMERIC,
    pb.METRIC_TOKEN_F1: MetricName.TOKEN_F1,
    pb.METRIC_LLM_JUDGE: MetricName.LLM_JUDGE,
    pb.METRIC_EMBEDDING_SIMILARITY: MetricName.EMBEDDING_SIMILARITY,
}
_PLACEMENTS = {
    pb.INSTRUCTION_PLACEMENT_SYSTEM: InstructionPlacement.SYSTEM,
    pb.INSTRUCTION_PLACEMENT_USER: InstructionPlacement.USER,
}
_LAYOUTS = {
    pb.DEMO_LAYOUT_CHAT_TURNS: DemoLayout.CHAT_TURNS,
    pb.DEMO_LAYOUT_INLINE: DemoLayout.INLINE,
}


def _require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise InvalidArgument(field, message)


def _check_text(text: str, field: str, limits: Limits) -> None:
    _require(
        len(text) <= limits.max_chars_per_field,
        field,
        f"is {len(text)} characters long; the limit is {limits.max_chars_per_field}",
    )


def task_from_proto(task: pb.TaskSpec, limits: Limits, field: str = "task") -> TaskSpec:
    _require(bool(task.description.strip()), f"{field}.description", "is required")
    _check_text(task.description, f"{field}.description", limits)
    _check_text(task.seed_instruction, f"{field}.seed_instruction", limits)
    _check_text(task.rubric, f"{field}.rubric", limits)
    _require(
        task.metric in _METRICS,
        f"{field}.metric",
        f"unknown metric {task.metric}; use one of {sorted(m.value for m in MetricName)}",
    )
    _require(
        len(task.labels) <= limits.max_labels,
        f"{field}.labels",
        f"has {len(task.labels)} labels; the limit is {limits.max_labels}",
    )
    labels = tuple(label.strip() for label in task.labels)
    _require(all(labels), f"{field}.labels", "labels must not be empty")
    _require(len(set(labels)) == len(labels), f"{field}.labels", "labels must be unique")
    fields = tuple(task.input_fields) or ("input",)
    _require(all(name.strip() for name in fields), f"{field}.input_fields", "empty field name")
    _require(len(set(fields)) == len(fields), f"{field}.input_fields", "names must be unique")
    return TaskSpec(
        description=task.description.strip(),
        seed_instruction=(task.seed_instruction or task.description).strip(),
        input_fields=fields,
        labels=labels,
        metric=_METRICS[task.metric],
        output_name=task.output_name.strip() or "answer",
        rubric=task.rubric.strip(),
    )


def examples_from_proto(
    examples: Iterable[pb.Example], field: str, limits: Limits
) -> tuple[Example, ...]:
    converted = []
    for index, example in enumerate(examples):
        path = f"{field}[{index}]"
        for name, text in example.inputs.items():
            _check_text(text, f"{path}.inputs.{name}", limits)
        _check_text(example.output, f"{path}.output", limits)
        converted.append(
            Example(
                id=example.id or f"{field}:{index}",
                inputs=dict(sorted(example.inputs.items())),
                output=example.output,
            )
        )
    return tuple(converted)


def example_to_proto(example: Example) -> pb.Example:
    return pb.Example(id=example.id, inputs=dict(example.inputs), output=example.output)


def prompt_from_proto(prompt: pb.Prompt, limits: Limits, field: str = "prompt") -> Prompt:
    _check_text(prompt.instruction, f"{field}.instruction", limits)
    placement = prompt.format.instruction_placement or pb.INSTRUCTION_PLACEMENT_SYSTEM
    layout = prompt.format.demo_layout or pb.DEMO_LAYOUT_CHAT_TURNS
    _require(placement in _PLACEMENTS, f"{field}.format.instruction_placement", "unknown value")
    _require(layout in _LAYOUTS, f"{field}.format.demo_layout", "unknown value")
    return Prompt(
        instruction=prompt.instruction,
        demos=examples_from_proto(prompt.demos, f"{field}.demos", limits),
        format=PromptFormat(
            instruction_placement=_PLACEMENTS[placement],
            demo_layout=_LAYOUTS[layout],
            answer_prefix=prompt.format.answer_prefix,
            reasoning=prompt.format.reasoning,
        ),
        input_fields=tuple(prompt.input_fields) or ("input",),
        output_name=prompt.output_name or "answer",
        labels=tuple(prompt.labels),
        demo_pool=examples_from_proto(prompt.demo_pool, f"{field}.demo_pool", limits),
        knn_k=prompt.knn_k,
    )


def prompt_to_proto(prompt: Prompt) -> pb.Prompt:
    placement = {v: k for k, v in _PLACEMENTS.items()}[prompt.format.instruction_placement]
    layout = {v: k for k, v in _LAYOUTS.items()}[prompt.format.demo_layout]
    return pb.Prompt(
        instruction=prompt.instruction,
        demos=[example_to_proto(demo) for demo in prompt.demos],
        format=pb.PromptFormat(
            instruction_placement=placement,
            demo_layout=layout,
            answer_prefix=prompt.format.answer_prefix,
            reasoning=prompt.format.reasoning,
        ),
        input_fields=list(prompt.input_fields),
        output_name=prompt.output_name,
        labels=list(prompt.labels),
        demo_pool=[example_to_proto(demo) for demo in prompt.demo_pool],
        knn_k=prompt.knn_k,
    )


def search_config_from_proto(search: pb.SearchSpec, limits: Limits) -> SearchConfig:
    """Applies the documented defaults to zero fields and checks the ranges."""
    budget, defaults = search.budget, SearchConfig()
    config = SearchConfig(
        max_trials=budget.max_trials or defaults.max_trials,
        max_llm_calls=budget.max_llm_calls or defaults.max_llm_calls,
        max_wall_seconds=budget.max_wall_seconds or defaults.max_wall_seconds,
        max_tokens=budget.max_tokens,
        max_cost_usd=budget.max_cost_usd,
        num_instruction_candidates=_or_default(
            search, "num_instruction_candidates", defaults.num_instruction_candidates
        ),
        max_demos=_or_default(search, "max_demos", defaults.max_demos),
        minibatch_size=search.minibatch_size or defaults.minibatch_size,
        seed=search.seed,
        num_demo_sets=search.num_demo_sets or defaults.num_demo_sets,
        num_finalists=search.num_finalists or defaults.num_finalists,
        use_cache=not search.disable_cache,
        num_reflection_candidates=_or_default(
            search, "num_reflection_candidates", defaults.num_reflection_candidates
        ),
        allow_reasoning=search.allow_reasoning if search.HasField("allow_reasoning") else None,
        multi_objective=search.multi_objective,
        parallelism=search.parallelism if search.HasField("parallelism") else defaults.parallelism,
    )
    _check_ranges(config, limits)
    return config


def _or_default(
    search: pb.SearchSpec,
    name: Literal["num_instruction_candidates", "max_demos", "num_reflection_candidates"],
    default: int,
) -> int:
    # Zero is meaningful for these ("no proposals", "zero-shot only") only when set explicitly.
    return int(getattr(search, name)) if search.HasField(name) else default


def _check_ranges(config: SearchConfig, limits: Limits) -> None:
    _require(
        config.max_trials <= limits.max_trials,
        "search.budget.max_trials",
        f"must be at most {limits.max_trials}",
    )
    _require(config.max_wall_seconds > 0, "search.budget.max_wall_seconds", "must be positive")
    _require(config.max_cost_usd >= 0, "search.budget.max_cost_usd", "must not be negative")
    _require(
        config.num_instruction_candidates <= 32,
        "search.num_instruction_candidates",
        "must be at most 32",
    )
    _require(config.max_demos <= 16, "search.max_demos", "must be at most 16")
    _require(config.minibatch_size <= 10_000, "search.minibatch_size", "is too large")
    _require(config.num_demo_sets <= 32, "search.num_demo_sets", "must be at most 32")
    _require(config.num_finalists <= 16, "search.num_finalists", "must be at most 16")
    _require(
        config.num_reflection_candidates <= 16,
        "search.num_reflection_candidates",
        "must be at most 16",
    )
    _require(1 <= config.parallelism <= 16, "search.parallelism", "must be between 1 and 16")
    # Helpers rebuild the candidate space from the primary's cached proposer answers.
    _require(
        config.parallelism == 1 or config.use_cache,
        "search.parallelism",
        "above 1 needs the response cache (disable_cache must be false)",
    )


def splits_from_proto(dataset: pb.Dataset, limits: Limits) -> tuple[DatasetSplits, bool]:
    """Returns the explicit splits, or (pooled split, True) when `examples` must be split."""
    explicit = bool(dataset.train or dataset.validation or dataset.test)
    _require(
        not (explicit and dataset.examples),
        "dataset.examples",
        "give either explicit train/validation/test splits or examples, not both",
    )
    total = len(dataset.train) + len(dataset.validation) + len(dataset.test)
    total += len(dataset.examples)
    _require(total > 0, "dataset", "has no examples")
    _require(
        total <= limits.max_examples,
        "dataset",
        f"has {total} examples; the limit is {limits.max_examples}",
    )
    if not explicit:
        pooled = examples_from_proto(dataset.examples, "dataset.examples", limits)
        return DatasetSplits(train=pooled, validation=()), True
    return (
        DatasetSplits(
            train=examples_from_proto(dataset.train, "dataset.train", limits),
            validation=examples_from_proto(dataset.validation, "dataset.validation", limits),
            test=examples_from_proto(dataset.test, "dataset.test", limits),
        ),
        False,
    )


def split_ratio(dataset: pb.Dataset) -> tuple[float, float, float, int]:
    ratio = dataset.split
    if not (ratio.train or ratio.validation or ratio.test):
        return 0.5, 0.25, 0.25, int(ratio.seed)
    parts = (ratio.train, ratio.validation, ratio.test)
    _require(all(0 <= part < 1 for part in parts), "dataset.split", "fractions must be in [0, 1)")
    _require(abs(sum(parts) - 1.0) < 1e-6, "dataset.split", "fractions must sum to 1")
    return ratio.train, ratio.validation, ratio.test, int(ratio.seed)


def usage_to_proto(usage: Usage) -> pb.Usage:
    return pb.Usage(
        llm_calls=usage.llm_calls,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cache_hits=usage.cache_hits,
        cache_misses=usage.cache_misses,
        failed_calls=usage.failed_calls,
        cost_usd=usage.cost_usd,
    )


def score_to_proto(score: Score) -> pb.Score:
    return pb.Score(
        mean=score.mean,
        ci_low=score.ci_low,
        ci_high=score.ci_high,
        examples=score.examples,
        failed=score.failed,
        per_label=dict(score.per_label),
    )


def prompt_scores_to_proto(scores: PromptScores) -> pb.PromptScores:
    message = pb.PromptScores(
        prompt=prompt_to_proto(scores.prompt),
        validation=score_to_proto(scores.validation),
        prompt_tokens=scores.prompt_tokens,
    )
    if scores.test is not None:
        message.test.CopyFrom(score_to_proto(scores.test))
    return message


def result_to_proto(result: SearchResult) -> pb.JobResult:
    return pb.JobResult(
        baseline=prompt_scores_to_proto(result.baseline),
        best=prompt_scores_to_proto(result.best),
        improved=result.improved,
        summary=result.summary,
        usage=usage_to_proto(result.usage),
        trials_completed=result.trials_completed,
        trials_pruned=result.trials_pruned,
        wall_seconds=result.wall_seconds,
        stop_reason=result.stop_reason,
        pareto=[prompt_scores_to_proto(point) for point in result.pareto],
        usage_by_role={role: usage_to_proto(u) for role, u in result.usage_by_role.items()},
    )


def evaluation_to_proto(evaluation: Evaluation, usage: Usage) -> pb.EvaluatePromptResponse:
    return pb.EvaluatePromptResponse(
        score=score_to_proto(evaluation.score),
        results=[
            pb.ExampleResult(id=r.example_id, answer=r.answer, score=r.score, error=r.error)
            for r in evaluation.results
        ],
        usage=usage_to_proto(usage),
    )


def event_to_proto(event: SearchEvent) -> pb.JobEvent:
    if isinstance(event, PhaseChanged):
        return pb.JobEvent(phase_changed=pb.PhaseChanged(phase=event.phase))
    if isinstance(event, TrialFinished):
        return pb.JobEvent(
            trial_finished=pb.TrialFinished(
                trial=event.trial,
                score=event.score,
                examples=event.examples,
                pruned=event.pruned,
                config=event.config,
            )
        )
    if isinstance(event, NewBest):
        return pb.JobEvent(new_best=pb.NewBest(trial=event.trial, score=event.score))
    if isinstance(event, BudgetUsed):
        return pb.JobEvent(budget_used=pb.BudgetUsed(usage=usage_to_proto(event.usage)))
    raise TypeError(f"unknown search event {event!r}")
