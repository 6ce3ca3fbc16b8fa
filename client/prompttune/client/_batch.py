"""Batch submission: many optimisation requests, a bounded number in flight at once."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prompttune.client._errors import PromptTuneError
from prompttune.contract import (
    Dataset,
    Job,
    JobEvent,
    JobState,
    ModelSpec,
    SearchSpec,
    TaskSpec,
)

if TYPE_CHECKING:
    from prompttune.client._client import Client


@dataclass(frozen=True)
class BatchRequest:
    """One job of a batch. Give a ``request_id`` to make resubmitting the batch idempotent."""

    task: TaskSpec
    dataset: Dataset
    model: ModelSpec | None = None
    search: SearchSpec | None = None
    request_id: str | None = None


@dataclass(frozen=True)
class BatchItemResult:
    """Outcome of one batch entry. ``job`` is the final job, or None when it could not be
    created or followed (``error`` then says why)."""

    index: int
    request_id: str
    job: Job | None
    error: str = ""

    @property
    def state(self) -> JobState:
        return self.job.state if self.job is not None else JobState.UNSPECIFIED


BatchEventHandler = Callable[[int, JobEvent], None]
BatchDoneHandler = Callable[[BatchItemResult], None]


def batch_request_id(namespace: str, index: int, payload: str) -> str:
    """A deterministic idempotency key for entry ``index`` of a batch (at most 128 chars)."""
    digest = hashlib.sha256(f"{namespace}\x1f{index}\x1f{payload}".encode()).hexdigest()
    return f"batch-{digest[:32]}-{index}"


def run_one(
    client: Client,
    index: int,
    request: BatchRequest,
    on_event: BatchEventHandler | None,
) -> BatchItemResult:
    """Creates (or re-attaches to) the job and follows it to a terminal state. Never raises
    PromptTuneError: failures become the result's ``error``."""
    request_id = request.request_id or ""
    try:
        job = client.create_job(
            request.task, request.dataset, request.model, request.search, request_id=request_id
        )
        cursor = 0
        while not job.done:
            for event in client.watch_job(job.id, after_sequence=cursor):
                cursor = event.sequence
                if on_event is not None:
                    on_event(index, event)
            job = client.get_job(job.id)
    except PromptTuneError as error:
        return BatchItemResult(index, request_id, None, str(error))
    return BatchItemResult(index, request_id, job, job.error)


def submit_batch(
    client: Client,
    requests: Sequence[BatchRequest],
    max_in_flight: int,
    on_event: BatchEventHandler | None = None,
    on_done: BatchDoneHandler | None = None,
) -> list[BatchItemResult]:
    """Runs every request with at most ``max_in_flight`` jobs followed at once; results in
    request order. ``on_event``/``on_done`` are called from worker threads."""
    if max_in_flight < 1:
        raise ValueError("max_in_flight must be at least 1")

    def work(index: int) -> BatchItemResult:
        result = run_one(client, index, requests[index], on_event)
        if on_done is not None:
            on_done(result)
        return result

    with ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="batch") as pool:
        return list(pool.map(work, range(len(requests))))
