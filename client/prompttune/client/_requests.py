"""Requests and replies of OptimizerService, built from and read into contract types.

The sync and async clients share these functions, so each RPC's conversion is written once;
every field goes through `prompttune.contract.wire`, the one codec.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from prompttune.contract import (
    ChatMessage,
    Comparison,
    Dataset,
    Estimate,
    Evaluation,
    EvaluationProgress,
    Example,
    Job,
    JobDataset,
    JobEvent,
    JobPage,
    JobState,
    ModelSpec,
    Prompt,
    Scoring,
    SearchSpec,
    TaskSpec,
)
from prompttune.contract.wire import from_message, to_message
from prompttune.v1 import optimizer_pb2 as pb

ProgressHandler = Callable[[EvaluationProgress], None]


def create_job(
    task: TaskSpec | None,
    dataset: Dataset | None,
    model: ModelSpec | None,
    search: SearchSpec | None,
    request_id: str | None,
    dry_run: bool,
    options: JobOptions | None = None,
) -> pb.CreateJobRequest:
    """``model`` and ``search`` None are left unset: the server reads them as `ModelSpec()`
    and `SearchSpec()`, the contract's defaults. ``task`` and ``dataset`` None are left
    unset too: only a template job may do that (they are then the template's)."""
    options = options or JobOptions()
    return pb.CreateJobRequest(
        task=None if task is None else to_message(task),
        dataset=None if dataset is None else to_message(dataset),
        model=None if model is None else to_message(model),
        search=None if search is None else to_message(search),
        request_id=request_id or "",
        dry_run=dry_run,
        models=[to_message(extra) for extra in options.models],
        template_job_id=options.template_job_id,
    )


@dataclass(frozen=True)
class JobOptions:
    """CreateJob's further target models and template job."""

    models: tuple[ModelSpec, ...] = ()
    template_job_id: str = ""


def job_options(models: Iterable[ModelSpec], template_job_id: str) -> JobOptions:
    return JobOptions(tuple(models), template_job_id)


def created(response: pb.CreateJobResponse, dry_run: bool) -> Job | Estimate:
    """The job a CreateJob reply carries, or its estimate for a dry run."""
    if dry_run or not response.HasField("job"):
        return from_message(Estimate, response.estimate, "estimate")
    if not response.job.HasField("estimate") and response.HasField("estimate"):
        response.job.estimate.CopyFrom(response.estimate)
    return job(response.job)


def job(message: pb.Job) -> Job:
    return from_message(Job, message)


def job_page(message: pb.ListJobsResponse) -> JobPage:
    return from_message(JobPage, message)


def event(message: pb.JobEvent) -> JobEvent:
    return from_message(JobEvent, message)


def list_jobs(state: JobState | None, page_size: int, page_token: str) -> pb.ListJobsRequest:
    number = pb.JobState.Value(f"JOB_STATE_{(state or JobState.UNSPECIFIED).name}")
    return pb.ListJobsRequest(page_size=page_size, page_token=page_token, state=number)


def evaluate(
    prompt: Prompt, task: TaskSpec, examples: Iterable[Example], model: ModelSpec | None
) -> pb.StreamEvaluationRequest:
    evaluation = pb.EvaluatePromptRequest(
        prompt=to_message(prompt),
        task=to_message(task),
        examples=[to_message(example) for example in examples],
        model=None if model is None else to_message(model),
    )
    return pb.StreamEvaluationRequest(evaluation=evaluation)


def evaluation_update(
    message: pb.StreamEvaluationResponse, on_progress: ProgressHandler | None
) -> Evaluation | None:
    """The final evaluation, or None after passing a progress message to `on_progress`."""
    if message.HasField("result"):
        return evaluation(message.result)
    if message.HasField("progress") and on_progress is not None:
        on_progress(from_message(EvaluationProgress, message.progress, "progress"))
    return None


def evaluation(message: pb.EvaluatePromptResponse) -> Evaluation:
    return from_message(Evaluation, message, "result")


def render(prompt: Prompt, inputs: Mapping[str, str] | str) -> pb.RenderPromptRequest:
    fields = {"input": inputs} if isinstance(inputs, str) else dict(inputs)
    return pb.RenderPromptRequest(prompt=to_message(prompt), inputs=fields)


def messages(response: pb.RenderPromptResponse) -> tuple[ChatMessage, ...]:
    return tuple(from_message(ChatMessage, message) for message in response.messages)


def compare(
    task: TaskSpec,
    examples: Iterable[Example],
    a: tuple[Prompt, ModelSpec | None],
    b: tuple[Prompt, ModelSpec | None],
    seed: int,
    scoring: Scoring = Scoring.AUTO,
) -> pb.ComparePromptsRequest:
    """A model None is left unset: the server reads it as `ModelSpec()`."""
    return pb.ComparePromptsRequest(
        task=to_message(task),
        examples=[to_message(example) for example in examples],
        a=to_message(a[0]),
        model_a=None if a[1] is None else to_message(a[1]),
        b=to_message(b[0]),
        model_b=None if b[1] is None else to_message(b[1]),
        seed=seed,
        scoring=pb.Scoring.Value(f"SCORING_{scoring.name}"),
    )


def comparison(message: pb.ComparePromptsResponse) -> Comparison:
    return from_message(Comparison, message)


def job_dataset(message: pb.JobDataset) -> JobDataset:
    return from_message(JobDataset, message)
