"""Asynchronous client (grpc.aio) with the same methods as :class:`Client`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import grpc

from prompttune.client import _requests as rpc
from prompttune.client._batch import (
    BatchDoneHandler,
    BatchEventHandler,
    BatchItemResult,
    BatchRequest,
)
from prompttune.client._check import CheckVerdict, Contender, reference
from prompttune.client._client import Metadata, RetryPolicy, call_metadata
from prompttune.client._errors import (
    InternalError,
    JobFailedError,
    PromptTuneError,
    error_from_rpc,
)
from prompttune.client._requests import ProgressHandler
from prompttune.contract import (
    ChatMessage,
    Comparison,
    Dataset,
    Embedder,
    Estimate,
    Evaluation,
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
    render,
)
from prompttune.v1 import optimizer_pb2 as pb
from prompttune.v1 import optimizer_pb2_grpc


class AsyncClient:
    """Asynchronous client of the prompttune service; same arguments and methods as
    :class:`Client`, awaited (``watch_job`` and ``iter_jobs`` are async iterators).

    Create it inside a running event loop and use it from that loop only.
    """

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        timeout: float | None = 30.0,
        metadata: Metadata | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        retry: RetryPolicy | None = None,
        token: str | None = None,
    ) -> None:
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(target)
        else:
            self._channel = grpc.aio.secure_channel(target, credentials)
        self._stub = optimizer_pb2_grpc.OptimizerServiceStub(self._channel)
        self._timeout = timeout
        self._metadata = call_metadata(metadata, token)
        self._retry = retry or RetryPolicy()

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def create_job(
        self,
        task: TaskSpec | None,
        dataset: Dataset | None,
        model: ModelSpec | None = None,
        search: SearchSpec | None = None,
        *,
        request_id: str | None = None,
        models: Sequence[ModelSpec] = (),
        template_job_id: str = "",
        dry_run: bool = False,
    ) -> Job | Estimate:
        """See :meth:`Client.create_job`."""
        options = rpc.job_options(models, template_job_id)
        request = rpc.create_job(task, dataset, model, search, request_id, dry_run, options)
        return rpc.created(await self._call(self._stub.CreateJob, request), dry_run)

    async def get_job(self, job_id: str) -> Job:
        message = await self._call(self._stub.GetJob, pb.GetJobRequest(job_id=job_id))
        return rpc.job(message)

    async def list_jobs(
        self, state: JobState | None = None, page_size: int = 50, page_token: str = ""
    ) -> JobPage:
        request = rpc.list_jobs(state, page_size, page_token)
        return rpc.job_page(await self._call(self._stub.ListJobs, request))

    async def iter_jobs(
        self, state: JobState | None = None, page_size: int = 50
    ) -> AsyncIterator[Job]:
        token = ""
        while True:
            page = await self.list_jobs(state, page_size, token)
            for job in page.jobs:
                yield job
            if not page.next_page_token:
                return
            token = page.next_page_token

    async def cancel_job(self, job_id: str) -> Job:
        message = await self._call(self._stub.CancelJob, pb.CancelJobRequest(job_id=job_id))
        return rpc.job(message)

    async def delete_job(self, job_id: str) -> None:
        """See :meth:`Client.delete_job`."""
        await self._call(self._stub.DeleteJob, pb.DeleteJobRequest(job_id=job_id))

    async def watch_job(self, job_id: str, after_sequence: int = 0) -> AsyncIterator[JobEvent]:
        """See :meth:`Client.watch_job`: resumes after UNAVAILABLE without repeating events."""
        cursor, retries = after_sequence, 0
        while True:
            request = pb.WatchJobRequest(job_id=job_id, after_sequence=cursor)
            call = self._stub.WatchJob(request, metadata=self._metadata)
            try:
                async for message in call:
                    if message.sequence > cursor:
                        cursor, retries = message.sequence, 0
                        yield rpc.event(message)
                return
            except grpc.RpcError as error:
                if (
                    error.code() != grpc.StatusCode.UNAVAILABLE
                    or retries >= self._retry.max_retries
                ):
                    raise error_from_rpc(error) from error
            finally:
                call.cancel()
            await asyncio.sleep(self._retry.delay(retries))
            retries += 1

    async def evaluate_prompt(
        self,
        prompt: Prompt,
        task: TaskSpec,
        examples: Iterable[Example],
        model: ModelSpec | None = None,
        *,
        on_progress: ProgressHandler | None = None,
    ) -> Evaluation:
        """See :meth:`Client.evaluate_prompt`: streamed, no overall deadline."""
        request = rpc.evaluate(prompt, task, examples, model)
        try:
            return await self._stream_evaluation(request, on_progress)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise error_from_rpc(error) from error
        try:
            reply = await self._stub.EvaluatePrompt(request.evaluation, metadata=self._metadata)
        except grpc.RpcError as error:
            raise error_from_rpc(error) from error
        return rpc.evaluation(reply)

    async def _stream_evaluation(
        self, request: pb.StreamEvaluationRequest, on_progress: ProgressHandler | None
    ) -> Evaluation:
        call = self._stub.StreamEvaluation(request, metadata=self._metadata)
        try:
            async for message in call:
                evaluation = rpc.evaluation_update(message, on_progress)
                if evaluation is not None:
                    return evaluation
        finally:
            call.cancel()
        raise InternalError("the evaluation stream ended without a result", code="INTERNAL")

    async def compare(
        self,
        task: TaskSpec,
        examples: Iterable[Example],
        a: Prompt,
        b: Prompt,
        model_a: ModelSpec | None = None,
        model_b: ModelSpec | None = None,
        *,
        seed: int = 0,
        scoring: Scoring = Scoring.AUTO,
    ) -> Comparison:
        """See :meth:`Client.compare`: no deadline."""
        request = rpc.compare(task, examples, (a, model_a), (b, model_b), seed, scoring)
        try:
            reply = await self._stub.ComparePrompts(request, metadata=self._metadata)
        except grpc.RpcError as error:
            raise error_from_rpc(error) from error
        return rpc.comparison(reply)

    async def check(
        self,
        prompt: Prompt,
        model: ModelSpec,
        examples: Iterable[Example],
        *,
        against: Job | str | Contender | None = None,
        task: TaskSpec | None = None,
        seed: int = 0,
        scoring: Scoring = Scoring.AUTO,
    ) -> CheckVerdict:
        """See :meth:`Client.check`."""
        if isinstance(against, str):
            against = await self.get_job(against)
        baseline, task = reference(prompt, against, task)
        comparison = await self.compare(
            task,
            examples,
            baseline.prompt,
            prompt,
            baseline.model,
            model,
            seed=seed,
            scoring=scoring,
        )
        return CheckVerdict(task, baseline, Contender(prompt, model), comparison)

    async def get_job_dataset(self, job_id: str) -> JobDataset:
        """See :meth:`Client.get_job_dataset`."""
        request = pb.GetJobDatasetRequest(job_id=job_id)
        return rpc.job_dataset(await self._call(self._stub.GetJobDataset, request))

    async def render_prompt(
        self, prompt: Prompt, inputs: Mapping[str, str] | str
    ) -> tuple[ChatMessage, ...]:
        """See :meth:`Client.render_prompt`."""
        request = rpc.render(prompt, inputs)
        return rpc.messages(await self._call(self._stub.RenderPrompt, request))

    def render(
        self,
        prompt: Prompt,
        inputs: Mapping[str, str] | str,
        embedder: Embedder | None = None,
    ) -> tuple[ChatMessage, ...]:
        """Local rendering, identical to :meth:`render_prompt` (no call, not awaited)."""
        return render(prompt, inputs, embedder)

    async def optimize(
        self,
        task: TaskSpec | None,
        dataset: Dataset | None,
        model: ModelSpec | None = None,
        search: SearchSpec | None = None,
        *,
        request_id: str | None = None,
        models: Sequence[ModelSpec] = (),
        template_job_id: str = "",
        on_event: Callable[[JobEvent], None] | None = None,
    ) -> Job:
        """See :meth:`Client.optimize`."""
        job = await self._follow(
            await self.create_job(
                task,
                dataset,
                model,
                search,
                request_id=request_id,
                models=models,
                template_job_id=template_job_id,
            ),
            on_event,
        )
        if job.state in (JobState.FAILED, JobState.CANCELLED):
            raise JobFailedError(job)
        return job

    async def _follow(
        self, created: Job | Estimate, on_event: Callable[[JobEvent], None] | None
    ) -> Job:
        assert isinstance(created, Job)
        job, cursor = created, 0
        while not job.done:
            async for event in self.watch_job(job.id, after_sequence=cursor):
                cursor = event.sequence
                if on_event is not None:
                    on_event(event)
            job = await self.get_job(job.id)
            if not job.done:
                await asyncio.sleep(self._retry.initial_backoff)
        return job

    async def submit_batch(
        self,
        requests: Sequence[BatchRequest],
        *,
        max_in_flight: int = 4,
        on_event: BatchEventHandler | None = None,
        on_done: BatchDoneHandler | None = None,
    ) -> list[BatchItemResult]:
        """See :meth:`Client.submit_batch`; the handlers run on the event loop."""
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        slots = asyncio.Semaphore(max_in_flight)

        async def one(index: int, request: BatchRequest) -> BatchItemResult:
            async with slots:
                result = await self._run_one(index, request, on_event)
            if on_done is not None:
                on_done(result)
            return result

        return list(await asyncio.gather(*(one(i, r) for i, r in enumerate(requests))))

    async def _run_one(
        self, index: int, request: BatchRequest, on_event: BatchEventHandler | None
    ) -> BatchItemResult:
        request_id = request.request_id or ""
        handler = None if on_event is None else (lambda event: on_event(index, event))
        try:
            created = await self.create_job(
                request.task, request.dataset, request.model, request.search, request_id=request_id
            )
            job = await self._follow(created, handler)
        except PromptTuneError as error:
            return BatchItemResult(index, request_id, None, str(error))
        return BatchItemResult(index, request_id, job, job.error)

    async def _call(self, method: Callable[..., Awaitable[Any]], request: object) -> Any:
        try:
            return await method(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise error_from_rpc(error) from error
