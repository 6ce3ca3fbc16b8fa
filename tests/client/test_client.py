"""The real SDK against a real in-process gRPC server running a fake servicer."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

import grpc
import pytest

from prompttune.client import (
    AsyncClient,
    Budget,
    CancelledError,
    ChatMessage,
    Client,
    Dataset,
    DeadlineExceededError,
    Estimate,
    EvaluationProgress,
    Example,
    FailedPreconditionError,
    InstructionPlacement,
    InternalError,
    InvalidArgumentError,
    Job,
    JobEvent,
    JobFailedError,
    JobState,
    Metric,
    ModelSpec,
    NotFoundError,
    PermissionDeniedError,
    Prompt,
    PromptFormat,
    PromptTuneError,
    ResourceExhaustedError,
    RetryPolicy,
    SearchSpec,
    SplitRatio,
    TaskSpec,
    UnauthenticatedError,
    UnavailableError,
)
from prompttune.contract.wire import from_message, to_message
from prompttune.v1 import optimizer_pb2 as pb
from prompttune.v1 import optimizer_pb2_grpc

CREATED = datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
TASK = TaskSpec(
    description="Classify the sentiment of a movie review.",
    metric=Metric.LABEL_CHOICE,
    seed_instruction="Is this review positive or negative?",
    input_fields=("review",),
    labels=("positive", "negative"),
    output_name="sentiment",
)
MODEL = ModelSpec.openai_compatible(
    "http://127.0.0.1:8000/v1", "smollm2", api_key_env="KEY", max_tokens=8
)
SEARCH = SearchSpec(
    budget=Budget(max_trials=10, max_llm_calls=500, max_wall_seconds=60.5),
    max_demos=2,
    seed=7,
    proposer=ModelSpec.local(),
    disable_cache=True,
)
PROMPT = Prompt(
    instruction="Answer positive or negative.",
    demos=(Example({"review": "Loved it"}, "positive", id="d1"),),
    format=PromptFormat(InstructionPlacement.USER, answer_prefix="Sentiment:"),
    input_fields=("review",),
    output_name="sentiment",
    labels=("positive", "negative"),
)
EXAMPLES = [Example({"review": "Great"}, "positive", "e1"), Example({"review": "Bad"}, "negative")]


def _event(sequence: int, **payload: object) -> pb.JobEvent:
    message = pb.JobEvent(job_id="job-1", sequence=sequence, **payload)  # type: ignore[arg-type]
    message.time.FromDatetime(CREATED)
    return message


EVENTS = [
    _event(1, state_changed=pb.StateChanged(state=pb.JOB_STATE_RUNNING)),
    _event(2, phase_changed=pb.PhaseChanged(phase="searching")),
    _event(3, trial_finished=pb.TrialFinished(trial=0, score=0.5, examples=16, config="base")),
    _event(4, new_best=pb.NewBest(trial=0, score=0.5)),
    _event(5, budget_used=pb.BudgetUsed(usage=pb.Usage(llm_calls=16, cache_hits=2))),
    _event(6, state_changed=pb.StateChanged(state=pb.JOB_STATE_SUCCEEDED)),
]


@dataclass
class FakeOptimizer(optimizer_pb2_grpc.OptimizerServiceServicer):
    """Stores jobs in memory; knobs make it fail the way a real server can."""

    jobs: dict[str, pb.Job] = field(default_factory=dict)
    requests: list[object] = field(default_factory=list)
    metadata: list[tuple[str, str]] = field(default_factory=list)
    deadlines: list[float | None] = field(default_factory=list)
    # Next unary call aborts with (code, details, trailing metadata).
    abort_with: tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]] | None = None
    get_delay: float = 0.0
    # WatchJob: abort with UNAVAILABLE after this many events, for the first `breaks` calls.
    break_after: int = 0
    breaks: int = 0
    # WatchJob resends this many already-seen events after a resume.
    overlap: int = 0
    final_state: pb.JobState.ValueType = pb.JOB_STATE_SUCCEEDED
    watch_starts: list[int] = field(default_factory=list)
    # StreamEvaluation: seconds per example, and answering UNIMPLEMENTED like an older server.
    evaluation_delay: float = 0.0
    unimplemented_streaming: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _enter(self, request: object, context: grpc.ServicerContext) -> None:
        self.requests.append(request)
        self.metadata.extend((m.key, m.value) for m in context.invocation_metadata())
        self.deadlines.append(context.time_remaining())
        if self.abort_with is not None:
            code, details, trailing = self.abort_with
            self.abort_with = None
            context.set_trailing_metadata(trailing)
            context.abort(code, details)

    def _job(self, job_id: str, context: grpc.ServicerContext) -> pb.Job:
        if job_id not in self.jobs:
            context.abort(grpc.StatusCode.NOT_FOUND, f"job {job_id} not found")
        return self.jobs[job_id]

    def CreateJob(
        self, request: pb.CreateJobRequest, context: grpc.ServicerContext
    ) -> pb.CreateJobResponse:
        self._enter(request, context)
        estimate = pb.Estimate(llm_calls=120, tokens=9000)
        if request.dry_run:
            return pb.CreateJobResponse(estimate=estimate)
        job = pb.Job(
            id=f"job-{len(self.jobs) + 1}",
            state=pb.JOB_STATE_QUEUED,
            task=request.task,
            model=request.model,
            search=request.search,
            request_id=request.request_id,
        )
        job.create_time.FromDatetime(CREATED)
        job.update_time.FromDatetime(CREATED)
        self.jobs[job.id] = job
        return pb.CreateJobResponse(job=job, estimate=estimate)

    def GetJob(self, request: pb.GetJobRequest, context: grpc.ServicerContext) -> pb.Job:
        self._enter(request, context)
        time.sleep(self.get_delay)
        return self._job(request.job_id, context)

    def ListJobs(
        self, request: pb.ListJobsRequest, context: grpc.ServicerContext
    ) -> pb.ListJobsResponse:
        self._enter(request, context)
        jobs = [j for j in self.jobs.values() if request.state in (0, j.state)]
        start = int(request.page_token or 0)
        end = start + request.page_size
        token = str(end) if end < len(jobs) else ""
        return pb.ListJobsResponse(jobs=jobs[start:end], next_page_token=token)

    def CancelJob(self, request: pb.CancelJobRequest, context: grpc.ServicerContext) -> pb.Job:
        self._enter(request, context)
        job = self._job(request.job_id, context)
        job.state = pb.JOB_STATE_CANCELLED
        return job

    def WatchJob(
        self, request: pb.WatchJobRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.JobEvent]:
        job = self._job(request.job_id, context)
        with self.lock:
            self.watch_starts.append(request.after_sequence)
            breaking = self.breaks > 0
            self.breaks -= 1
        start = max(0, request.after_sequence - (self.overlap if len(self.watch_starts) > 1 else 0))
        for sent, event in enumerate(EVENTS[start:]):
            if breaking and sent == self.break_after:
                context.abort(grpc.StatusCode.UNAVAILABLE, "server restarting")
            yield event
        job.state = self.final_state
        if self.final_state == pb.JOB_STATE_SUCCEEDED:
            job.result.CopyFrom(_result())
        else:
            job.error = "model endpoint unreachable"

    def EvaluatePrompt(
        self, request: pb.EvaluatePromptRequest, context: grpc.ServicerContext
    ) -> pb.EvaluatePromptResponse:
        self._enter(request, context)
        results = [pb.ExampleResult(id=e.id, answer=e.output, score=1.0) for e in request.examples]
        results[-1].error = "timeout"
        return pb.EvaluatePromptResponse(
            score=pb.Score(mean=1.0, ci_low=0.8, ci_high=1.0, examples=1, failed=1),
            results=results,
            usage=pb.Usage(llm_calls=2),
        )

    def StreamEvaluation(
        self, request: pb.StreamEvaluationRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.StreamEvaluationResponse]:
        if self.unimplemented_streaming:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "StreamEvaluation")
        self._enter(request, context)
        total = len(request.evaluation.examples)
        for done in range(1, total + 1):
            time.sleep(self.evaluation_delay)
            yield pb.StreamEvaluationResponse(
                progress=pb.EvaluationProgress(done=done, total=total)
            )
        reply = self.EvaluatePrompt(request.evaluation, context)
        yield pb.StreamEvaluationResponse(result=reply)

    def DeleteJob(
        self, request: pb.DeleteJobRequest, context: grpc.ServicerContext
    ) -> pb.DeleteJobResponse:
        self._enter(request, context)
        job = self._job(request.job_id, context)
        if job.state in (pb.JOB_STATE_QUEUED, pb.JOB_STATE_RUNNING):
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "cancel the job first")
        del self.jobs[request.job_id]
        return pb.DeleteJobResponse()

    def RenderPrompt(
        self, request: pb.RenderPromptRequest, context: grpc.ServicerContext
    ) -> pb.RenderPromptResponse:
        self._enter(request, context)
        text = " ".join(f"{k}={v}" for k, v in sorted(request.inputs.items()))
        return pb.RenderPromptResponse(
            messages=[
                pb.ChatMessage(role="system", content=request.prompt.instruction),
                pb.ChatMessage(role="user", content=text),
            ]
        )


def _result() -> pb.JobResult:
    scores = pb.PromptScores(
        prompt=to_message(PROMPT),
        validation=pb.Score(mean=0.7, ci_low=0.6, ci_high=0.8, examples=50, per_label={"a": 1}),
        prompt_tokens=40,
    )
    best = pb.PromptScores()
    best.CopyFrom(scores)
    best.test.CopyFrom(pb.Score(mean=0.75, examples=50))
    return pb.JobResult(
        baseline=scores,
        best=best,
        improved=True,
        usage=pb.Usage(llm_calls=300),
        trials_completed=10,
        wall_seconds=12.5,
        stop_reason="max_trials",
        pareto=[best],
    )


@pytest.fixture
def fake() -> FakeOptimizer:
    return FakeOptimizer()


@pytest.fixture
def target(fake: FakeOptimizer) -> Iterator[str]:
    server = grpc.server(ThreadPoolExecutor(max_workers=8))
    optimizer_pb2_grpc.add_OptimizerServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=None)


@pytest.fixture
def client(target: str) -> Iterator[Client]:
    fast = RetryPolicy(max_retries=3, initial_backoff=0.01, max_backoff=0.05)
    with Client(target, metadata={"Authorization": "Bearer t0ken"}, retry=fast) as sdk:
        yield sdk


def _dataset() -> Dataset:
    return Dataset.from_splits(train=EXAMPLES, validation=EXAMPLES[:1])


def test_create_job_round_trips_specs_and_sends_dataset(
    client: Client, fake: FakeOptimizer
) -> None:
    job = client.create_job(TASK, _dataset(), MODEL, SEARCH, request_id="req-1")

    assert (job.task, job.model, job.search) == (TASK, MODEL, SEARCH)
    assert job.state is JobState.QUEUED and not job.done
    assert job.create_time == CREATED and job.request_id == "req-1"
    assert job.estimate == Estimate(llm_calls=120, tokens=9000)
    sent = fake.requests[0]
    assert isinstance(sent, pb.CreateJobRequest)
    assert dict(sent.dataset.train[0].inputs) == {"review": "Great"}
    assert [e.id for e in sent.dataset.train] == ["e1", ""]
    assert not sent.dataset.HasField("split")


def test_defaults_map_to_proto_zero_values_and_back(client: Client, fake: FakeOptimizer) -> None:
    task = TaskSpec("Answer the question.", Metric.EXACT_MATCH)
    dataset = Dataset.from_examples([Example("2+2?", "4")] * 4, SplitRatio(seed=3))

    job = client.create_job(task, dataset)

    assert job.task == task and job.model == ModelSpec() and job.search == SearchSpec()
    sent = fake.requests[0]
    assert isinstance(sent, pb.CreateJobRequest)
    assert not sent.HasField("model") and not sent.HasField("search")
    assert dict(sent.dataset.examples[0].inputs) == {"input": "2+2?"}
    assert (sent.dataset.split.train, sent.dataset.split.seed) == (0.5, 3)


def test_dry_run_returns_estimate_and_creates_nothing(client: Client, fake: FakeOptimizer) -> None:
    estimate = client.create_job(TASK, _dataset(), dry_run=True)

    assert estimate == Estimate(llm_calls=120, tokens=9000)
    assert fake.jobs == {}


def test_dataset_rejects_both_forms() -> None:
    with pytest.raises(ValueError):
        Dataset(train=tuple(EXAMPLES), examples=tuple(EXAMPLES))


def test_list_jobs_pages_and_filters(client: Client) -> None:
    ids = [client.create_job(TASK, _dataset()).id for _ in range(5)]
    client.cancel_job(ids[1])

    page = client.list_jobs(page_size=2)
    everything = [job.id for job in client.iter_jobs(page_size=2)]
    cancelled = client.list_jobs(state=JobState.CANCELLED)

    assert [job.id for job in page.jobs] == ids[:2] and page.next_page_token
    assert everything == ids
    assert [job.id for job in cancelled.jobs] == [ids[1]] and cancelled.next_page_token == ""


def test_cancel_job_returns_cancelled_job(client: Client) -> None:
    job = client.cancel_job(client.create_job(TASK, _dataset()).id)

    assert job.state is JobState.CANCELLED and job.done


def test_evaluate_prompt_round_trips_prompt_and_results(
    client: Client, fake: FakeOptimizer
) -> None:
    evaluation = client.evaluate_prompt(PROMPT, TASK, EXAMPLES, MODEL)

    sent = fake.requests[0]
    assert isinstance(sent, pb.StreamEvaluationRequest)
    assert from_message(Prompt, sent.evaluation.prompt) == PROMPT
    assert [r.id for r in evaluation.results] == ["e1", ""]
    assert [r.failed for r in evaluation.results] == [False, True]
    assert (evaluation.score.failed, evaluation.usage.llm_calls) == (1, 2)


def test_evaluate_prompt_streams_progress_without_an_overall_deadline(
    target: str, fake: FakeOptimizer
) -> None:
    fake.evaluation_delay = 0.15
    seen: list[EvaluationProgress] = []

    with Client(target, timeout=0.2) as sdk:
        evaluation = sdk.evaluate_prompt(PROMPT, TASK, EXAMPLES * 2, on_progress=seen.append)

    assert seen == [EvaluationProgress(done, 4) for done in range(1, 5)]
    assert len(evaluation.results) == 4
    no_deadline = fake.deadlines[0]  # the stream took 0.6 s under a 0.2 s unary timeout
    assert no_deadline is not None and no_deadline > 3600


def test_evaluate_prompt_falls_back_to_the_unary_call_on_an_older_server(
    client: Client, fake: FakeOptimizer
) -> None:
    fake.unimplemented_streaming = True

    evaluation = client.evaluate_prompt(PROMPT, TASK, EXAMPLES, MODEL)

    sent = fake.requests[0]
    assert isinstance(sent, pb.EvaluatePromptRequest)
    assert from_message(ModelSpec, sent.model) == MODEL
    assert [r.failed for r in evaluation.results] == [False, True]
    assert fake.deadlines[-1] is not None and fake.deadlines[-1] > 3600


def test_delete_job_removes_a_finished_job_only(client: Client) -> None:
    queued = client.create_job(TASK, _dataset())
    with pytest.raises(FailedPreconditionError):
        client.delete_job(queued.id)
    client.cancel_job(queued.id)

    client.delete_job(queued.id)

    with pytest.raises(NotFoundError):
        client.get_job(queued.id)
    with pytest.raises(NotFoundError):
        client.delete_job(queued.id)


def test_render_prompt_returns_chat_messages(client: Client) -> None:
    messages = client.render_prompt(PROMPT, {"review": "Fine film"})

    assert messages == (
        ChatMessage("system", "Answer positive or negative."),
        ChatMessage("user", "review=Fine film"),
    )
    assert client.render_prompt(PROMPT, "x")[1].content == "input=x"


def test_metadata_is_sent_with_every_call(client: Client, fake: FakeOptimizer) -> None:
    client.render_prompt(PROMPT, "x")

    assert ("authorization", "Bearer t0ken") in fake.metadata


@pytest.mark.parametrize(
    ("code", "error_type"),
    [
        (grpc.StatusCode.NOT_FOUND, NotFoundError),
        (grpc.StatusCode.FAILED_PRECONDITION, FailedPreconditionError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhaustedError),
        (grpc.StatusCode.UNAVAILABLE, UnavailableError),
        (grpc.StatusCode.UNAUTHENTICATED, UnauthenticatedError),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDeniedError),
        (grpc.StatusCode.INTERNAL, InternalError),
        (grpc.StatusCode.CANCELLED, CancelledError),
        (grpc.StatusCode.UNIMPLEMENTED, PromptTuneError),
    ],
)
def test_status_codes_map_to_exceptions(
    client: Client, fake: FakeOptimizer, code: grpc.StatusCode, error_type: type[Exception]
) -> None:
    fake.abort_with = (code, "it went wrong", ())

    with pytest.raises(error_type) as caught:
        client.get_job("job-1")

    assert type(caught.value) is error_type
    assert (caught.value.code, caught.value.details) == (code.name, "it went wrong")
    assert not isinstance(caught.value, grpc.RpcError)


def test_invalid_argument_carries_field(client: Client, fake: FakeOptimizer) -> None:
    field_path = "dataset.train[0].output"
    fake.abort_with = (
        grpc.StatusCode.INVALID_ARGUMENT,
        f"{field_path}: must be one of the labels",
        (("prompttune-field", field_path),),
    )

    with pytest.raises(InvalidArgumentError) as caught:
        client.create_job(TASK, _dataset())

    assert caught.value.field == field_path
    assert caught.value.details == "must be one of the labels"
    assert caught.value.code == "INVALID_ARGUMENT"


def test_invalid_argument_field_parsed_from_details_alone(
    client: Client, fake: FakeOptimizer
) -> None:
    fake.abort_with = (grpc.StatusCode.INVALID_ARGUMENT, "task.labels: required", ())

    with pytest.raises(InvalidArgumentError) as caught:
        client.create_job(TASK, _dataset())

    assert (caught.value.field, caught.value.details) == ("task.labels", "required")


def test_unknown_job_is_not_found(client: Client) -> None:
    with pytest.raises(NotFoundError):
        client.get_job("nope")
    with pytest.raises(NotFoundError):
        list(client.watch_job("nope"))


def test_default_deadline_applies_to_unary_calls(target: str, fake: FakeOptimizer) -> None:
    fake.jobs["job-1"] = pb.Job(id="job-1")
    with Client(target) as sdk:
        sdk.get_job("job-1")
    fake.get_delay = 1.0

    with Client(target, timeout=0.2) as sdk, pytest.raises(DeadlineExceededError):
        sdk.get_job("job-1")

    default, short = fake.deadlines
    assert default is not None and 29.0 < default <= 30.1
    assert short is not None and short <= 0.25


def test_watch_job_yields_typed_events(client: Client) -> None:
    job = client.create_job(TASK, _dataset())

    events = list(client.watch_job(job.id))

    assert [e.kind for e in events] == [
        "state_changed",
        "phase_changed",
        "trial_finished",
        "new_best",
        "budget_used",
        "state_changed",
    ]
    first, trial, budget = events[0], events[2], events[4]
    assert first.state_changed is not None and first.state_changed.state is JobState.RUNNING
    assert first.phase_changed is None and first.time == CREATED
    assert trial.trial_finished is not None and trial.trial_finished.examples == 16
    assert budget.budget_used is not None and budget.budget_used.usage.cache_hits == 2


def test_watch_job_resumes_after_unavailable_without_gaps_or_repeats(
    client: Client, fake: FakeOptimizer
) -> None:
    job = client.create_job(TASK, _dataset())
    fake.break_after, fake.breaks, fake.overlap = 2, 2, 1

    sequences = [event.sequence for event in client.watch_job(job.id)]

    assert sequences == [1, 2, 3, 4, 5, 6]
    assert fake.watch_starts == [0, 2, 3]


def test_watch_job_starts_after_given_sequence(client: Client, fake: FakeOptimizer) -> None:
    job = client.create_job(TASK, _dataset())

    assert [e.sequence for e in client.watch_job(job.id, after_sequence=4)] == [5, 6]
    assert fake.watch_starts == [4]


def test_watch_job_gives_up_after_bounded_retries(client: Client, fake: FakeOptimizer) -> None:
    job = client.create_job(TASK, _dataset())
    fake.break_after, fake.breaks = 0, 100

    with pytest.raises(UnavailableError):
        list(client.watch_job(job.id))

    assert fake.watch_starts == [0, 0, 0, 0]  # first attempt + max_retries=3


def test_optimize_returns_finished_job_and_reports_events(
    client: Client, fake: FakeOptimizer
) -> None:
    fake.break_after, fake.breaks = 3, 1
    seen: list[JobEvent] = []

    job = client.optimize(TASK, _dataset(), MODEL, SEARCH, on_event=seen.append)

    assert job.state is JobState.SUCCEEDED and job.done
    assert [e.sequence for e in seen] == [1, 2, 3, 4, 5, 6]
    assert job.result is not None and job.result.improved
    assert job.result.best.prompt == PROMPT
    assert job.result.best.test is not None and job.result.baseline.test is None
    assert job.result.best.validation.per_label == {"a": 1.0}
    assert len(job.result.pareto) == 1 and job.result.stop_reason == "max_trials"


def test_optimize_raises_job_failed(client: Client, fake: FakeOptimizer) -> None:
    fake.final_state = pb.JOB_STATE_FAILED

    with pytest.raises(JobFailedError) as caught:
        client.optimize(TASK, _dataset())

    assert caught.value.job.state is JobState.FAILED
    assert caught.value.details == "model endpoint unreachable"
    assert caught.value.code == "JOB_FAILED"


def test_async_client_streams_evaluations_falls_back_and_deletes(
    target: str, fake: FakeOptimizer
) -> None:
    seen: list[EvaluationProgress] = []

    async def scenario() -> tuple[int, int]:
        async with AsyncClient(target, timeout=5) as sdk:
            streamed = await sdk.evaluate_prompt(PROMPT, TASK, EXAMPLES, on_progress=seen.append)
            fake.unimplemented_streaming = True
            unary = await sdk.evaluate_prompt(PROMPT, TASK, EXAMPLES, MODEL)
            job = await sdk.create_job(TASK, _dataset())
            assert isinstance(job, Job)
            await sdk.cancel_job(job.id)
            await sdk.delete_job(job.id)
            with pytest.raises(NotFoundError):
                await sdk.get_job(job.id)
            return len(streamed.results), len(unary.results)

    assert asyncio.run(scenario()) == (2, 2)
    assert seen == [EvaluationProgress(1, 2), EvaluationProgress(2, 2)]


class StuckChannel:
    """A channel whose close never returns, as grpc's does when a Ctrl-C abandoned a
    blocking call at the wrong moment (its close then waits for a completion nobody
    collects; seen in the CLI's second-Ctrl-C path)."""

    def __init__(self) -> None:
        self.closing = threading.Event()

    def close(self) -> None:
        self.closing.set()
        threading.Event().wait()


def test_close_returns_within_its_bound_when_the_channel_close_hangs(target: str) -> None:
    sdk = Client(target)
    real, stuck = sdk._channel, StuckChannel()
    sdk._channel = stuck  # type: ignore[assignment]
    sdk.close_timeout_seconds = 0.5
    started = time.monotonic()
    sdk.close()
    assert stuck.closing.is_set() and time.monotonic() - started < 2.0
    real.close()
