"""The service on contract types, through raw gRPC stubs against a real in-process server:
requests decoded once, datasets never read by job queries, idempotency, DeleteJob,
StreamEvaluation, hostile ids and tokens, and workers that never lose a thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import optuna
import pytest
import sqlalchemy as sa
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tests.fakes import FakeEmbedder, FakeResolver, sentiment_examples
from tests.server.conftest import CALLER_ENDPOINTS, FakeModels

from prompttune.contract import (
    Budget,
    Dataset,
    Example,
    Job,
    JobResult,
    JobSpec,
    JobState,
    Metric,
    ModelSpec,
    Prompt,
    PromptScores,
    Score,
    SearchSpec,
    TaskSpec,
    Usage,
    wire,
)
from prompttune.search import SearchCancelled, SearchFailed
from prompttune.server import Adapters, EmbeddedServer, ServerConfig, WorkerConfig
from prompttune.server._validate import decode
from prompttune.server._worker import JobExecutor
from prompttune.v1 import optimizer_pb2 as pb
from prompttune.v1 import optimizer_pb2_grpc as pb_grpc

MODEL = ModelSpec.openai_compatible("http://fake.invalid/v1", "fake-model")
TASK = TaskSpec(
    description="Decide whether a movie review sentence is positive or negative.",
    metric=Metric.LABEL_CHOICE,
    seed_instruction="Read the text and classify it.",
    labels=("positive", "negative"),
    output_name="sentiment",
)
SEARCH = SearchSpec(
    budget=Budget(max_trials=4, max_llm_calls=2000),
    num_instruction_candidates=1,
    max_demos=2,
    minibatch_size=8,
    seed=3,
)


def spec(request_id: str = "", size: int = 8) -> JobSpec:
    dataset = Dataset.from_splits(
        sentiment_examples(size, "train"),
        sentiment_examples(size, "val"),
        sentiment_examples(size // 2, "test"),
    )
    return JobSpec(TASK, dataset, MODEL, SEARCH, request_id)


def create_request(job: JobSpec) -> pb.CreateJobRequest:
    request = pb.CreateJobRequest()
    wire.fill(request, job)
    return request


class CountingDecoder:
    """The real decoder, counting the contract types it decoded."""

    def __init__(self) -> None:
        self.decoded: list[type] = []
        self._lock = threading.Lock()

    def __call__(self, cls: type[Any], message: Any, path: str = "") -> Any:
        with self._lock:
            self.decoded.append(cls)
        return decode(cls, message, path)


def serve(tmp_path: Path, workers: int, decoder: Any = decode, db_url: str = "") -> EmbeddedServer:
    config = ServerConfig(
        db_url=db_url or f"sqlite:///{tmp_path / 'contract.db'}",
        workers=workers,
        worker=WorkerConfig(poll_seconds=0.05, cancel_check_seconds=0.05),
        endpoint_config=CALLER_ENDPOINTS,
    )
    adapters = Adapters(
        chat_models=FakeModels(),
        embedder_factory=FakeEmbedder,
        request_decode=decoder,
        host_resolver=FakeResolver(),
    )
    return EmbeddedServer(config, adapters)


@pytest.fixture
def idle(tmp_path: Path) -> Iterator[tuple[EmbeddedServer, pb_grpc.OptimizerServiceStub]]:
    """A server without workers: jobs stay queued."""
    with serve(tmp_path, workers=0) as server, grpc.insecure_channel(server.target) as channel:
        yield server, pb_grpc.OptimizerServiceStub(channel)


def wait_done(stub: pb_grpc.OptimizerServiceStub, job_id: str, seconds: float = 120) -> pb.Job:
    deadline = time.monotonic() + seconds
    while True:
        job = stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=10)
        if job.state in (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED):
            return job
        assert time.monotonic() < deadline, f"job still {job.state}"
        time.sleep(0.1)


def rpc_error(call: Any, *args: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call(*args, timeout=10)
    return raised.value


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'contract.db'}"
    return str(request.getfixturevalue("postgres_url"))


def test_a_job_is_decoded_once_runs_and_is_deleted_with_its_study(
    tmp_path: Path, db_url: str
) -> None:
    decoder = CountingDecoder()
    with (
        serve(tmp_path, 1, decoder, db_url) as server,
        grpc.insecure_channel(server.target) as channel,
    ):
        stub = pb_grpc.OptimizerServiceStub(channel)
        created = stub.CreateJob(create_request(spec()), timeout=30)
        finished = wait_done(stub, created.job.id)
        assert finished.state == pb.JOB_STATE_SUCCEEDED, finished.error
        assert decoder.decoded.count(JobSpec) == 1
        job = wire.from_message(Job, finished)
        assert job.task == replace(TASK, seed_instruction=TASK.instruction)
        assert job.result is not None and not job.result.partial
        url = server.app.config.db_url
        assert optuna.load_study(study_name=finished.id, storage=url) is not None

        stub.DeleteJob(pb.DeleteJobRequest(job_id=finished.id), timeout=10)
        gone = rpc_error(stub.GetJob, pb.GetJobRequest(job_id=finished.id))
        assert gone.code() is grpc.StatusCode.NOT_FOUND
        with pytest.raises(KeyError):
            optuna.load_study(study_name=finished.id, storage=url)
        again = rpc_error(stub.DeleteJob, pb.DeleteJobRequest(job_id=finished.id))
        assert again.code() is grpc.StatusCode.NOT_FOUND
    assert decoder.decoded.count(JobSpec) == 1


def test_job_queries_never_read_the_dataset(
    idle: tuple[EmbeddedServer, pb_grpc.OptimizerServiceStub],
) -> None:
    server, stub = idle
    job_id = stub.CreateJob(create_request(spec(size=200)), timeout=30).job.id
    stub.CancelJob(pb.CancelJobRequest(job_id=job_id), timeout=10)
    assert server.app is not None
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    engine = server.app.store._engine
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=10)
        stub.ListJobs(pb.ListJobsRequest(), timeout=10)
        events = list(stub.WatchJob(pb.WatchJobRequest(job_id=job_id), timeout=10))
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    assert events[-1].state_changed.state == pb.JOB_STATE_CANCELLED
    assert statements and not [s for s in statements if "pt_job_datasets" in s]


def test_reused_request_id_with_another_body_is_already_exists_naming_the_job(
    idle: tuple[EmbeddedServer, pb_grpc.OptimizerServiceStub],
) -> None:
    _server, stub = idle
    first = stub.CreateJob(create_request(spec("key-1")), timeout=30).job
    assert stub.CreateJob(create_request(spec("key-1")), timeout=30).job.id == first.id
    other = replace(spec("key-1"), search=replace(SEARCH, seed=4))
    error = rpc_error(stub.CreateJob, create_request(other))
    assert error.code() is grpc.StatusCode.ALREADY_EXISTS
    assert first.id in error.details()


def test_delete_refuses_a_queued_job_until_it_is_cancelled(
    idle: tuple[EmbeddedServer, pb_grpc.OptimizerServiceStub],
) -> None:
    _server, stub = idle
    job_id = stub.CreateJob(create_request(spec()), timeout=30).job.id
    error = rpc_error(stub.DeleteJob, pb.DeleteJobRequest(job_id=job_id))
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "cancel it first" in error.details()
    stub.CancelJob(pb.CancelJobRequest(job_id=job_id), timeout=10)
    stub.DeleteJob(pb.DeleteJobRequest(job_id=job_id), timeout=10)
    assert stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs == []


def hostile_calls(stub: pb_grpc.OptimizerServiceStub) -> list[tuple[str, Any, Any]]:
    """(field named in the error, RPC, request) for input the service must refuse."""
    huge_label = replace(spec(), task=replace(TASK, labels=("positive", "n" * 20_000)))
    nul_model = replace(spec(), model=replace(MODEL, model="fake\x00model"))
    long_name = replace(spec(), task=replace(TASK, output_name="o" * 1_000_000))
    nul_id = replace(
        spec(),
        dataset=Dataset.from_splits(
            (Example("fine", "positive", "id\x00x"),), sentiment_examples(4, "v")
        ),
    )
    long_output = replace(
        spec(),
        dataset=Dataset.from_splits(
            (Example("fine", "z" * 15_000, "t1"),), sentiment_examples(4, "v")
        ),
    )
    many_fields = replace(
        spec(), task=replace(TASK, input_fields=tuple(f"f{i}" for i in range(40)))
    )
    pool = Prompt("Classify.", demo_pool=sentiment_examples(501, "p"), knn_k=2)
    render = pb.RenderPromptRequest(prompt=wire.to_message(pool), inputs={"input": "x"})
    return [
        ("job_id", stub.GetJob, pb.GetJobRequest(job_id="job-\x00")),
        ("job_id", stub.CancelJob, pb.CancelJobRequest(job_id="x" * 41)),
        ("job_id", stub.DeleteJob, pb.DeleteJobRequest(job_id="")),
        ("page_token", stub.ListJobs, pb.ListJobsRequest(page_token="garbage")),
        ("page_token", stub.ListJobs, pb.ListJobsRequest(page_token="9" * 30)),
        ("page_size", stub.ListJobs, pb.ListJobsRequest(page_size=201)),
        ("state", stub.ListJobs, pb.ListJobsRequest(state=77)),  # type: ignore[arg-type]
        ("task.labels[1]", stub.CreateJob, create_request(huge_label)),
        ("model.model", stub.CreateJob, create_request(nul_model)),
        ("task.output_name", stub.CreateJob, create_request(long_name)),
        ("dataset.train[0].id", stub.CreateJob, create_request(nul_id)),
        ("task.input_fields", stub.CreateJob, create_request(many_fields)),
        ("dataset.train[0].output", stub.CreateJob, create_request(long_output)),
        ("request_id", stub.CreateJob, create_request(spec("bad id\x00"))),
        ("prompt.demo_pool", stub.RenderPrompt, render),
    ]


def test_hostile_ids_tokens_and_strings_are_invalid_argument_with_short_messages(
    idle: tuple[EmbeddedServer, pb_grpc.OptimizerServiceStub],
) -> None:
    _server, stub = idle
    for field, call, request in hostile_calls(stub):
        error = rpc_error(call, request)
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (field, error.details())
        assert error.details().startswith(field), (field, error.details())
        assert len(error.details()) < 300 and "\x00" not in error.details()
    watch = pb.WatchJobRequest(job_id="job-0", after_sequence=2**40)
    with pytest.raises(grpc.RpcError) as raised:
        list(stub.WatchJob(watch, timeout=10))
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith("after_sequence")
    assert stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs == []  # still serving


def test_list_jobs_pages_with_opaque_tokens(
    idle: tuple[EmbeddedServer, pb_grpc.OptimizerServiceStub],
) -> None:
    _server, stub = idle
    ids = [stub.CreateJob(create_request(spec()), timeout=30).job.id for _ in range(3)]
    first = stub.ListJobs(pb.ListJobsRequest(page_size=2), timeout=10)
    second = stub.ListJobs(
        pb.ListJobsRequest(page_size=2, page_token=first.next_page_token), timeout=10
    )
    assert [job.id for job in (*first.jobs, *second.jobs)] == list(reversed(ids))
    assert not first.next_page_token.isdigit() and second.next_page_token == ""


def test_stream_evaluation_sends_progress_then_the_result(
    idle: tuple[EmbeddedServer, pb_grpc.OptimizerServiceStub],
) -> None:
    _server, stub = idle
    examples = sentiment_examples(40, "ev")
    evaluation = pb.EvaluatePromptRequest(
        prompt=wire.to_message(Prompt(TASK.instruction, labels=TASK.labels)),
        task=wire.to_message(TASK),
        examples=[wire.to_message(example) for example in examples],
        model=wire.to_message(MODEL),
    )
    replies = list(
        stub.StreamEvaluation(pb.StreamEvaluationRequest(evaluation=evaluation), timeout=60)
    )
    kinds = [reply.WhichOneof("kind") for reply in replies]
    assert kinds[-1] == "result" and set(kinds[:-1]) <= {"progress"}
    for reply in replies[:-1]:
        assert reply.progress.total == 40 and reply.progress.done <= 40
    result = replies[-1].result
    assert result.score.examples == 40 and len(result.results) == 40
    assert result.usage.llm_calls == 40 + 1  # and the probe for log probabilities
    unary = stub.EvaluatePrompt(evaluation, timeout=60)
    assert unary.score.mean == pytest.approx(result.score.mean)


class FinishFailsOnce:
    """A store whose first `finish` raises (say the result does not fit the database)."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.failures = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def finish(self, job_id: str, state: JobState, result: Any, error: str) -> None:
        if self.failures == 0:
            self.failures += 1
            raise RuntimeError("value too long for the result column\x00")
        self._store.finish(job_id, state, result, error)


def test_a_job_whose_finish_fails_still_ends_failed_with_the_cause(
    tmp_path: Path, db_url: str
) -> None:
    with serve(tmp_path, workers=0, db_url=db_url) as server:
        assert server.app is not None
        store = server.app.store
        job = store.create(spec(), server.app.jobs.create(spec(), True)[1])
        claimed = store.claim("w", 60)
        assert claimed is not None
        executor: JobExecutor = server.app.workers._executor
        flaky = FinishFailsOnce(store)
        replace_store = replace(executor._deps, store=flaky)
        JobExecutor(replace_store, executor._config).execute(claimed)
        ended = store.get(job.id)
    assert flaky.failures == 1
    assert ended.state is JobState.FAILED
    assert "could not store the job's outcome" in ended.error
    assert "value too long" in ended.error


def partial_result() -> JobResult:
    scores = PromptScores(Prompt("best so far"), Score(0.7, 0.6, 0.8, 8))
    return JobResult(scores, scores, False, "stopped", Usage(), 2, 0, 1.0, "cancelled")


class StoppedWithPartial(JobExecutor):
    """An executor whose search stops (cancelled or failed) after finding something."""

    stop: Exception = SearchCancelled(partial=partial_result())

    async def _run(self, claimed: Any) -> JobResult:
        raise self.stop


@pytest.mark.parametrize(
    ("stop", "state", "error"),
    [
        (SearchCancelled(partial=partial_result()), JobState.CANCELLED, ""),
        (
            SearchFailed(
                "every call to endpoint local failed: HTTP 401\x00 (29 calls)", partial_result()
            ),
            JobState.FAILED,
            "every call to endpoint local failed: HTTP 401\\x00 (29 calls)",
        ),
    ],
)
def test_a_stopped_search_keeps_its_partial_result_and_cause(
    tmp_path: Path, db_url: str, stop: Exception, state: JobState, error: str
) -> None:
    with serve(tmp_path, workers=0, db_url=db_url) as server:
        assert server.app is not None
        store = server.app.store
        job = store.create(spec(), server.app.jobs.create(spec(), True)[1])
        claimed = store.claim("w", 60)
        assert claimed is not None
        executor = server.app.workers._executor
        stopped = StoppedWithPartial(executor._deps, executor._config)
        stopped.stop = stop
        stopped.execute(claimed)
        ended = store.get(job.id)
        store.delete(job.id)
    assert ended.state is state and ended.error == error
    assert ended.result is not None and ended.result.partial
    assert ended.result.best.prompt.instruction == "best so far"


def test_a_crashing_search_fails_its_job_with_a_short_cause_and_the_worker_goes_on(
    tmp_path: Path,
) -> None:
    with serve(tmp_path, workers=0) as server:
        assert server.app is not None
        store = server.app.store
        first = store.create(spec(), server.app.jobs.create(spec(), True)[1])
        second = store.create(spec(), server.app.jobs.create(spec(), True)[1])
        executor = server.app.workers._executor
        crashing = StoppedWithPartial(executor._deps, executor._config)
        crashing.stop = TypeError("bad \x00 value " + "v" * 10_000)
        for _ in range(2):
            claimed = store.claim("w", 60)
            assert claimed is not None
            crashing.execute(claimed)  # never raises
        ended = [store.get(job.id) for job in (first, second)]
    assert [job.state for job in ended] == [JobState.FAILED, JobState.FAILED]
    assert ended[0].error.startswith("internal error: TypeError: 'bad")
    assert len(ended[0].error) < 100 and "\x00" not in ended[0].error


def test_health_is_not_serving_once_worker_slots_are_gone(tmp_path: Path) -> None:
    with serve(tmp_path, workers=1) as server, grpc.insecure_channel(server.target) as channel:
        assert server.app is not None
        health = health_pb2_grpc.HealthStub(channel)
        check = health_pb2.HealthCheckRequest(service="")
        assert health.Check(check, timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        assert server.app.workers.workers_alive() == 1
        server.app.workers.stop()
        deadline = time.monotonic() + 10
        while health.Check(check, timeout=5).status == health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < deadline, "health still SERVING without workers"
            time.sleep(0.2)
        assert server.app.workers.workers_alive() == 0


class SlowEmbedder(FakeEmbedder):
    """Embeds like FakeEmbedder after holding its thread for a while (a big kNN pool)."""

    def embed(self, texts: Any) -> Any:
        time.sleep(2.0)
        return super().embed(texts)


def test_health_answers_while_a_knn_prompt_renders(tmp_path: Path) -> None:
    config = ServerConfig(
        db_url=f"sqlite:///{tmp_path / 'slow.db'}", workers=0, endpoint_config=CALLER_ENDPOINTS
    )
    adapters = Adapters(
        chat_models=FakeModels(), embedder_factory=SlowEmbedder, host_resolver=FakeResolver()
    )
    prompt = Prompt("Classify.", demo_pool=sentiment_examples(400, "p"), knn_k=3)
    request = pb.RenderPromptRequest(prompt=wire.to_message(prompt), inputs={"input": "fine"})
    with (
        EmbeddedServer(config, adapters) as server,
        grpc.insecure_channel(server.target) as channel,
    ):
        stub = pb_grpc.OptimizerServiceStub(channel)
        rendering = stub.RenderPrompt.future(request, timeout=30)
        time.sleep(0.3)
        assert not rendering.done()
        health = health_pb2_grpc.HealthStub(channel)
        began = time.monotonic()
        health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert time.monotonic() - began < 1.0
        assert [m.role for m in rendering.result().messages] == [
            "system",
            "user",
            "assistant",
            "user",
            "assistant",
            "user",
            "assistant",
            "user",
        ]
