"""Conversion between the SDK dataclasses and prompttune.v1 protobuf messages.

Only the directions the client needs exist: request inputs go to protobuf, replies come back.
Proto3 zero values that mean "server default" map to ``None`` and back.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TypeVar

from google.protobuf import timestamp_pb2

from prompttune.client import _types as t
from prompttune.v1 import optimizer_pb2 as pb

_N = TypeVar("_N", int, float)
_K = TypeVar("_K")
_V = TypeVar("_V")

_METRIC = {
    t.Metric.EXACT_MATCH: pb.METRIC_EXACT_MATCH,
    t.Metric.LABEL_CHOICE: pb.METRIC_LABEL_CHOICE,
    t.Metric.CONTAINS: pb.METRIC_CONTAINS,
    t.Metric.NUMERIC: pb.METRIC_NUMERIC,
    t.Metric.TOKEN_F1: pb.METRIC_TOKEN_F1,
    t.Metric.LLM_JUDGE: pb.METRIC_LLM_JUDGE,
    t.Metric.EMBEDDING_SIMILARITY: pb.METRIC_EMBEDDING_SIMILARITY,
}
_MODEL_KIND = {
    t.ModelKind.LOCAL: pb.MODEL_KIND_LOCAL,
    t.ModelKind.OPENAI_COMPATIBLE: pb.MODEL_KIND_OPENAI_COMPATIBLE,
}
_PLACEMENT = {
    t.InstructionPlacement.SYSTEM: pb.INSTRUCTION_PLACEMENT_SYSTEM,
    t.InstructionPlacement.USER: pb.INSTRUCTION_PLACEMENT_USER,
}
_LAYOUT = {
    t.DemoLayout.CHAT_TURNS: pb.DEMO_LAYOUT_CHAT_TURNS,
    t.DemoLayout.INLINE: pb.DEMO_LAYOUT_INLINE,
}
_JOB_STATE = {
    t.JobState.UNSPECIFIED: pb.JOB_STATE_UNSPECIFIED,
    t.JobState.QUEUED: pb.JOB_STATE_QUEUED,
    t.JobState.RUNNING: pb.JOB_STATE_RUNNING,
    t.JobState.SUCCEEDED: pb.JOB_STATE_SUCCEEDED,
    t.JobState.FAILED: pb.JOB_STATE_FAILED,
    t.JobState.CANCELLED: pb.JOB_STATE_CANCELLED,
}


def _inverse(table: dict[_K, _V]) -> dict[_V, _K]:
    return {value: key for key, value in table.items()}


_METRIC_FROM = _inverse(_METRIC)
_MODEL_KIND_FROM = _inverse(_MODEL_KIND)
_PLACEMENT_FROM = _inverse(_PLACEMENT)
_LAYOUT_FROM = _inverse(_LAYOUT)
_JOB_STATE_FROM = _inverse(_JOB_STATE)


def _or_none(value: _N) -> _N | None:
    return value or None


def _or_zero(value: _N | None) -> _N | int:
    return 0 if value is None else value


def _time(ts: timestamp_pb2.Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


# ---- to protobuf -------------------------------------------------------------------------


def example_to_proto(example: t.Example) -> pb.Example:
    return pb.Example(id=example.id, inputs=dict(example.inputs), output=example.output)


def _examples_to_proto(examples: Iterable[t.Example]) -> list[pb.Example]:
    return [example_to_proto(example) for example in examples]


def task_to_proto(task: t.TaskSpec) -> pb.TaskSpec:
    return pb.TaskSpec(
        description=task.description,
        seed_instruction=task.seed_instruction or "",
        input_fields=task.input_fields,
        labels=task.labels,
        metric=_METRIC[task.metric],
        output_name=task.output_name or "",
        rubric=task.rubric,
        judge=None if task.judge is None else model_to_proto(task.judge),
    )


def dataset_to_proto(dataset: t.Dataset) -> pb.Dataset:
    message = pb.Dataset(
        train=_examples_to_proto(dataset.train),
        validation=_examples_to_proto(dataset.validation),
        test=_examples_to_proto(dataset.test),
        examples=_examples_to_proto(dataset.examples),
    )
    if dataset.split is not None:
        split = dataset.split
        message.split.CopyFrom(
            pb.SplitRatio(
                train=split.train, validation=split.validation, test=split.test, seed=split.seed
            )
        )
    return message


def model_to_proto(model: t.ModelSpec) -> pb.ModelSpec:
    return pb.ModelSpec(
        kind=_MODEL_KIND[model.kind],
        base_url=model.base_url,
        model=model.model,
        api_key_env=model.api_key_env,
        temperature=model.temperature,
        max_tokens=_or_zero(model.max_tokens),
        max_concurrency=_or_zero(model.max_concurrency),
        requests_per_minute=_or_zero(model.requests_per_minute),
        tokens_per_minute=_or_zero(model.tokens_per_minute),
        usd_per_million_prompt_tokens=model.usd_per_million_prompt_tokens,
        usd_per_million_completion_tokens=model.usd_per_million_completion_tokens,
    )


def _budget_to_proto(budget: t.Budget) -> pb.Budget:
    return pb.Budget(
        max_trials=_or_zero(budget.max_trials),
        max_llm_calls=_or_zero(budget.max_llm_calls),
        max_wall_seconds=_or_zero(budget.max_wall_seconds),
        max_tokens=_or_zero(budget.max_tokens),
        max_cost_usd=_or_zero(budget.max_cost_usd),
    )


def search_to_proto(search: t.SearchSpec) -> pb.SearchSpec:
    return pb.SearchSpec(
        budget=_budget_to_proto(search.budget),
        # Optional on the wire: None means "server default", 0 means "none".
        num_instruction_candidates=search.num_instruction_candidates,
        max_demos=search.max_demos,
        minibatch_size=_or_zero(search.minibatch_size),
        seed=search.seed,
        num_demo_sets=_or_zero(search.num_demo_sets),
        num_finalists=_or_zero(search.num_finalists),
        proposer=None if search.proposer is None else model_to_proto(search.proposer),
        disable_cache=search.disable_cache,
        allow_reasoning=search.allow_reasoning,
        multi_objective=search.multi_objective,
        num_reflection_candidates=search.num_reflection_candidates,
        parallelism=search.parallelism,
    )


def prompt_to_proto(prompt: t.Prompt) -> pb.Prompt:
    fmt = prompt.format
    return pb.Prompt(
        instruction=prompt.instruction,
        demos=_examples_to_proto(prompt.demos),
        format=pb.PromptFormat(
            instruction_placement=_PLACEMENT[fmt.instruction_placement],
            demo_layout=_LAYOUT[fmt.demo_layout],
            answer_prefix=fmt.answer_prefix,
            reasoning=fmt.reasoning,
        ),
        input_fields=prompt.input_fields,
        output_name=prompt.output_name,
        labels=prompt.labels,
        demo_pool=_examples_to_proto(prompt.demo_pool),
        knn_k=prompt.knn_k,
    )


def job_state_to_proto(state: t.JobState | None) -> pb.JobState.ValueType:
    return pb.JOB_STATE_UNSPECIFIED if state is None else _JOB_STATE[state]


# ---- from protobuf -----------------------------------------------------------------------


def example_from_proto(message: pb.Example) -> t.Example:
    return t.Example(dict(message.inputs), message.output, message.id)


def task_from_proto(message: pb.TaskSpec) -> t.TaskSpec:
    return t.TaskSpec(
        description=message.description,
        metric=_METRIC_FROM.get(message.metric, t.Metric.EXACT_MATCH),
        seed_instruction=message.seed_instruction or None,
        input_fields=tuple(message.input_fields),
        labels=tuple(message.labels),
        output_name=message.output_name or None,
        rubric=message.rubric,
        judge=model_from_proto(message.judge) if message.HasField("judge") else None,
    )


def model_from_proto(message: pb.ModelSpec) -> t.ModelSpec:
    return t.ModelSpec(
        kind=_MODEL_KIND_FROM.get(message.kind, t.ModelKind.LOCAL),
        base_url=message.base_url,
        model=message.model,
        api_key_env=message.api_key_env,
        temperature=message.temperature,
        max_tokens=_or_none(message.max_tokens),
        max_concurrency=_or_none(message.max_concurrency),
        requests_per_minute=_or_none(message.requests_per_minute),
        tokens_per_minute=_or_none(message.tokens_per_minute),
        usd_per_million_prompt_tokens=message.usd_per_million_prompt_tokens,
        usd_per_million_completion_tokens=message.usd_per_million_completion_tokens,
    )


def _budget_from_proto(message: pb.Budget) -> t.Budget:
    return t.Budget(
        max_trials=_or_none(message.max_trials),
        max_llm_calls=_or_none(message.max_llm_calls),
        max_wall_seconds=_or_none(message.max_wall_seconds),
        max_tokens=_or_none(message.max_tokens),
        max_cost_usd=_or_none(message.max_cost_usd),
    )


def search_from_proto(message: pb.SearchSpec) -> t.SearchSpec:
    return t.SearchSpec(
        budget=_budget_from_proto(message.budget),
        num_instruction_candidates=(
            message.num_instruction_candidates
            if message.HasField("num_instruction_candidates")
            else None
        ),
        max_demos=message.max_demos if message.HasField("max_demos") else None,
        minibatch_size=_or_none(message.minibatch_size),
        seed=message.seed,
        num_demo_sets=_or_none(message.num_demo_sets),
        num_finalists=_or_none(message.num_finalists),
        proposer=model_from_proto(message.proposer) if message.HasField("proposer") else None,
        disable_cache=message.disable_cache,
        allow_reasoning=(message.allow_reasoning if message.HasField("allow_reasoning") else None),
        multi_objective=message.multi_objective,
        num_reflection_candidates=(
            message.num_reflection_candidates
            if message.HasField("num_reflection_candidates")
            else None
        ),
        parallelism=message.parallelism if message.HasField("parallelism") else None,
    )


def prompt_from_proto(message: pb.Prompt) -> t.Prompt:
    fmt = message.format
    return t.Prompt(
        instruction=message.instruction,
        demos=tuple(example_from_proto(demo) for demo in message.demos),
        format=t.PromptFormat(
            instruction_placement=_PLACEMENT_FROM.get(
                fmt.instruction_placement, t.InstructionPlacement.SYSTEM
            ),
            demo_layout=_LAYOUT_FROM.get(fmt.demo_layout, t.DemoLayout.CHAT_TURNS),
            answer_prefix=fmt.answer_prefix,
            reasoning=fmt.reasoning,
        ),
        input_fields=tuple(message.input_fields),
        output_name=message.output_name,
        labels=tuple(message.labels),
        demo_pool=tuple(example_from_proto(demo) for demo in message.demo_pool),
        knn_k=message.knn_k,
    )


def score_from_proto(message: pb.Score) -> t.Score:
    return t.Score(
        mean=message.mean,
        ci_low=message.ci_low,
        ci_high=message.ci_high,
        examples=message.examples,
        failed=message.failed,
        per_label=dict(message.per_label),
    )


def _prompt_scores_from_proto(message: pb.PromptScores) -> t.PromptScores:
    return t.PromptScores(
        prompt=prompt_from_proto(message.prompt),
        validation=score_from_proto(message.validation),
        test=score_from_proto(message.test) if message.HasField("test") else None,
        prompt_tokens=message.prompt_tokens,
    )


def usage_from_proto(message: pb.Usage) -> t.Usage:
    return t.Usage(
        llm_calls=message.llm_calls,
        prompt_tokens=message.prompt_tokens,
        completion_tokens=message.completion_tokens,
        cache_hits=message.cache_hits,
        cache_misses=message.cache_misses,
        failed_calls=message.failed_calls,
        cost_usd=message.cost_usd,
    )


def _result_from_proto(message: pb.JobResult) -> t.JobResult:
    return t.JobResult(
        baseline=_prompt_scores_from_proto(message.baseline),
        best=_prompt_scores_from_proto(message.best),
        improved=message.improved,
        summary=message.summary,
        usage=usage_from_proto(message.usage),
        trials_completed=message.trials_completed,
        trials_pruned=message.trials_pruned,
        wall_seconds=message.wall_seconds,
        stop_reason=message.stop_reason,
        pareto=tuple(_prompt_scores_from_proto(point) for point in message.pareto),
        usage_by_role={role: usage_from_proto(u) for role, u in message.usage_by_role.items()},
    )


def estimate_from_proto(message: pb.Estimate) -> t.Estimate:
    return t.Estimate(llm_calls=message.llm_calls, tokens=message.tokens)


def job_state_from_proto(value: pb.JobState.ValueType) -> t.JobState:
    return _JOB_STATE_FROM.get(value, t.JobState.UNSPECIFIED)


def job_from_proto(message: pb.Job) -> t.Job:
    progress = message.progress
    return t.Job(
        id=message.id,
        state=job_state_from_proto(message.state),
        create_time=_time(message.create_time),
        update_time=_time(message.update_time),
        task=task_from_proto(message.task),
        model=model_from_proto(message.model),
        search=search_from_proto(message.search),
        progress=t.Progress(
            phase=progress.phase,
            trials_completed=progress.trials_completed,
            best_score=progress.best_score,
            usage=usage_from_proto(progress.usage),
        ),
        result=_result_from_proto(message.result) if message.HasField("result") else None,
        error=message.error,
        estimate=estimate_from_proto(message.estimate) if message.HasField("estimate") else None,
        request_id=message.request_id,
    )


def job_page_from_proto(message: pb.ListJobsResponse) -> t.JobPage:
    return t.JobPage(
        jobs=tuple(job_from_proto(job) for job in message.jobs),
        next_page_token=message.next_page_token,
    )


def event_from_proto(message: pb.JobEvent) -> t.JobEvent:
    kind = message.WhichOneof("kind")
    state, trial = message.state_changed, message.trial_finished
    return t.JobEvent(
        job_id=message.job_id,
        sequence=message.sequence,
        time=_time(message.time),
        kind=kind or "unknown",
        state_changed=t.StateChanged(job_state_from_proto(state.state), state.error)
        if kind == "state_changed"
        else None,
        phase_changed=t.PhaseChanged(message.phase_changed.phase)
        if kind == "phase_changed"
        else None,
        trial_finished=t.TrialFinished(
            trial.trial, trial.score, trial.examples, trial.pruned, trial.config
        )
        if kind == "trial_finished"
        else None,
        new_best=t.NewBest(message.new_best.trial, message.new_best.score)
        if kind == "new_best"
        else None,
        budget_used=t.BudgetUsed(usage_from_proto(message.budget_used.usage))
        if kind == "budget_used"
        else None,
    )


def evaluation_from_proto(message: pb.EvaluatePromptResponse) -> t.Evaluation:
    return t.Evaluation(
        score=score_from_proto(message.score),
        results=tuple(
            t.ExampleResult(id=r.id, answer=r.answer, score=r.score, error=r.error)
            for r in message.results
        ),
        usage=usage_from_proto(message.usage),
    )


def chat_messages_from_proto(message: pb.RenderPromptResponse) -> list[t.ChatMessage]:
    return [t.ChatMessage(role=m.role, content=m.content) for m in message.messages]
