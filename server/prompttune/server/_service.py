"""The gRPC servicer: each method decodes the request once (`RequestDecoder`), delegates to
JobService and encodes the reply with `prompttune.contract.wire`. Errors are mapped to status
codes by ServiceInterceptor, not here. CPU work on large requests runs off the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, TypeAlias, TypeVar

from prompttune.contract import Evaluation, JobSpec, wire
from prompttune.search import InvalidArgument as InvalidArgumentError
from prompttune.server._auth import current_tenant
from prompttune.server._jobs import JobService
from prompttune.server._limits import Limits
from prompttune.server._validate import (
    ComparisonRequest,
    Decoder,
    EvaluationRequest,
    JobQuery,
    RenderRequest,
    WatchRequest,
    check_template_request,
    decode,
)
from prompttune.v1 import optimizer_pb2 as pb
from prompttune.v1 import optimizer_pb2_grpc as pb_grpc

# grpc ships no type stubs; handlers receive a grpc.aio.ServicerContext.
Context: TypeAlias = Any
T = TypeVar("T")


class RequestDecoder:
    """Decodes request messages into contract values, refusing oversized ones first.
    `decode` is injectable so a test can count decodings."""

    def __init__(self, limits: Limits, decode: Decoder = decode) -> None:
        self._limits = limits
        self._decode = decode

    def __call__(self, cls: type[T], message: Any, path: str = "") -> T:
        size = message.ByteSize()
        if size > self._limits.max_request_bytes:
            raise InvalidArgumentError(
                "request", f"is {size} bytes; the limit is {self._limits.max_request_bytes}"
            )
        return self._decode(cls, message, path)  # type: ignore[no-any-return]


class OptimizerServicer(pb_grpc.OptimizerServiceServicer):
    def __init__(self, jobs: JobService, decoder: RequestDecoder) -> None:
        self._jobs = jobs
        self._decode = decoder

    async def CreateJob(
        self, request: pb.CreateJobRequest, context: Context
    ) -> pb.CreateJobResponse:
        tenant = current_tenant()
        check_template_request(request.template_job_id, request.HasField("model"))
        spec = await asyncio.to_thread(self._decode, JobSpec, request)
        job, estimate = await asyncio.to_thread(self._jobs.create, spec, request.dry_run, tenant)
        reply = pb.CreateJobResponse(estimate=wire.to_message(estimate))
        if job is not None:
            reply.job.CopyFrom(wire.to_message(job))
        return reply

    async def GetJob(self, request: pb.GetJobRequest, context: Context) -> pb.Job:
        job = await asyncio.to_thread(self._jobs.get, request.job_id, current_tenant())
        return wire.to_message(job)  # type: ignore[no-any-return]

    async def ListJobs(self, request: pb.ListJobsRequest, context: Context) -> pb.ListJobsResponse:
        if request.state not in pb.JobState.values():
            raise InvalidArgumentError("state", f"unknown job state {request.state}")
        query = self._decode(JobQuery, request)
        page = await asyncio.to_thread(self._jobs.list_jobs, query, current_tenant())
        return wire.to_message(page)  # type: ignore[no-any-return]

    async def CancelJob(self, request: pb.CancelJobRequest, context: Context) -> pb.Job:
        job = await asyncio.to_thread(self._jobs.cancel, request.job_id, current_tenant())
        return wire.to_message(job)  # type: ignore[no-any-return]

    async def DeleteJob(
        self, request: pb.DeleteJobRequest, context: Context
    ) -> pb.DeleteJobResponse:
        await asyncio.to_thread(self._jobs.delete, request.job_id, current_tenant())
        return pb.DeleteJobResponse()

    async def WatchJob(
        self, request: pb.WatchJobRequest, context: Context
    ) -> AsyncIterator[pb.JobEvent]:
        watch = self._decode(WatchRequest, request)
        async for event in self._jobs.watch(watch, current_tenant()):
            yield wire.to_message(event)

    async def EvaluatePrompt(
        self, request: pb.EvaluatePromptRequest, context: Context
    ) -> pb.EvaluatePromptResponse:
        evaluation = await asyncio.to_thread(self._decode, EvaluationRequest, request)
        return wire.to_message(await self._jobs.evaluate(evaluation, current_tenant()))  # type: ignore[no-any-return]

    async def StreamEvaluation(
        self, request: pb.StreamEvaluationRequest, context: Context
    ) -> AsyncIterator[pb.StreamEvaluationResponse]:
        evaluation = await asyncio.to_thread(self._decode, EvaluationRequest, request.evaluation)
        async for item in self._jobs.evaluate_stream(evaluation, current_tenant()):
            if isinstance(item, Evaluation):
                yield pb.StreamEvaluationResponse(result=wire.to_message(item))
            else:
                yield pb.StreamEvaluationResponse(progress=wire.to_message(item))

    async def RenderPrompt(
        self, request: pb.RenderPromptRequest, context: Context
    ) -> pb.RenderPromptResponse:
        render = await asyncio.to_thread(self._decode, RenderRequest, request)
        messages = await asyncio.to_thread(self._jobs.render, render)
        calibration = render.prompt.calibration
        return pb.RenderPromptResponse(
            messages=[wire.to_message(m) for m in messages],
            calibration=None if calibration is None else wire.to_message(calibration),
        )

    async def ComparePrompts(
        self, request: pb.ComparePromptsRequest, context: Context
    ) -> pb.ComparePromptsResponse:
        comparison = await asyncio.to_thread(self._decode, ComparisonRequest, request)
        return wire.to_message(await self._jobs.compare(comparison, current_tenant()))  # type: ignore[no-any-return]

    async def GetJobDataset(
        self, request: pb.GetJobDatasetRequest, context: Context
    ) -> pb.JobDataset:
        dataset = await asyncio.to_thread(self._jobs.dataset, request.job_id, current_tenant())
        return wire.to_message(dataset)  # type: ignore[no-any-return]
