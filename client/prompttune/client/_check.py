"""The regression gate: a stored prompt on a new model (or new data) against a reference,
judged by a paired comparison. Shared by the sync and async clients and the CLI."""

from __future__ import annotations

from dataclasses import dataclass

from prompttune.contract import Comparison, Job, Metric, ModelSpec, Prompt, TaskSpec

WORSE = "b_worse"


@dataclass(frozen=True)
class Contender:
    """One side of a comparison: a prompt on a model. ``source`` says where it came from (a
    job id or a file), for reports."""

    prompt: Prompt
    model: ModelSpec
    source: str = ""

    @classmethod
    def of_job(cls, job: Job) -> Contender:
        """The job's best prompt on the job's model. Raises ValueError without a result."""
        if job.result is None:
            raise ValueError(f"job {job.id} has no result ({job.state.value})")
        return cls(job.result.best.prompt, job.model, job.id)


@dataclass(frozen=True)
class CheckVerdict:
    """`candidate` (b) scored against `baseline` (a) on the same examples. It passes unless the
    candidate is worse beyond noise: the 95% interval of b - a lies below 0."""

    task: TaskSpec
    baseline: Contender
    candidate: Contender
    comparison: Comparison

    @property
    def passed(self) -> bool:
        return self.comparison.comparison.verdict != WORSE


def task_for_prompt(prompt: Prompt) -> TaskSpec:
    """The task a prompt file implies when no task is given: its labels scored by label
    choice, anything else by exact match of the normalised answer."""
    metric = Metric.LABEL_CHOICE if prompt.labels else Metric.EXACT_MATCH
    return TaskSpec(
        description=prompt.instruction.strip() or f"Give the {prompt.output_name}.",
        metric=metric,
        input_fields=prompt.input_fields,
        labels=prompt.labels,
        output_name=prompt.output_name,
    )


def reference(
    prompt: Prompt, against: Job | Contender | None, task: TaskSpec | None
) -> tuple[Contender, TaskSpec]:
    """The baseline of a check and its task. `against` None is `prompt` on the default model
    (`ModelSpec()`); a job is its best prompt on its model. `task` None is the job's task,
    else the task `prompt` implies."""
    if isinstance(against, Job):
        return Contender.of_job(against), task or against.task
    baseline = against or Contender(prompt, ModelSpec())
    return baseline, task or task_for_prompt(prompt)
