"""Durable job storage: jobs, their datasets, events and leases, in any SQLAlchemy database.

A job row keeps the validated spec without its dataset (a small JSON document of contract
types) plus progress, estimate and result; the dataset lives in its own table and is read
only to run the job. Reading, listing and watching jobs never touch datasets. Every method
opens its own short transaction, so one store is safe to share between the API's event loop
and worker threads. Text written to the database never contains NUL (PostgreSQL refuses it).
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from prompttune.contract import (
    ContractError,
    Estimate,
    Job,
    JobEvent,
    JobPage,
    JobResult,
    JobSpec,
    JobState,
    Progress,
    StateChanged,
    to_document,
    wire,
)
from prompttune.search import FailedPrecondition, NotFound, PromptTuneError
from prompttune.server._auth import DEFAULT_TENANT
from prompttune.server._db import DatasetRow, EventRow, HelperSlotRow, JobRow
from prompttune.server._records import (
    EVENT_FIELDS,
    STATE_NUMBERS,
    STATES,
    TERMINAL_NUMBERS,
    EventPayload,
    StoredSpec,
    dataset_bytes,
    decode_page_token,
    encode_page_token,
    full_spec,
    result_bytes,
    safe_text,
    spec_digest,
    to_job,
)
from prompttune.v1 import optimizer_pb2 as pb

# Helpers join a job only in its search phase; once joined they stay through its reflection.
JOINABLE_PHASE = "searching"
SEARCH_PHASES = frozenset({"searching", "reflecting"})


class AlreadyExists(PromptTuneError):
    """A request_id was reused with a different request; `job_id` is the existing job."""

    def __init__(self, request_id: str, job_id: str) -> None:
        super().__init__(
            f"request_id {request_id!r} was used for job {job_id} with a different request"
        )
        self.job_id = job_id


@dataclass(frozen=True)
class ClaimedJob:
    job_id: str
    spec: JobSpec
    tenant: str = DEFAULT_TENANT


@dataclass(frozen=True)
class ClaimedHelper:
    """A helper place (`slot` in 1..parallelism-1) in another worker's running job."""

    job_id: str
    spec: JobSpec
    slot: int
    tenant: str = DEFAULT_TENANT


class JobStore(Protocol):
    """Where jobs, datasets and events live. Implementations are thread-safe."""

    def create(self, spec: JobSpec, estimate: Estimate, tenant: str = ...) -> Job: ...
    def get(self, job_id: str, tenant: str | None = None) -> Job: ...
    def list_jobs(
        self, state: JobState, page_size: int, page_token: str, tenant: str | None = None
    ) -> JobPage: ...
    def request_cancel(self, job_id: str, tenant: str | None = None) -> Job: ...
    def delete(self, job_id: str, tenant: str | None = None) -> None: ...
    def cancel_requested(self, job_id: str) -> bool: ...
    def claim(self, worker_id: str, lease_seconds: float) -> ClaimedJob | None: ...
    def renew_lease(self, job_id: str, worker_id: str, lease_seconds: float) -> bool: ...
    def append_event(self, job_id: str, payload: EventPayload) -> int: ...
    def events_after(self, job_id: str, sequence: int, limit: int) -> list[JobEvent]: ...
    def set_progress(self, job_id: str, progress: Progress) -> None: ...
    def finish(
        self, job_id: str, state: JobState, result: JobResult | None, error: str
    ) -> None: ...


# PostgreSQL NOTIFY channel of new events (payload: the job id); see `_notify.py`.
EVENTS_CHANNEL = "prompttune_events"


def new_job_id() -> str:
    return "job-" + secrets.token_hex(8)


class SqlJobStore:
    """JobStore over SQLAlchemy. Claims use FOR UPDATE SKIP LOCKED where the database has it."""

    def __init__(self, engine: Engine, max_attempts: int = 3) -> None:
        self._engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._skip_locked = engine.dialect.name == "postgresql"
        self._max_attempts = max_attempts

    def create(self, spec: JobSpec, estimate: Estimate, tenant: str = DEFAULT_TENANT) -> Job:
        """Inserts a QUEUED job of `tenant` with its dataset. A reused request_id returns that
        tenant's existing job when the request is the same, else raises AlreadyExists."""
        dataset = dataset_bytes(spec.dataset)
        digest = spec_digest(spec, dataset)
        if spec.request_id:
            existing = self._by_request_id(tenant, spec.request_id, digest)
            if existing is not None:
                return existing
        row = self._new_row(spec, estimate, tenant, digest)
        try:
            with self._sessions.begin() as session:
                session.add(row)
                session.add(DatasetRow(job_id=row.id, payload=dataset))
                session.add_all(
                    HelperSlotRow(job_id=row.id, slot=slot, done=False)
                    for slot in range(1, spec.search.parallelism)
                )
        except IntegrityError:
            # A concurrent CreateJob with the same request_id won the race.
            existing = self._by_request_id(tenant, spec.request_id, digest)
            if existing is None:
                raise
            return existing
        self.append_event(row.id, StateChanged(JobState.QUEUED))
        return self.get(row.id)

    @staticmethod
    def _new_row(spec: JobSpec, estimate: Estimate, tenant: str, digest: str) -> JobRow:
        now = time.time()
        stored = StoredSpec.of(spec)
        return JobRow(
            id=new_job_id(),
            tenant=tenant,
            request_id=spec.request_id or None,
            state=STATE_NUMBERS[JobState.QUEUED],
            spec=json.dumps(to_document(stored), sort_keys=True),
            body_digest=digest,
            attempts=0,
            progress=wire.to_message(Progress(phase="queued")).SerializeToString(),
            phase="queued",
            parallelism=spec.search.parallelism,
            estimate=wire.to_message(estimate).SerializeToString(),
            error="",
            cancel_requested=False,
            created_at=now,
            updated_at=now,
        )

    def _by_request_id(self, tenant: str, request_id: str, digest: str) -> Job | None:
        query = sa.select(JobRow).where(JobRow.tenant == tenant, JobRow.request_id == request_id)
        with self._sessions() as session:
            row = session.scalar(query)
        if row is None:
            return None
        if row.body_digest != digest:
            raise AlreadyExists(request_id, row.id)
        return to_job(row)

    def get(self, job_id: str, tenant: str | None = None) -> Job:
        """The job; NotFound also when it belongs to another tenant (None: any tenant)."""
        with self._sessions() as session:
            return to_job(self._row(session, job_id, tenant))

    def state(self, job_id: str) -> JobState:
        with self._sessions() as session:
            return STATES[self._row(session, job_id).state]

    def tenant_of(self, job_id: str) -> str:
        with self._sessions() as session:
            return self._row(session, job_id).tenant

    def job_spec(self, job_id: str, tenant: str | None = None) -> JobSpec:
        """The job's full spec, dataset included (the worker's and GetJobDataset's read);
        NotFound also when it belongs to another tenant (None: any tenant)."""
        with self._sessions() as session:
            return _full_spec(session, self._row(session, job_id, tenant))

    def tenant_job_spec(self, job_id: str, tenant: str) -> JobSpec:
        """`tenant`'s job's full spec, dataset included; another tenant's job is NotFound."""
        with self._sessions() as session:
            return _full_spec(session, self._row(session, job_id, tenant))

    @staticmethod
    def _row(session: Session, job_id: str, tenant: str | None = None) -> JobRow:
        row = session.scalar(sa.select(JobRow).where(JobRow.id == job_id))
        # Another tenant's job looks exactly like a missing one.
        if row is None or (tenant is not None and row.tenant != tenant):
            raise NotFound(f"job {job_id!r} not found")
        return row

    def list_jobs(
        self, state: JobState, page_size: int, page_token: str, tenant: str | None = None
    ) -> JobPage:
        """Newest first, only `tenant`'s jobs (None: all); `state` UNSPECIFIED: every state.
        Raises InvalidArgument for a page token this store did not hand out."""
        order = (JobRow.created_at.desc(), JobRow.num.desc())
        query = sa.select(JobRow).order_by(*order).limit(page_size + 1)
        if tenant is not None:
            query = query.where(JobRow.tenant == tenant)
        if state is not JobState.UNSPECIFIED:
            query = query.where(JobRow.state == STATE_NUMBERS[state])
        if page_token:
            created_at, num = decode_page_token(page_token)
            query = query.where(
                sa.or_(
                    JobRow.created_at < created_at,
                    sa.and_(JobRow.created_at == created_at, JobRow.num < num),
                )
            )
        with self._sessions() as session:
            rows = list(session.scalars(query))
        last = rows[page_size - 1] if len(rows) > page_size else None
        token = "" if last is None else encode_page_token(last.created_at, last.num)
        return JobPage(tuple(to_job(row) for row in rows[:page_size]), token)

    def count_by_state(self) -> dict[int, int]:
        """Number of jobs per state (proto enum numbers), for metrics."""
        query = sa.select(JobRow.state, sa.func.count()).group_by(JobRow.state)
        with self._sessions() as session:
            return {int(state): int(count) for state, count in session.execute(query)}

    def request_cancel(self, job_id: str, tenant: str | None = None) -> Job:
        """Queued jobs are cancelled at once; running ones are flagged for their worker."""
        with self._sessions.begin() as session:
            row = self._row(session, job_id, tenant)  # NotFound also for another tenant's job
            queued = row.state == STATE_NUMBERS[JobState.QUEUED]
            if row.state not in TERMINAL_NUMBERS:
                row.cancel_requested = True
                row.updated_at = time.time()
        if queued:
            self.finish(job_id, JobState.CANCELLED, None, "")
        return self.get(job_id, tenant)

    def delete(self, job_id: str, tenant: str | None = None) -> None:
        """Removes a finished job with its dataset, events and helper slots.
        Raises FailedPrecondition for a queued or running job, NotFound for a missing one."""
        with self._sessions.begin() as session:
            row = self._row(session, job_id, tenant)
            if row.state not in TERMINAL_NUMBERS:
                state = STATES[row.state].value
                raise FailedPrecondition(f"job {job_id} is {state}: cancel it first")
            for table in (EventRow, DatasetRow, HelperSlotRow):
                session.execute(sa.delete(table).where(table.job_id == job_id))
            session.delete(row)

    def cancel_requested(self, job_id: str) -> bool:
        with self._sessions() as session:
            return bool(self._row(session, job_id).cancel_requested)

    def claim(self, worker_id: str, lease_seconds: float) -> ClaimedJob | None:
        """Takes the oldest queued job, or a running one whose lease expired. A job claimed
        `max_attempts` times already, or whose spec cannot be read, is failed instead (and
        None returned: the caller simply claims again)."""
        now = time.time()
        running, queued = STATE_NUMBERS[JobState.RUNNING], STATE_NUMBERS[JobState.QUEUED]
        claimable = sa.or_(
            JobRow.state == queued,
            sa.and_(JobRow.state == running, JobRow.lease_expires_at < now),
        )
        query = sa.select(JobRow).where(claimable).order_by(JobRow.num).limit(1)
        if self._skip_locked:
            query = query.with_for_update(skip_locked=True)
        failure = ""
        with self._sessions.begin() as session:
            row = session.scalar(query)
            if row is None:
                return None
            attempts = self._take(session, row, worker_id, now + lease_seconds)
            if not attempts:
                return None
            job_id, tenant = row.id, row.tenant
            if attempts > self._max_attempts:
                failure = f"abandoned after {self._max_attempts} attempts: its worker stopped"
            else:
                try:
                    spec = _full_spec(session, row)
                except (ContractError, ValueError, KeyError) as error:
                    failure = f"stored job spec is unreadable: {error}"
        if failure:
            self.finish(job_id, JobState.FAILED, None, failure)
            return None
        self.append_event(job_id, StateChanged(JobState.RUNNING))
        return ClaimedJob(job_id=job_id, spec=spec, tenant=tenant)

    @staticmethod
    def _take(session: Session, row: JobRow, worker_id: str, lease_until: float) -> int:
        """Takes `row` for `worker_id` unless another worker was faster; returns the job's
        attempt count including this claim, or 0 when the claim was lost."""
        attempts = row.attempts + 1
        claimed = session.execute(
            sa.update(JobRow)
            .where(JobRow.num == row.num, JobRow.state == row.state)
            .where(sa.or_(JobRow.lease_owner.is_(None), JobRow.lease_owner == row.lease_owner))
            .values(
                state=STATE_NUMBERS[JobState.RUNNING],
                phase="starting",  # helpers wait for this worker's search phase
                lease_owner=worker_id,
                lease_expires_at=lease_until,
                attempts=attempts,
                updated_at=time.time(),
            )
            .execution_options(synchronize_session=False)
        )
        return attempts if claimed.rowcount == 1 else 0  # type: ignore[attr-defined]

    def renew_lease(self, job_id: str, worker_id: str, lease_seconds: float) -> bool:
        with self._sessions.begin() as session:
            renewed = session.execute(
                sa.update(JobRow)
                .where(JobRow.id == job_id, JobRow.lease_owner == worker_id)
                .where(JobRow.state == STATE_NUMBERS[JobState.RUNNING])
                .values(lease_expires_at=time.time() + lease_seconds)
            )
            return bool(renewed.rowcount == 1)  # type: ignore[attr-defined]

    def claim_helper(self, worker_id: str, lease_seconds: float) -> ClaimedHelper | None:
        """Takes a helper place of the oldest running job in its search phase whose worker
        holds a live lease: a slot never taken, or one whose helper's lease expired."""
        now = time.time()
        query = (
            sa.select(HelperSlotRow)
            .join(JobRow, JobRow.id == HelperSlotRow.job_id)
            .where(
                JobRow.state == STATE_NUMBERS[JobState.RUNNING],
                JobRow.phase == JOINABLE_PHASE,
                JobRow.cancel_requested.is_(False),
                JobRow.lease_expires_at >= now,
                HelperSlotRow.done.is_(False),
                sa.or_(HelperSlotRow.owner.is_(None), HelperSlotRow.lease_expires_at < now),
            )
            .order_by(JobRow.num, HelperSlotRow.slot)
            .limit(1)
        )
        if self._skip_locked:
            query = query.with_for_update(skip_locked=True, of=HelperSlotRow)
        with self._sessions.begin() as session:
            slot = session.scalar(query)
            if slot is None:
                return None
            previous = (
                HelperSlotRow.owner.is_(None)
                if slot.owner is None
                else (HelperSlotRow.owner == slot.owner)
            )
            claimed = session.execute(
                sa.update(HelperSlotRow)
                .where(HelperSlotRow.num == slot.num, HelperSlotRow.done.is_(False), previous)
                .values(owner=worker_id, lease_expires_at=now + lease_seconds)
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                return None  # another worker took it first (SQLite: no row locks)
            job = self._row(session, slot.job_id)
            return ClaimedHelper(
                job_id=job.id, spec=_full_spec(session, job), slot=slot.slot, tenant=job.tenant
            )

    def renew_helper_lease(
        self, job_id: str, slot: int, worker_id: str, lease_seconds: float
    ) -> bool:
        with self._sessions.begin() as session:
            renewed = session.execute(
                self._own_slot(job_id, slot, worker_id).values(
                    lease_expires_at=time.time() + lease_seconds
                )
            )
            return bool(renewed.rowcount == 1)  # type: ignore[attr-defined]

    def release_helper(self, job_id: str, slot: int, worker_id: str, done: bool) -> None:
        """Frees the slot; `done` (the helper finished its part) keeps it from being taken
        again, otherwise another worker may take it at once."""
        with self._sessions.begin() as session:
            session.execute(
                self._own_slot(job_id, slot, worker_id).values(
                    owner=None, lease_expires_at=None, done=done
                )
            )

    @staticmethod
    def _own_slot(job_id: str, slot: int, worker_id: str) -> sa.Update:
        return sa.update(HelperSlotRow).where(
            HelperSlotRow.job_id == job_id,
            HelperSlotRow.slot == slot,
            HelperSlotRow.owner == worker_id,
        )

    def search_open(self, job_id: str) -> bool:
        """True while the job runs its search phase and no cancellation was requested."""
        query = sa.select(JobRow.state, JobRow.phase, JobRow.cancel_requested).where(
            JobRow.id == job_id
        )
        with self._sessions() as session:
            row = session.execute(query).one_or_none()
        return bool(
            row is not None
            and row.state == STATE_NUMBERS[JobState.RUNNING]
            and row.phase in SEARCH_PHASES
            and not row.cancel_requested
        )

    def append_event(self, job_id: str, payload: EventPayload) -> int:
        """Stores the event with the next sequence number of its job and returns that number."""
        for attempt in range(_EVENT_ATTEMPTS):
            try:
                with self._sessions.begin() as session:
                    return self._add_event(session, job_id, payload)
            except IntegrityError:
                # SQLite does not lock rows: another writer took this number; take the next.
                time.sleep(0.001 * attempt)
        raise RuntimeError(f"could not append an event to job {job_id}")

    def _add_event(self, session: Session, job_id: str, payload: EventPayload) -> int:
        """Adds the event inside the caller's transaction. On PostgreSQL the job row is locked
        first, so concurrent writers of one job take turns instead of colliding."""
        if self._skip_locked:
            session.execute(sa.select(JobRow.num).where(JobRow.id == job_id).with_for_update())
        last = session.scalar(
            sa.select(sa.func.max(EventRow.sequence)).where(EventRow.job_id == job_id)
        )
        sequence = (last or 0) + 1
        kind: dict[str, Any] = {EVENT_FIELDS[type(payload)]: payload}
        event = JobEvent(job_id=job_id, sequence=sequence, time=datetime.now(UTC), **kind)
        message = wire.to_message(event)
        session.add(EventRow(job_id=job_id, sequence=sequence, payload=message.SerializeToString()))
        session.flush()
        if self._skip_locked:
            # Delivered on commit, so a woken watcher always finds the event.
            session.execute(sa.select(sa.func.pg_notify(EVENTS_CHANNEL, job_id)))
        return sequence

    def events_after(self, job_id: str, sequence: int, limit: int) -> list[JobEvent]:
        query = (
            sa.select(EventRow.payload)
            .where(EventRow.job_id == job_id, EventRow.sequence > sequence)
            .order_by(EventRow.sequence)
            .limit(limit)
        )
        with self._sessions() as session:
            payloads = list(session.scalars(query))
        return [wire.from_message(JobEvent, pb.JobEvent.FromString(p)) for p in payloads]

    def set_progress(self, job_id: str, progress: Progress) -> None:
        with self._sessions.begin() as session:
            session.execute(
                sa.update(JobRow)
                .where(JobRow.id == job_id)
                .values(
                    progress=wire.to_message(progress).SerializeToString(),
                    phase=safe_text(progress.phase, 32),
                    updated_at=time.time(),
                )
            )

    def finish(self, job_id: str, state: JobState, result: JobResult | None, error: str) -> None:
        """Moves a job to a terminal state and stores the state event in the same transaction,
        so a watcher that sees the terminal state also finds its event. Idempotent. `error` is
        stored NUL-escaped and cut to MAX_ERROR_CHARS."""
        error = safe_text(error)
        for attempt in range(_EVENT_ATTEMPTS):
            try:
                with self._sessions.begin() as session:
                    row = self._row(session, job_id)
                    if row.state in TERMINAL_NUMBERS:
                        return
                    row.state = STATE_NUMBERS[state]
                    row.result = None if result is None else result_bytes(result)
                    row.error = error
                    row.lease_owner = None
                    row.lease_expires_at = None
                    row.updated_at = time.time()
                    self._add_event(session, job_id, StateChanged(state, error))
                return
            except IntegrityError:
                time.sleep(0.001 * attempt)
        raise RuntimeError(f"could not finish job {job_id}")


_EVENT_ATTEMPTS = 50


def _full_spec(session: Session, row: JobRow) -> JobSpec:
    payload = session.scalar(sa.select(DatasetRow.payload).where(DatasetRow.job_id == row.id))
    return full_spec(row, payload)
