"""The gRPC servicer: each method translates the request, delegates to JobService and returns.
Errors are mapped to status codes by ServiceInterceptor, not here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

from prompttune.server._auth import current_tenant
from prompttune.server._jobs import JobService
from prompttune.v1 import optimizer_pb2 as pb
from prompttune.v1 import optimizer_pb2_grpc as pb_grpc

# grpc ships no type stubs; handlers receive a grpc.aio.ServicerContext.
Context: TypeAlias = Any


class OptimizerServicer(pb_grpc.OptimizerServiceServicer):
    def __init__(self, jobs: JobService) -> None:
        self._jobs = jobs

    async def CreateJob(
        self, request: pb.CreateJobRequest, context: Context
    ) -> pb.CreateJobResponse:
        # Off the event loop: checking a caller-supplied endpoint resolves its host name.
        return await asyncio.to_thread(self._jobs.create, request, current_tenant())

    async def GetJob(self, request: pb.GetJobRequest, context: Context) -> pb.Job:
        return self._jobs.get(request.job_id, current_tenant())

    async def ListJobs(self, request: pb.ListJobsRequest, context: Context) -> pb.ListJobsResponse:
        return self._jobs.list(request, current_tenant())

    async def CancelJob(self, request: pb.CancelJobRequest, context: Context) -> pb.Job:
        return self._jobs.cancel(request.job_id, current_tenant())

    async def WatchJob(
        self, request: pb.WatchJobRequest, context: Context
    ) -> AsyncIterator[pb.JobEvent]:
        async for event in self._jobs.watch(
            request.job_id, request.after_sequence, current_tenant()
        ):
            yield event

    async def EvaluatePrompt(
        self, request: pb.EvaluatePromptRequest, context: Context
    ) -> pb.EvaluatePromptResponse:
        return await self._jobs.evaluate(request, current_tenant())

    async def RenderPrompt(
        self, request: pb.RenderPromptRequest, context: Context
    ) -> pb.RenderPromptResponse:
        return self._jobs.render(request)
