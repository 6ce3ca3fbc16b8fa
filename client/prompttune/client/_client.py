"""Synchronous client of prompttune.v1.OptimizerService."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Self, TypeVar, overload

import grpc

from prompttune.client import _requests as rpc
from prompttune.client._batch import (
    BatchDoneHandler,
    BatchEventHandler,
    BatchItemResult,
    BatchRequest,
    submit_batch,
)
from prompttune.client._check import CheckVerdict, Contender, reference
from prompttune.client._errors import InternalError, JobFailedError, error_from_rpc
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

_Response = TypeVar("_Response")

Metadata = Mapping[str, str] | Sequence[tuple[str, str]]


@dataclass(frozen=True)
class RetryPolicy:
    """How ``watch_job`` reconnects after the stream fails with UNAVAILABLE.

    At most ``max_retries`` reconnects in a row without receiving an event; the delay before
    reconnect n (from 0) is ``min(max_backoff, initial_backoff * multiplier**n)`` seconds.
    """

    max_retries: int = 5
    initial_backoff: float = 0.5
    max_backoff: float = 10.0
    multiplier: float = 2.0

    def delay(self, retry: int) -> float:
        return float(min(self.max_backoff, self.initial_backoff * self.multiplier**retry))


def call_metadata(metadata: Metadata | None, token: str | None) -> tuple[tuple[str, str], ...]:
    """Lower-cased call metadata, plus the bearer token when given."""
    items = metadata.items() if isinstance(metadata, Mapping) else metadata or ()
    pairs = tuple((key.lower(), value) for key, value in items)
    if token:
        pairs = (
            *(p for p in pairs if p[0] != "authorization"),
            ("authorization", f"Bearer {token}"),
        )
    return pairs


class Client:
    """Synchronous client of the prompttune service.

    Every unary call gets the deadline ``timeout`` (seconds; None: no deadline) and the call
    ``metadata``; ``token`` adds ``authorization: Bearer <token>``. ``credentials`` selects
    a TLS channel (``grpc.ssl_channel_credentials(...)``, with a client key and certificate
    for mutual TLS). Failed calls raise :class:`PromptTuneError` subclasses, never
    ``grpc.RpcError``. The client is thread-safe; close it, or use it as a context manager.
    """

    # The longest `close` waits for the channel to close.
    close_timeout_seconds: float = 5.0

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
            self._channel = grpc.insecure_channel(target)
        else:
            self._channel = grpc.secure_channel(target, credentials)
        self._stub = optimizer_pb2_grpc.OptimizerServiceStub(self._channel)
        self._timeout = timeout
        self._metadata = call_metadata(metadata, token)
        self._retry = retry or RetryPolicy()

    def close(self) -> None:
        """Closes the channel, waiting at most `close_timeout_seconds`. A blocking call that
        a Ctrl-C abandoned mid-flight leaves grpc's close waiting for a completion nobody
        will collect; the CLI must still exit, so the close is left to a daemon thread."""
        closer = threading.Thread(
            target=self._channel.close, name="prompttune-channel-close", daemon=True
        )
        closer.start()
        closer.join(self.close_timeout_seconds)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @overload
    def create_job(
        self,
        task: TaskSpec | None,
        dataset: Dataset | None,
        model: ModelSpec | None = None,
        search: SearchSpec | None = None,
        *,
        request_id: str | None = None,
        models: Sequence[ModelSpec] = (),
        template_job_id: str = "",
        dry_run: Literal[False] = False,
    ) -> Job: ...

    @overload
    def create_job(
        self,
        task: TaskSpec | None,
        dataset: Dataset | None,
        model: ModelSpec | None = None,
        search: SearchSpec | None = None,
        *,
        request_id: str | None = None,
        models: Sequence[ModelSpec] = (),
        template_job_id: str = "",
        dry_run: Literal[True],
    ) -> Estimate: ...

    def create_job(
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
        """Queue a job and return it (QUEUED). With ``dry_run=True`` nothing is created: the
        request is validated and the :class:`Estimate` returned instead.

        ``model`` None is `ModelSpec()` (the local model) and ``search`` None `SearchSpec()`:
        the contract's defaults, which are the server's.
        A repeated ``request_id`` returns the job created by its first request.
        ``models``: up to 3 more target models, searched after ``model`` in the same job;
        its result then has one entry per model (``result.models``) and a
        ``result.recommendation``. ``template_job_id``: copy the task, dataset and search of
        that earlier job of yours wherever ``task``, ``dataset`` or ``search`` is None; the
        ``model`` must then be given.
        Raises InvalidArgumentError (with ``.field``) when the server rejects the request.
        """
        options = rpc.job_options(models, template_job_id)
        request = rpc.create_job(task, dataset, model, search, request_id, dry_run, options)
        return rpc.created(self._call(self._stub.CreateJob, request), dry_run)

    def get_job(self, job_id: str) -> Job:
        """Return the job with its progress and, once finished, its result. Raises NotFoundError."""
        return rpc.job(self._call(self._stub.GetJob, pb.GetJobRequest(job_id=job_id)))

    def list_jobs(
        self, state: JobState | None = None, page_size: int = 50, page_token: str = ""
    ) -> JobPage:
        """One page of jobs, newest first; ``page_size`` in [1, 200]. See also :meth:`iter_jobs`."""
        request = rpc.list_jobs(state, page_size, page_token)
        return rpc.job_page(self._call(self._stub.ListJobs, request))

    def iter_jobs(self, state: JobState | None = None, page_size: int = 50) -> Iterator[Job]:
        """Every job, newest first, fetching pages lazily."""
        token = ""
        while True:
            page = self.list_jobs(state, page_size, token)
            yield from page.jobs
            if not page.next_page_token:
                return
            token = page.next_page_token

    def cancel_job(self, job_id: str) -> Job:
        """Ask a queued or running job to stop; a no-op on finished jobs. Returns the job."""
        request = pb.CancelJobRequest(job_id=job_id)
        return rpc.job(self._call(self._stub.CancelJob, request))

    def delete_job(self, job_id: str) -> None:
        """Delete a finished job with its events, dataset and study. Raises NotFoundError, and
        FailedPreconditionError for a queued or running job (cancel it first)."""
        self._call(self._stub.DeleteJob, pb.DeleteJobRequest(job_id=job_id))

    def watch_job(self, job_id: str, after_sequence: int = 0) -> Iterator[JobEvent]:
        """Yield the job's events with sequence > ``after_sequence``, in order, until the job
        reaches a terminal state.

        The stream has no deadline. When it breaks with UNAVAILABLE it is reopened after the
        last sequence seen (see :class:`RetryPolicy`), so no event is repeated or skipped.
        Closing the iterator early cancels the stream.
        """
        cursor, retries = after_sequence, 0
        while True:
            request = pb.WatchJobRequest(job_id=job_id, after_sequence=cursor)
            stream = self._stub.WatchJob(request, metadata=self._metadata)
            try:
                for message in stream:
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
                stream.cancel()
            time.sleep(self._retry.delay(retries))
            retries += 1

    def evaluate_prompt(
        self,
        prompt: Prompt,
        task: TaskSpec,
        examples: Iterable[Example],
        model: ModelSpec | None = None,
        *,
        on_progress: ProgressHandler | None = None,
    ) -> Evaluation:
        """Score ``prompt`` on ``examples`` without a search; results keep the examples' order.

        The evaluation streams (``StreamEvaluation``): ``on_progress`` is called with each
        progress message, and there is no overall deadline, so evaluations of any size
        complete. ``model`` None is the local model.
        """
        request = rpc.evaluate(prompt, task, examples, model)
        try:
            return self._stream_evaluation(request, on_progress)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise error_from_rpc(error) from error
        # A server older than StreamEvaluation: one unary call, without a deadline either.
        try:
            reply = self._stub.EvaluatePrompt(request.evaluation, metadata=self._metadata)
        except grpc.RpcError as error:
            raise error_from_rpc(error) from error
        return rpc.evaluation(reply)

    def _stream_evaluation(
        self, request: pb.StreamEvaluationRequest, on_progress: ProgressHandler | None
    ) -> Evaluation:
        stream = self._stub.StreamEvaluation(request, metadata=self._metadata)
        try:
            for message in stream:
                evaluation = rpc.evaluation_update(message, on_progress)
                if evaluation is not None:
                    return evaluation
        finally:
            stream.cancel()
        raise InternalError("the evaluation stream ended without a result", code="INTERNAL")

    def compare(
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
        """Score ``a`` on ``model_a`` and ``b`` on ``model_b`` (None: the local model) on the
        same 1 to 5000 ``examples``, each as :meth:`evaluate_prompt` would, and compare them
        paired: ``comparison.difference`` is b - a with its 95% interval, p-value, per-label
        recall differences and verdict ("b_better", "b_worse" or "no_difference"; ``seed``
        seeds the bootstrap). ``scoring`` AUTO scores by label probabilities where the task and
        both endpoints allow it (calibrated prompts always), GENERATION by the parsed answer
        text. No deadline, like :meth:`evaluate_prompt`. Raises
        InvalidArgumentError naming the field (``a``, ``model_b``, ``examples[3]``, ...)."""
        request = rpc.compare(task, examples, (a, model_a), (b, model_b), seed, scoring)
        try:
            reply = self._stub.ComparePrompts(request, metadata=self._metadata)
        except grpc.RpcError as error:
            raise error_from_rpc(error) from error
        return rpc.comparison(reply)

    def check(
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
        """The regression gate: ``prompt`` on ``model`` against a reference, on ``examples``.

        ``against`` is a job (or job id: its best prompt on its model), an explicit
        :class:`Contender`, or None: the same prompt on the default model. ``task`` None is
        the job's task, else the one the prompt implies (`task_for_prompt`). The verdict
        ``passed`` unless the prompt on ``model`` is worse beyond noise.
        """
        if isinstance(against, str):
            against = self.get_job(against)
        baseline, task = reference(prompt, against, task)
        candidate = Contender(prompt, model)
        comparison = self.compare(
            task,
            examples,
            baseline.prompt,
            prompt,
            baseline.model,
            model,
            seed=seed,
            scoring=scoring,
        )
        return CheckVerdict(task, baseline, candidate, comparison)

    def get_job_dataset(self, job_id: str) -> JobDataset:
        """The job's labelled examples as its search split them (train, validation, test).
        Raises NotFoundError, also for another tenant's job."""
        request = pb.GetJobDatasetRequest(job_id=job_id)
        return rpc.job_dataset(self._call(self._stub.GetJobDataset, request))

    def render_prompt(
        self, prompt: Prompt, inputs: Mapping[str, str] | str
    ) -> tuple[ChatMessage, ...]:
        """The chat messages to send to the model for one new input, rendered by the server
        (which retrieves kNN demonstrations with its embedder).

        A plain string is short for ``{"input": text}``.
        """
        request = rpc.render(prompt, inputs)
        return rpc.messages(self._call(self._stub.RenderPrompt, request))

    def optimize(
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
        """Create a job, watch it to the end (calling ``on_event`` per event) and return the
        finished job. Raises JobFailedError when it ends FAILED or CANCELLED.
        """
        job = self.create_job(
            task,
            dataset,
            model,
            search,
            request_id=request_id,
            models=models,
            template_job_id=template_job_id,
        )
        cursor = 0
        while not job.done:
            for event in self.watch_job(job.id, after_sequence=cursor):
                cursor = event.sequence
                if on_event is not None:
                    on_event(event)
            job = self.get_job(job.id)
            if not job.done:  # the stream ended early, e.g. a server shutting down gracefully
                time.sleep(self._retry.initial_backoff)
        if job.state in (JobState.FAILED, JobState.CANCELLED):
            raise JobFailedError(job)
        return job

    def submit_batch(
        self,
        requests: Sequence[BatchRequest],
        *,
        max_in_flight: int = 4,
        on_event: BatchEventHandler | None = None,
        on_done: BatchDoneHandler | None = None,
    ) -> list[BatchItemResult]:
        """Create and follow many jobs, at most ``max_in_flight`` at a time; results come back
        in request order and a failed entry does not stop the others. Entries with a
        ``request_id`` re-attach to their existing job when the batch is submitted again.
        ``on_event(index, event)`` and ``on_done(result)`` run on worker threads."""
        return submit_batch(self, requests, max_in_flight, on_event, on_done)

    def render(
        self,
        prompt: Prompt,
        inputs: Mapping[str, str] | str,
        embedder: Embedder | None = None,
    ) -> tuple[ChatMessage, ...]:
        """Like :meth:`render_prompt`, computed locally without a call (same output). A kNN
        prompt needs an ``embedder`` (the server's model); without one it raises
        ``MissingEmbedder``."""
        return render(prompt, inputs, embedder)

    def _call(self, method: Callable[..., _Response], request: object) -> _Response:
        try:
            return method(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise error_from_rpc(error) from error
