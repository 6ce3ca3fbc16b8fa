"""What a job may cost before it runs, and the answer caps that bound it."""

from __future__ import annotations

from prompttune.contract import (
    CONTENT_FREE_INPUTS,
    Estimate,
    Metric,
    Prompt,
    PromptFormat,
    Scoring,
    SearchSpec,
    TaskSpec,
    labels_distinguishable,
    render,
)
from prompttune.search._budget import estimate_call_tokens
from prompttune.search._demos import bootstrap_candidates
from prompttune.search._labelprobs import label_task
from prompttune.search._objective import objective_for
from prompttune.search._proposer import MAX_INSTRUCTION_CHARS
from prompttune.search._scorers import calls_per_example
from prompttune.search._space import REASONING_MAX_TOKENS
from prompttune.search._types import DatasetSplits
from prompttune.search._validate import validate_splits, validate_task


def reasoning_max_tokens(spec: SearchSpec, task_max_tokens: int, validation: int) -> int:
    """Answer cap of reasoning prompts: max(task cap, 256), bounded by a token budget so
    that the answers of one full validation pass take at most a quarter of it (never below
    the task cap)."""
    cap = max(task_max_tokens, REASONING_MAX_TOKENS)
    if spec.budget.max_tokens:
        cap = min(cap, spec.budget.max_tokens // max(1, 4 * validation))
    return max(task_max_tokens, cap)


def reasoning_enabled(task: TaskSpec, spec: SearchSpec) -> bool:
    """Reasoning is a search dimension when allowed explicitly, or by default for tasks that
    are not pure classification."""
    if spec.allow_reasoning is not None:
        return spec.allow_reasoning
    return task.metric is not Metric.LABEL_CHOICE


# Without `SearchSpec.selection_fraction`, this share of the validation split picks the
# winner, when the split has at least `MIN_SELECTION_VALIDATION` examples (fewer leave too few
# for the search's minibatches and a selection score alike).
DEFAULT_SELECTION_FRACTION = 0.5
MIN_SELECTION_VALIDATION = 20


def selection_size(spec: SearchSpec, validation: int) -> int:
    """Validation examples held back from the search to pick the winner: the fraction of
    `spec.selection_fraction` (None: 0.5 from 20 examples on, else 0), rounded, leaving the
    search at least one example."""
    fraction = spec.selection_fraction
    if fraction is None:
        fraction = DEFAULT_SELECTION_FRACTION if validation >= MIN_SELECTION_VALIDATION else 0.0
    return max(0, min(validation - 1, round(validation * fraction)))


def final_calls(task: TaskSpec, splits: DatasetSplits, spec: SearchSpec) -> int:
    """Calls promotion, selection and testing may need: baseline and finalists on the whole
    validation split (the search's part and the selection part), two prompts on test."""
    finalists = objective_for(spec).finalist_count(spec.num_finalists)
    finals = (finalists + 1) * len(splits.validation) + 2 * len(splits.test)
    return calls_per_example(task) * finals


def _proposer_calls(spec: SearchSpec, train: int) -> int:
    proposals = max(0, spec.num_instruction_candidates)
    summary = 1 if proposals and train else 0
    return proposals + summary + max(0, spec.num_reflection_candidates)


def _scoring_calls(task: TaskSpec, spec: SearchSpec, scored_examples: int) -> int:
    """Calls label-probability scoring may add: the probe that decides it, a generation
    fallback for each of the `scored_examples` whose label probabilities name no label, and
    the content-free calls of calibration (`CONTENT_FREE_INPUTS` per calibrated trial)."""
    if spec.scoring is Scoring.GENERATION or not label_task(task):
        return 0
    if not labels_distinguishable(task.labels):
        return 1
    fallbacks = scored_examples
    if spec.calibrate is False:
        return 1 + fallbacks
    return 1 + fallbacks + len(CONTENT_FREE_INPUTS) * spec.budget.max_trials


def estimate(
    task: TaskSpec,
    splits: DatasetSplits,
    spec: SearchSpec,
    task_max_tokens: int = 32,
    proposer_max_tokens: int = 80,
) -> Estimate:
    """Upper bound of the LLM calls and tokens a job can send, capped by its budget.
    (`Estimate.endpoints` is left empty: pre-flight checks are the service's.)

    Raises `InvalidArgument` like `Runner.run` for an invalid task or dataset.
    """
    validate_task(task)
    validate_splits(task, splits)
    budget = spec.budget
    n_val = len(splits.validation)
    bootstrap = len(bootstrap_candidates(splits.train, spec.max_demos, spec.seed))
    finals = final_calls(task, splits, spec)
    searched = n_val - selection_size(spec, n_val)
    scoring = calls_per_example(task) * (budget.max_trials * searched + bootstrap)
    calls = _proposer_calls(spec, len(splits.train)) + finals + scoring
    calls += _scoring_calls(task, spec, (finals + scoring) // calls_per_example(task))
    if budget.max_llm_calls:
        calls = min(calls, budget.max_llm_calls)
    widest = Prompt(
        instruction=task.instruction + " " * MAX_INSTRUCTION_CHARS,
        demos=tuple(sorted(splits.train, key=lambda ex: -len(str(ex.inputs))))[: spec.max_demos],
        format=PromptFormat(answer_prefix=f"{task.output_name.capitalize()}:"),
        input_fields=task.input_fields,
        output_name=task.output_name,
    )
    longest = max((*splits.validation, *splits.test), key=lambda ex: len(str(ex.inputs)))
    chars = sum(len(m.content) for m in render(widest, longest.inputs))
    answer = max(task_max_tokens, proposer_max_tokens)
    if reasoning_enabled(task, spec):
        answer = max(answer, reasoning_max_tokens(spec, task_max_tokens, n_val))
    tokens = calls * estimate_call_tokens(chars, answer)
    if budget.max_tokens:
        tokens = min(tokens, budget.max_tokens)
    return Estimate(calls, tokens)
