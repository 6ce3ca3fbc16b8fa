"""How jobs are written to and read from database rows: job states as numbers, the stored
spec document, datasets and results as protobuf bytes, page tokens, and text made safe for
any database. Pure functions; `prompttune.server._store` runs the queries."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prompttune.contract import (
    BudgetUsed,
    ContractError,
    Dataset,
    Estimate,
    Job,
    JobResult,
    JobSpec,
    JobState,
    ModelSpec,
    NewBest,
    Notice,
    PhaseChanged,
    Progress,
    SearchSpec,
    StateChanged,
    TaskSpec,
    TrialFinished,
    from_document,
    to_document,
    wire,
)
from prompttune.search import InvalidArgument
from prompttune.server._db import JobRow
from prompttune.v1 import optimizer_pb2 as pb

TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
MAX_ERROR_CHARS = 2000

EventPayload = StateChanged | PhaseChanged | TrialFinished | NewBest | BudgetUsed | Notice
EVENT_FIELDS: dict[type, str] = {
    StateChanged: "state_changed",
    PhaseChanged: "phase_changed",
    TrialFinished: "trial_finished",
    NewBest: "new_best",
    BudgetUsed: "budget_used",
    Notice: "notice",
}
STATE_NUMBERS: dict[JobState, int] = {
    state: int(pb.JobState.Value(f"JOB_STATE_{state.name}")) for state in JobState
}
STATES: dict[int, JobState] = {number: state for state, number in STATE_NUMBERS.items()}
TERMINAL_NUMBERS = tuple(STATE_NUMBERS[state] for state in TERMINAL_STATES)


@dataclass(frozen=True)
class StoredSpec:
    """What a job row keeps of its JobSpec: everything but the dataset. Rows written before
    multi-model and template jobs lack `models` and `template_job_id`: the defaults."""

    task: TaskSpec
    model: ModelSpec = field(default_factory=ModelSpec)
    search: SearchSpec = field(default_factory=SearchSpec)
    request_id: str = ""
    models: tuple[ModelSpec, ...] = ()
    template_job_id: str = ""

    @classmethod
    def of(cls, spec: JobSpec) -> StoredSpec:
        return cls(
            spec.task, spec.model, spec.search, spec.request_id, spec.models, spec.template_job_id
        )


def safe_text(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """`text` fit for any database text column: NUL escaped, at most `limit` characters."""
    text = text.replace("\x00", "\\x00")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def spec_digest(spec: JobSpec, dataset: bytes | None = None) -> str:
    """Identity of a request body (request_id aside), for idempotent CreateJob. `dataset`:
    the spec's serialised dataset when the caller has it already."""
    if dataset is None:
        dataset = dataset_bytes(spec.dataset)
    return hashlib.sha256(_spec_document(spec).encode() + dataset).hexdigest()


def _spec_document(spec: JobSpec) -> str:
    document = to_document(StoredSpec.of(spec))
    document.pop("request_id")
    # Single-model requests keep the digest they had before these fields existed.
    for name in ("models", "template_job_id"):
        if not document[name]:
            document.pop(name)
    return json.dumps(document, sort_keys=True)


def dataset_bytes(dataset: Dataset) -> bytes:
    return bytes(wire.to_message(dataset).SerializeToString(deterministic=True))


# Page tokens: urlsafe base64 of (created_at, row number) plus a check of 8 bytes, so a
# malformed or altered token is refused instead of reaching the database.
_CURSOR = struct.Struct(">dq")


def encode_page_token(created_at: float, num: int) -> str:
    packed = _CURSOR.pack(created_at, num)
    check = hashlib.sha256(b"prompttune-page|" + packed).digest()[:8]
    return base64.urlsafe_b64encode(packed + check).decode().rstrip("=")


def decode_page_token(token: str) -> tuple[float, int]:
    """(created_at, num) of a token from `encode_page_token`; InvalidArgument otherwise."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (ValueError, TypeError):
        raw = b""
    size = _CURSOR.size
    if len(token) > 64 or len(raw) != size + 8:
        raise InvalidArgument("page_token", "is not a token from ListJobs")
    packed, check = raw[:size], raw[size:]
    created_at, num = _CURSOR.unpack(packed)
    valid = hashlib.sha256(b"prompttune-page|" + packed).digest()[:8] == check
    if not (valid and math.isfinite(created_at) and 0 < num < 2**31):
        raise InvalidArgument("page_token", "is not a token from ListJobs")
    return float(created_at), int(num)


def result_bytes(result: JobResult) -> bytes:
    return bytes(wire.to_message(result).SerializeToString())


def _stored_spec(row: JobRow) -> StoredSpec:
    if not row.spec:
        raise ValueError("the job has no stored spec")
    return from_document(StoredSpec, json.loads(row.spec))


def full_spec(row: JobRow, payload: bytes | None) -> JobSpec:
    """The job's spec from its row and its dataset row's payload."""
    stored = _stored_spec(row)
    if payload is None:
        raise KeyError(f"job {row.id} has no stored dataset")
    dataset = wire.from_message(Dataset, pb.Dataset.FromString(payload), "dataset")
    return JobSpec(
        stored.task,
        dataset,
        stored.model,
        stored.search,
        stored.request_id,
        stored.models,
        stored.template_job_id,
    )


_UNREADABLE = StoredSpec(TaskSpec(description="(unreadable stored spec)"))


def _time(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def to_job(row: JobRow) -> Job:
    try:
        spec = _stored_spec(row)
    except (ContractError, ValueError):
        spec = _UNREADABLE  # a job from an older, undecodable request still lists and deletes
    return Job(
        id=row.id,
        state=STATES.get(row.state, JobState.UNSPECIFIED),
        create_time=_time(row.created_at),
        update_time=_time(row.updated_at),
        task=spec.task,
        model=spec.model,
        search=spec.search,
        progress=_decode(Progress, pb.Progress, row.progress) or Progress(),
        result=_decode(JobResult, pb.JobResult, row.result),
        error=row.error,
        estimate=_decode(Estimate, pb.Estimate, row.estimate),
        request_id=row.request_id or "",
        models=spec.models,
        template_job_id=spec.template_job_id,
    )


def _decode(cls: type[Any], message: Any, payload: bytes | None) -> Any:
    if not payload:
        return None
    return wire.from_message(cls, message.FromString(payload))
