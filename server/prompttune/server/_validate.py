"""Decoding and validation at the service's edge, done once per request.

`decode` turns a protobuf request into a contract value through the one wire codec;
`validate_job_spec` checks every field of a CreateJob request against `Limits` and normalises
it (labels stripped, the seed instruction filled in, a pooled dataset cut into splits), so
workers and the engine receive a `JobSpec` they never check again. Every error is
`InvalidArgument` naming the field, quoting at most a short prefix of the value.
"""

from __future__ import annotations

import dataclasses
import math
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from prompttune.contract import (
    MAX_CALIBRATION_WEIGHT,
    Calibration,
    ContractError,
    Dataset,
    Example,
    JobSpec,
    JobState,
    Metric,
    ModelKind,
    ModelSpec,
    Objective,
    Prompt,
    Scoring,
    SearchSpec,
    SplitRatio,
    TaskSpec,
    labels_distinguishable,
    preview,
    wire,
)
from prompttune.search import (
    DatasetSplits,
    calls_per_example,
    final_calls,
    split_examples,
    validate_splits,
    validate_task,
)
from prompttune.search import InvalidArgument as InvalidArgumentError
from prompttune.server._limits import Limits
from prompttune.server._multimodel import model_search

T = TypeVar("T")

# A decoder: (contract type, protobuf message, field path) -> contract value. Injectable, so a
# test can count how often a request is decoded.
Decoder = Callable[[type[Any], Any, str], Any]

_ID = re.compile(r"[A-Za-z0-9._:\-]+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Names and labels are single-line: no tabs or line breaks either.
_NAME_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_SEQUENCE = 2**31 - 1
# Example.tags (optimizer.proto): at most 8 per example, names and values of 64 characters.
MAX_TAGS = 8
MAX_TAG_CHARS = 64
_TAG_NAME = re.compile(r"[A-Za-z0-9_.\-]+")


@dataclass(frozen=True)
class EvaluationRequest:
    """An EvaluatePrompt request (fields named as in the proto, so `wire` decodes it)."""

    prompt: Prompt
    task: TaskSpec
    examples: tuple[Example, ...] = ()
    model: ModelSpec = dataclasses.field(default_factory=ModelSpec)


@dataclass(frozen=True)
class ComparisonRequest:
    """A ComparePrompts request (fields named as in the proto, so `wire` decodes it)."""

    task: TaskSpec
    a: Prompt
    b: Prompt
    examples: tuple[Example, ...] = ()
    model_a: ModelSpec = dataclasses.field(default_factory=ModelSpec)
    model_b: ModelSpec = dataclasses.field(default_factory=ModelSpec)
    seed: int = 0
    scoring: Scoring = Scoring.AUTO

    def evaluation(self, side: str) -> EvaluationRequest:
        """Side "a" or "b" as the EvaluatePrompt request that scores it."""
        prompt, model = (self.a, self.model_a) if side == "a" else (self.b, self.model_b)
        return EvaluationRequest(prompt, self.task, self.examples, model)


@dataclass(frozen=True)
class RenderRequest:
    prompt: Prompt
    inputs: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class JobQuery:
    """A ListJobs request. `state` UNSPECIFIED lists every state."""

    page_size: int = 50
    page_token: str = ""
    state: JobState = JobState.UNSPECIFIED


@dataclass(frozen=True)
class WatchRequest:
    job_id: str
    after_sequence: int = 0


def decode(cls: type[T], message: Any, path: str = "") -> T:
    """`wire.from_message` with its `ContractError` turned into `InvalidArgument`."""
    try:
        return wire.from_message(cls, message, path)
    except ContractError as error:
        raise InvalidArgumentError(error.path or "request", error.message) from error


def _fail(field: str, message: str) -> InvalidArgumentError:
    return InvalidArgumentError(field, message)


_MAX_MESSAGE_CHARS = 200


def _engine_check(check: Callable[..., None], *args: Any) -> None:
    """Runs one of the engine's checks; its messages may quote whole user values, so they
    are cut short before they reach a caller (or gRPC's metadata limits)."""
    try:
        check(*args)
    except InvalidArgumentError as error:
        if len(error.message) <= _MAX_MESSAGE_CHARS:
            raise
        short = error.message[: _MAX_MESSAGE_CHARS - 3] + "..."
        raise InvalidArgumentError(error.field[:_MAX_MESSAGE_CHARS], short) from error


def check_text(text: str, field: str, limit: int, *, required: bool = False) -> None:
    """Length bound of free text; `required` refuses empty or blank text."""
    if required and not text.strip():
        raise _fail(field, "is required")
    if len(text) > limit:
        raise _fail(field, f"is {len(text)} characters long; the limit is {limit}")


def check_name(text: str, field: str, limit: int) -> None:
    """A short name: bounded, non-blank, no control characters."""
    check_text(text, field, limit, required=True)
    if _NAME_CONTROL.search(text):
        raise _fail(field, f"must not contain control characters: {preview(text)}")


def check_count(items: Any, field: str, limit: int) -> None:
    if len(items) > limit:
        raise _fail(field, f"has {len(items)} items; the limit is {limit}")


def check_id(value: str, field: str, limit: int = 128) -> str:
    """An id or token: required, bounded, only letters, digits and ``._:-``."""
    if not value:
        raise _fail(field, "is required")
    if len(value) > limit or not _ID.fullmatch(value):
        raise _fail(field, f"is not a valid id: {preview(value)}")
    return value


def check_sequence(value: int, field: str) -> int:
    if not 0 <= value <= _MAX_SEQUENCE:
        raise _fail(field, f"must be in [0, {_MAX_SEQUENCE}]")
    return value


def validate_job_spec(spec: JobSpec, limits: Limits) -> JobSpec:
    """The normalised spec; raises `InvalidArgument` naming the first bad field. CPU-bound on
    large datasets: call it off the event loop."""
    if spec.request_id:
        check_id(spec.request_id, "request_id", limits.max_id_chars)
    if spec.template_job_id:
        check_id(spec.template_job_id, "template_job_id", limits.max_id_chars)
    task = validate_task_spec(spec.task, limits)
    validate_model(spec.model, "model", limits)
    validate_target_models(spec)
    for index, model in enumerate(spec.models):
        validate_model(model, f"models[{index}]", limits)
    validate_search(spec.search, limits)
    check_scoring(task, spec.search)
    splits = _splits(spec.dataset, limits)
    _check_examples(splits, task, limits)
    _engine_check(validate_splits, task, splits)
    check_objective(spec.search, task, splits)
    check_model_shares(spec, task, splits)
    dataset = Dataset(train=splits.train, validation=splits.validation, test=splits.test)
    return dataclasses.replace(spec, task=task, dataset=dataset)


MAX_TARGET_MODELS = 4


def validate_target_models(spec: JobSpec) -> None:
    """At most `MAX_TARGET_MODELS` target models (``model`` plus ``models``), no two with
    the same endpoint (or URL) and model name."""
    if len(spec.target_models) > MAX_TARGET_MODELS:
        raise _fail(
            "models",
            f"has {len(spec.models)} items; a job searches at most {MAX_TARGET_MODELS} "
            f"models (model plus {MAX_TARGET_MODELS - 1} more)",
        )
    seen = {_model_key(spec.model): "model"}
    for index, model in enumerate(spec.models):
        field = f"models[{index}]"
        if _model_key(model) in seen:
            raise _fail(field, f"names the same endpoint and model as {seen[_model_key(model)]}")
        seen[_model_key(model)] = field


def check_model_shares(spec: JobSpec, task: TaskSpec, splits: DatasetSplits) -> None:
    """Each model of a multi-model job gets an even share of ``max_llm_calls``; a share that
    cannot pay for that model's final phase (baseline and finalists on the validation split,
    two prompts on test) and one minibatch of trials is refused, not run without a search."""
    count = len(spec.target_models)
    if count < 2:
        return
    one = model_search(spec)
    need = final_calls(task, splits, one) + calls_per_example(task) * one.minibatch_size
    if one.budget.max_llm_calls < need:
        raise _fail(
            "search.budget.max_llm_calls",
            f"gives each of the {count} models {one.budget.max_llm_calls} calls; each needs at "
            f"least {need} (validation and test of the baseline and finalists, and one "
            f"minibatch of trials): raise it to {need * count} or more",
        )


def _model_key(model: ModelSpec) -> tuple[str, str]:
    return model.endpoint_name or model.base_url.rstrip("/"), model.model


def check_template_request(template_job_id: str, has_model: bool) -> None:
    """A CreateJob naming a template must still name its model: the template's models are
    not copied."""
    if template_job_id and not has_model:
        raise _fail("model", "is required with template_job_id")


def validate_task_spec(task: TaskSpec, limits: Limits, field: str = "task") -> TaskSpec:
    """The task with labels and names stripped and the seed instruction filled in."""
    check_text(task.description, f"{field}.description", limits.max_chars_per_field, required=True)
    check_text(task.seed_instruction, f"{field}.seed_instruction", limits.max_chars_per_field)
    check_text(task.rubric, f"{field}.rubric", limits.max_chars_per_field)
    check_count(task.labels, f"{field}.labels", limits.max_labels)
    for index, label in enumerate(task.labels):
        check_name(label, f"{field}.labels[{index}]", limits.max_label_chars)
    _check_names(task.input_fields, f"{field}.input_fields", limits)
    check_name(task.output_name, f"{field}.output_name", limits.max_name_chars)
    if task.judge is not None:
        validate_model(task.judge, f"{field}.judge", limits)
    normalised = dataclasses.replace(
        task,
        description=task.description.strip(),
        seed_instruction=task.instruction,
        input_fields=tuple(name.strip() for name in task.input_fields),
        labels=tuple(label.strip() for label in task.labels),
        output_name=task.output_name.strip(),
        rubric=task.rubric.strip(),
    )
    _engine_check(validate_task, normalised)
    if task.baseline is None:
        return normalised
    baseline = task_baseline(task.baseline, normalised, limits, f"{field}.baseline")
    return dataclasses.replace(normalised, baseline=baseline)


_PROMPT_DEFAULTS = Prompt(instruction="")


def task_baseline(prompt: Prompt, task: TaskSpec, limits: Limits, field: str) -> Prompt:
    """A task's own baseline prompt, bounded like any prompt, with its input fields, labels
    and output name taken from `task` when left empty (or at their defaults); given ones
    must agree with the task's, or the job would score a prompt for another task."""
    validate_prompt(prompt, limits, field)
    check_text(
        prompt.instruction, f"{field}.instruction", limits.max_chars_per_field, required=True
    )
    fields = tuple(name.strip() for name in prompt.input_fields)
    labels = tuple(label.strip() for label in prompt.labels)
    output_name = prompt.output_name.strip()
    if fields not in ((), _PROMPT_DEFAULTS.input_fields, task.input_fields):
        raise _fail(f"{field}.input_fields", f"must match the task's: {preview(task.input_fields)}")
    if labels and set(labels) != set(task.labels):
        raise _fail(f"{field}.labels", f"must match the task's: {preview(task.labels)}")
    if output_name not in ("", _PROMPT_DEFAULTS.output_name, task.output_name):
        raise _fail(f"{field}.output_name", f"must match the task's: {preview(task.output_name)}")
    return dataclasses.replace(
        prompt,
        instruction=prompt.instruction.strip(),
        input_fields=task.input_fields,
        labels=task.labels,
        output_name=task.output_name,
    )


def _check_names(names: tuple[str, ...], field: str, limits: Limits) -> None:
    check_count(names, field, limits.max_input_fields)
    for index, name in enumerate(names):
        check_name(name, f"{field}[{index}]", limits.max_name_chars)


def validate_model(model: ModelSpec, field: str, limits: Limits) -> None:
    """Bounds of every model spec field; where the spec may point is the resolver's business."""
    if model.endpoint:
        check_id(model.endpoint, f"{field}.endpoint", limits.max_name_chars)
    check_text(model.model, f"{field}.model", limits.max_model_chars)
    if _CONTROL.search(model.model):
        raise _fail(f"{field}.model", "must not contain control characters")
    check_text(model.base_url, f"{field}.base_url", limits.max_url_chars)
    if model.base_url:
        url = urllib.parse.urlparse(model.base_url)
        if url.scheme not in ("http", "https") or not url.netloc or _CONTROL.search(model.base_url):
            raise _fail(f"{field}.base_url", f"must be an http(s) URL: {preview(model.base_url)}")
    if model.kind is ModelKind.OPENAI_COMPATIBLE and not (model.endpoint or model.base_url):
        raise _fail(f"{field}.endpoint", "name an endpoint (or give base_url)")
    if model.api_key_env and (
        len(model.api_key_env) > limits.max_name_chars or not _ENV_NAME.fullmatch(model.api_key_env)
    ):
        raise _fail(f"{field}.api_key_env", "must be an environment variable name")
    _check_model_numbers(model, field, limits)


def _check_model_numbers(model: ModelSpec, field: str, limits: Limits) -> None:
    if not 0.0 <= model.temperature <= 2.0:
        raise _fail(f"{field}.temperature", "must be in [0, 2]")
    if not 1 <= model.max_tokens <= limits.max_tokens_per_call:
        raise _fail(f"{field}.max_tokens", f"must be in [1, {limits.max_tokens_per_call}]")
    if model.max_concurrency > limits.max_concurrency:
        raise _fail(f"{field}.max_concurrency", f"must be at most {limits.max_concurrency}")
    for price in ("usd_per_million_prompt_tokens", "usd_per_million_completion_tokens"):
        value = getattr(model, price)
        if not (math.isfinite(value) and 0.0 <= value < 1e6):
            raise _fail(f"{field}.{price}", "must be in [0, 1e6)")


# (field, upper bound) of the search settings; all must also be non-negative.
_SEARCH_BOUNDS = (
    ("num_instruction_candidates", 32),
    ("max_demos", 16),
    ("minibatch_size", 10_000),
    ("num_demo_sets", 32),
    ("num_finalists", 16),
    ("num_reflection_candidates", 16),
)


def validate_search(search: SearchSpec, limits: Limits) -> None:
    budget = search.budget
    if not 1 <= budget.max_trials <= limits.max_trials:
        raise _fail("search.budget.max_trials", f"must be in [1, {limits.max_trials}]")
    if not (math.isfinite(budget.max_wall_seconds) and budget.max_wall_seconds > 0):
        raise _fail("search.budget.max_wall_seconds", "must be positive")
    if not (math.isfinite(budget.max_cost_usd) and budget.max_cost_usd >= 0):
        raise _fail("search.budget.max_cost_usd", "must not be negative")
    for name, bound in _SEARCH_BOUNDS:
        if not 0 <= getattr(search, name) <= bound:
            raise _fail(f"search.{name}", f"must be in [0, {bound}]")
    if not 1 <= search.parallelism <= 16:
        raise _fail("search.parallelism", "must be between 1 and 16")
    # Helpers rebuild the candidate space from the primary's cached proposer answers.
    if search.parallelism > 1 and search.disable_cache:
        raise _fail(
            "search.parallelism", "above 1 needs the response cache (disable_cache must be false)"
        )
    if search.proposer is not None:
        validate_model(search.proposer, "search.proposer", limits)
    fraction = search.selection_fraction
    if fraction is not None and not (math.isfinite(fraction) and 0.0 <= fraction <= 0.9):
        raise _fail("search.selection_fraction", "must be in [0, 0.9]")
    if search.slice_tag:
        check_tag_name(search.slice_tag, "search.slice_tag")
    if search.objective is Objective.WORST_SLICE and not search.slice_tag:
        raise _fail("search.slice_tag", "is required for the worst_slice objective")


def check_scoring(task: TaskSpec, search: SearchSpec) -> None:
    """`search.scoring` is a known mode, and label probabilities are only asked for a
    label_choice task whose labels differ in their first words."""
    if not isinstance(search.scoring, Scoring):
        raise _fail("search.scoring", "is not a known scoring mode")
    if search.scoring is not Scoring.LABEL_PROBABILITIES:
        return
    if task.metric is not Metric.LABEL_CHOICE or not task.labels:
        raise _fail("search.scoring", "label_probabilities needs metric label_choice with labels")
    if not labels_distinguishable(task.labels):
        raise _fail(
            "search.scoring",
            "label_probabilities needs labels whose first words differ; use generation",
        )


def check_objective(search: SearchSpec, task: TaskSpec, splits: DatasetSplits) -> None:
    """The objective must be computable: label objectives need a label task, the worst
    slice a validation example carrying `slice_tag`."""
    if search.objective in (Objective.MACRO_F1, Objective.WORST_LABEL) and not task.labels:
        raise _fail("search.objective", f"{search.objective.value} needs a task with labels")
    if search.objective is Objective.WORST_SLICE and not any(
        search.slice_tag in example.tags for example in splits.validation
    ):
        raise _fail(
            "search.slice_tag",
            f"no validation example carries the tag {preview(search.slice_tag)}",
        )


def check_tag_name(name: str, field: str) -> None:
    if len(name) > MAX_TAG_CHARS or not _TAG_NAME.fullmatch(name):
        raise _fail(
            field, f"must be 1..{MAX_TAG_CHARS} of letters, digits and '_.-': {preview(name)}"
        )


def check_tags(tags: Mapping[str, str], field: str) -> None:
    """At most `MAX_TAGS` tags; names like ``dialect`` or ``region.v2``, short values."""
    check_count(tags, field, MAX_TAGS)
    for name, value in tags.items():
        check_tag_name(name, field)
        check_name(value, f"{field}.{name}", MAX_TAG_CHARS)


def _splits(dataset: Dataset, limits: Limits) -> DatasetSplits:
    """Explicit splits as given (missing ids filled in), or the pool cut by `dataset.split`."""
    if dataset.size == 0:
        raise _fail("dataset", "has no examples")
    if dataset.size > limits.max_examples:
        raise _fail("dataset", f"has {dataset.size} examples; the limit is {limits.max_examples}")
    if not dataset.examples:
        return DatasetSplits(
            train=_with_ids(dataset.train, "dataset.train"),
            validation=_with_ids(dataset.validation, "dataset.validation"),
            test=_with_ids(dataset.test, "dataset.test"),
        )
    ratio = dataset.split or SplitRatio()
    parts = (ratio.train, ratio.validation, ratio.test)
    if not all(0 <= part < 1 for part in parts):
        raise _fail("dataset.split", "fractions must be in [0, 1)")
    if abs(sum(parts) - 1.0) > 1e-6:
        raise _fail("dataset.split", "fractions must sum to 1")
    pooled = _with_ids(dataset.examples, "dataset.examples")
    return split_examples(pooled, ratio.train, ratio.validation, ratio.test, ratio.seed)


def _with_ids(examples: tuple[Example, ...], field: str) -> tuple[Example, ...]:
    return tuple(
        example
        if example.id
        else Example(example.inputs, example.output, f"{field}:{index}", example.tags)
        for index, example in enumerate(examples)
    )


def _check_examples(splits: DatasetSplits, task: TaskSpec, limits: Limits) -> None:
    for name in ("train", "validation", "test"):
        for index, example in enumerate(getattr(splits, name)):
            check_example(example, f"dataset.{name}[{index}]", limits)


def check_example(example: Example, field: str, limits: Limits) -> None:
    """Bounds of one example: its id, input names and texts, output and tags."""
    if example.id:
        check_id(example.id, f"{field}.id", limits.max_id_chars)
    check_count(example.inputs, f"{field}.inputs", limits.max_input_fields)
    for name, text in example.inputs.items():
        check_name(name, f"{field}.inputs", limits.max_name_chars)
        check_text(
            text, f"{field}.inputs.{name[: limits.max_name_chars]}", limits.max_chars_per_field
        )
    check_text(example.output, f"{field}.output", limits.max_chars_per_field)
    check_tags(example.tags, f"{field}.tags")


def validate_prompt(prompt: Prompt, limits: Limits, field: str = "prompt") -> None:
    """Bounds of a prompt given to EvaluatePrompt or RenderPrompt."""
    check_text(prompt.instruction, f"{field}.instruction", limits.max_chars_per_field)
    check_text(
        prompt.format.answer_prefix, f"{field}.format.answer_prefix", limits.max_answer_prefix_chars
    )
    _check_names(prompt.input_fields, f"{field}.input_fields", limits)
    check_name(prompt.output_name, f"{field}.output_name", limits.max_name_chars)
    check_count(prompt.labels, f"{field}.labels", limits.max_labels)
    for index, label in enumerate(prompt.labels):
        check_text(label, f"{field}.labels[{index}]", limits.max_label_chars)
    check_count(prompt.demos, f"{field}.demos", limits.max_demos)
    check_count(prompt.demo_pool, f"{field}.demo_pool", limits.max_knn_pool)
    if not 0 <= prompt.knn_k <= limits.max_knn_k:
        raise _fail(f"{field}.knn_k", f"must be in [0, {limits.max_knn_k}]")
    for index, demo in enumerate(prompt.demos):
        check_example(demo, f"{field}.demos[{index}]", limits)
    for index, demo in enumerate(prompt.demo_pool):
        check_example(demo, f"{field}.demo_pool[{index}]", limits)
    if prompt.calibration is not None:
        _check_calibration(prompt.calibration, f"{field}.calibration", limits)


# Content-free inputs a calibration may name (the engine uses 3).
_MAX_CONTENT_FREE_INPUTS = 8


def _check_calibration(calibration: Calibration, field: str, limits: Limits) -> None:
    """At most max_labels weights, each named like a label, in (0, MAX_CALIBRATION_WEIGHT]
    (the cap the engine itself applies, so products of probabilities stay finite)."""
    check_count(calibration.weights, f"{field}.weights", limits.max_labels)
    for label, weight in calibration.weights.items():
        check_text(label, f"{field}.weights", limits.max_label_chars)
        if not (math.isfinite(weight) and 0 < weight <= MAX_CALIBRATION_WEIGHT):
            raise _fail(f"{field}.weights", f"must be in (0, {MAX_CALIBRATION_WEIGHT:g}]")
    check_count(
        calibration.content_free_inputs, f"{field}.content_free_inputs", _MAX_CONTENT_FREE_INPUTS
    )
    for text in calibration.content_free_inputs:
        check_text(text, f"{field}.content_free_inputs", limits.max_label_chars)


def validate_inputs(inputs: Mapping[str, str], prompt: Prompt, limits: Limits) -> None:
    check_count(inputs, "inputs", limits.max_input_fields)
    missing = [name for name in prompt.input_fields if name not in inputs]
    if missing:
        raise _fail("inputs", f"missing input field(s) {preview(missing)}")
    for name, text in inputs.items():
        check_name(name, "inputs", limits.max_name_chars)
        check_text(text, f"inputs.{name}", limits.max_chars_per_field)


def validate_evaluation(request: EvaluationRequest, limits: Limits) -> EvaluationRequest:
    """The request with its task normalised and example ids filled in."""
    task = validate_task_spec(request.task, limits)
    validate_prompt(request.prompt, limits)
    validate_model(request.model, "model", limits)
    examples = _scored_examples(request.examples, task, limits, limits.max_examples)
    return dataclasses.replace(request, task=task, examples=examples)


def validate_comparison(request: ComparisonRequest, limits: Limits) -> ComparisonRequest:
    """The request with its task normalised and example ids filled in: the checks of
    EvaluatePrompt for each side, at most `Limits.max_compare_examples` examples."""
    task = validate_task_spec(request.task, limits)
    validate_prompt(request.a, limits, "a")
    validate_model(request.model_a, "model_a", limits)
    validate_prompt(request.b, limits, "b")
    validate_model(request.model_b, "model_b", limits)
    limit = min(limits.max_examples, limits.max_compare_examples)
    examples = _scored_examples(request.examples, task, limits, limit)
    return dataclasses.replace(request, task=task, examples=examples)


def _scored_examples(
    examples: tuple[Example, ...], task: TaskSpec, limits: Limits, limit: int
) -> tuple[Example, ...]:
    """1 to `limit` checked examples to score, with ids filled in."""
    if not examples:
        raise _fail("examples", "at least one example is required")
    if len(examples) > limit:
        raise _fail("examples", f"has {len(examples)} examples; the limit is {limit}")
    examples = _with_ids(examples, "examples")
    for index, example in enumerate(examples):
        check_example(example, f"examples[{index}]", limits)
    _engine_check(validate_splits, task, DatasetSplits(train=(), validation=examples))
    return examples
