"""Durable job storage: jobs, their events and leases, in any SQLAlchemy database.

Jobs are stored as the serialised CreateJobRequest plus progress/result messages, so what a
caller sent is kept verbatim. Every method opens its own short transaction, so one store is
safe to share between the API's event loop and worker threads.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Protocol

import sqlalchemy as sa
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from prompttune.search import NotFound
from prompttune.server._auth import DEFAULT_TENANT
from prompttune.server._db import EventRow, HelperSlotRow, JobRow
from prompttune.v1 import optimizer_pb2 as pb

TERMINAL_STATES = frozenset({pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED})
# Helpers join a job only in its search phase; once joined they stay through its reflection.
JOINABLE_PHASE = "searching"
SEARCH_PHASES = frozenset({"searching", "reflecting"})


@dataclass(frozen=True)
class ClaimedJob:
    job_id: str
    request: pb.CreateJobRequest
    tenant: str = DEFAULT_TENANT


@dataclass(frozen=True)
class ClaimedHelper:
    """A helper place (`slot` in 1..parallelism-1) in another worker's running job."""

    job_id: str
    request: pb.CreateJobRequest
    slot: int
    tenant: str = DEFAULT_TENANT


class JobStore(Protocol):
    """Where jobs and events live. Implementations are thread-safe."""

    def create(
        self, request: pb.CreateJobRequest, estimate: pb.Estimate, tenant: str = ...
    ) -> pb.Job: ...
    def get(self, job_id: str, tenant: str | None = None) -> pb.Job: ...
    def list_jobs(
        self, state: int, page_size: int, page_token: str, tenant: str | None = None
    ) -> tuple[list[pb.Job], str]: ...
    def request_cancel(self, job_id: str, tenant: str | None = None) -> pb.Job: ...
    def count_by_state(self) -> dict[int, int]: ...
    def cancel_requested(self, job_id: str) -> bool: ...
    def claim(self, worker_id: str, lease_seconds: float) -> ClaimedJob | None: ...
    def renew_lease(self, job_id: str, worker_id: str, lease_seconds: float) -> bool: ...
    def claim_helper(self, worker_id: str, lease_seconds: float) -> ClaimedHelper | None: ...
    def renew_helper_lease(
        self, job_id: str, slot: int, worker_id: str, lease_seconds: float
    ) -> bool: ...
    def release_helper(self, job_id: str, slot: int, worker_id: str, done: bool) -> None: ...
    def search_open(self, job_id: str) -> bool: ...
    def append_event(self, job_id: str, event: pb.JobEvent) -> int: ...
    def events_after(self, job_id: str, sequence: int, limit: int) -> list[pb.JobEvent]: ...
    def set_progress(self, job_id: str, progress: pb.Progress) -> None: ...
    def finish(self, job_id: str, state: int, result: pb.JobResult | None, error: str) -> None: ...


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def new_job_id() -> str:
    return "job-" + secrets.token_hex(8)


class SqlJobStore:
    """JobStore over SQLAlchemy. Claims use FOR UPDATE SKIP LOCKED where the database has it."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._skip_locked = engine.dialect.name == "postgresql"

    def create(
        self, request: pb.CreateJobRequest, estimate: pb.Estimate, tenant: str = DEFAULT_TENANT
    ) -> pb.Job:
        """Inserts a QUEUED job of `tenant`; that tenant's existing job with the same
        request_id is returned instead."""
        if request.request_id:
            existing = self._by_request_id(tenant, request.request_id)
            if existing is not None:
                return existing
        now = time.time()
        parallelism = request.search.parallelism if request.search.HasField("parallelism") else 1
        row = JobRow(
            id=new_job_id(),
            tenant=tenant,
            request_id=request.request_id or None,
            state=pb.JOB_STATE_QUEUED,
            request=request.SerializeToString(),
            progress=pb.Progress(phase="queued").SerializeToString(),
            phase="queued",
            parallelism=parallelism,
            estimate=estimate.SerializeToString(),
            error="",
            cancel_requested=False,
            created_at=now,
            updated_at=now,
        )
        try:
            with self._sessions.begin() as session:
                session.add(row)
                session.add_all(
                    HelperSlotRow(job_id=row.id, slot=slot, done=False)
                    for slot in range(1, parallelism)
                )
        except IntegrityError:
            # A concurrent CreateJob with the same request_id won the race.
            existing = self._by_request_id(tenant, request.request_id)
            if existing is None:
                raise
            return existing
        self.append_event(row.id, _state_event(pb.JOB_STATE_QUEUED, ""))
        return self.get(row.id)

    def _by_request_id(self, tenant: str, request_id: str) -> pb.Job | None:
        query = sa.select(JobRow).where(JobRow.tenant == tenant, JobRow.request_id == request_id)
        with self._sessions() as session:
            row = session.scalar(query)
            return None if row is None else _to_job(row)

    def get(self, job_id: str, tenant: str | None = None) -> pb.Job:
        """The job; NotFound also when it belongs to another tenant (None: any tenant)."""
        with self._sessions() as session:
            return _to_job(self._row(session, job_id, tenant))

    def tenant_of(self, job_id: str) -> str:
        with self._sessions() as session:
            return self._row(session, job_id).tenant

    def get_request(self, job_id: str) -> pb.CreateJobRequest:
        with self._sessions() as session:
            return pb.CreateJobRequest.FromString(self._row(session, job_id).request)

    @staticmethod
    def _row(session: Session, job_id: str, tenant: str | None = None) -> JobRow:
        row = session.scalar(sa.select(JobRow).where(JobRow.id == job_id))
        # Another tenant's job looks exactly like a missing one.
        if row is None or (tenant is not None and row.tenant != tenant):
            raise NotFound(f"job {job_id!r} not found")
        return row

    def list_jobs(
        self, state: int, page_size: int, page_token: str, tenant: str | None = None
    ) -> tuple[list[pb.Job], str]:
        """Newest first, only `tenant`'s jobs (None: all). The page token is the row number
        to continue below."""
        query = sa.select(JobRow).order_by(JobRow.num.desc()).limit(page_size + 1)
        if tenant is not None:
            query = query.where(JobRow.tenant == tenant)
        if state:
            query = query.where(JobRow.state == state)
        if page_token:
            query = query.where(JobRow.num < int(page_token))
        with self._sessions() as session:
            rows = list(session.scalars(query))
        next_token = str(rows[page_size - 1].num) if len(rows) > page_size else ""
        return [_to_job(row) for row in rows[:page_size]], next_token

    def count_by_state(self) -> dict[int, int]:
        """Number of jobs per state, for metrics."""
        query = sa.select(JobRow.state, sa.func.count()).group_by(JobRow.state)
        with self._sessions() as session:
            return {int(state): int(count) for state, count in session.execute(query)}

    def request_cancel(self, job_id: str, tenant: str | None = None) -> pb.Job:
        """Queued jobs are cancelled at once; running ones are flagged for their worker."""
        with self._sessions.begin() as session:
            row = self._row(session, job_id, tenant)  # NotFound also for another tenant's job
            if row.state not in TERMINAL_STATES:
                row.cancel_requested = True
                row.updated_at = time.time()
        with self._sessions() as session:
            queued = self._row(session, job_id, tenant).state == pb.JOB_STATE_QUEUED
        if queued:
            self.finish(job_id, pb.JOB_STATE_CANCELLED, None, "")
        return self.get(job_id, tenant)

    def cancel_requested(self, job_id: str) -> bool:
        with self._sessions() as session:
            return bool(self._row(session, job_id).cancel_requested)

    def claim(self, worker_id: str, lease_seconds: float) -> ClaimedJob | None:
        """Takes the oldest queued job, or a running one whose lease expired."""
        now = time.time()
        claimable = sa.or_(
            JobRow.state == pb.JOB_STATE_QUEUED,
            sa.and_(JobRow.state == pb.JOB_STATE_RUNNING, JobRow.lease_expires_at < now),
        )
        query = sa.select(JobRow).where(claimable).order_by(JobRow.num).limit(1)
        if self._skip_locked:
            query = query.with_for_update(skip_locked=True)
        with self._sessions.begin() as session:
            row = session.scalar(query)
            if row is None:
                return None
            claimed = session.execute(
                sa.update(JobRow)
                .where(JobRow.num == row.num, JobRow.state == row.state)
                .where(sa.or_(JobRow.lease_owner.is_(None), JobRow.lease_owner == row.lease_owner))
                .values(
                    state=pb.JOB_STATE_RUNNING,
                    phase="starting",  # helpers wait for this worker's search phase
                    lease_owner=worker_id,
                    lease_expires_at=now + lease_seconds,
                    updated_at=now,
                )
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                return None
            job_id, request = row.id, pb.CreateJobRequest.FromString(row.request)
            tenant = row.tenant
        self.append_event(job_id, _state_event(pb.JOB_STATE_RUNNING, ""))
        return ClaimedJob(job_id=job_id, request=request, tenant=tenant)

    def renew_lease(self, job_id: str, worker_id: str, lease_seconds: float) -> bool:
        with self._sessions.begin() as session:
            renewed = session.execute(
                sa.update(JobRow)
                .where(JobRow.id == job_id, JobRow.lease_owner == worker_id)
                .where(JobRow.state == pb.JOB_STATE_RUNNING)
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
                JobRow.state == pb.JOB_STATE_RUNNING,
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
                job_id=job.id,
                request=pb.CreateJobRequest.FromString(job.request),
                slot=slot.slot,
                tenant=job.tenant,
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
            and row.state == pb.JOB_STATE_RUNNING
            and row.phase in SEARCH_PHASES
            and not row.cancel_requested
        )

    def append_event(self, job_id: str, event: pb.JobEvent) -> int:
        """Stores the event with the next sequence number of its job and returns that number."""
        for attempt in range(_EVENT_ATTEMPTS):
            try:
                with self._sessions.begin() as session:
                    return self._add_event(session, job_id, event)
            except IntegrityError:
                # SQLite does not lock rows: another writer took this number; take the next.
                time.sleep(0.001 * attempt)
        raise RuntimeError(f"could not append an event to job {job_id}")

    def _add_event(self, session: Session, job_id: str, event: pb.JobEvent) -> int:
        """Adds the event inside the caller's transaction. On PostgreSQL the job row is locked
        first, so concurrent writers of one job take turns instead of colliding."""
        if self._skip_locked:
            session.execute(sa.select(JobRow.num).where(JobRow.id == job_id).with_for_update())
        last = session.scalar(
            sa.select(sa.func.max(EventRow.sequence)).where(EventRow.job_id == job_id)
        )
        stored = pb.JobEvent()
        stored.CopyFrom(event)
        stored.job_id = job_id
        stored.sequence = (last or 0) + 1
        stored.time.CopyFrom(_timestamp(time.time()))
        session.add(
            EventRow(job_id=job_id, sequence=stored.sequence, payload=stored.SerializeToString())
        )
        session.flush()
        return stored.sequence

    def events_after(self, job_id: str, sequence: int, limit: int) -> list[pb.JobEvent]:
        query = (
            sa.select(EventRow.payload)
            .where(EventRow.job_id == job_id, EventRow.sequence > sequence)
            .order_by(EventRow.sequence)
            .limit(limit)
        )
        with self._sessions() as session:
            return [pb.JobEvent.FromString(payload) for payload in session.scalars(query)]

    def set_progress(self, job_id: str, progress: pb.Progress) -> None:
        with self._sessions.begin() as session:
            session.execute(
                sa.update(JobRow)
                .where(JobRow.id == job_id)
                .values(
                    progress=progress.SerializeToString(),
                    phase=progress.phase[:32],
                    updated_at=time.time(),
                )
            )

    def finish(self, job_id: str, state: int, result: pb.JobResult | None, error: str) -> None:
        """Moves a job to a terminal state and stores the state event in the same transaction,
        so a watcher that sees the terminal state also finds its event. Idempotent."""
        for attempt in range(_EVENT_ATTEMPTS):
            try:
                with self._sessions.begin() as session:
                    row = self._row(session, job_id)
                    if row.state in TERMINAL_STATES:
                        return
                    row.state = state
                    row.result = None if result is None else result.SerializeToString()
                    row.error = error
                    row.lease_owner = None
                    row.lease_expires_at = None
                    row.updated_at = time.time()
                    self._add_event(session, job_id, _state_event(state, error))
                return
            except IntegrityError:
                time.sleep(0.001 * attempt)
        raise RuntimeError(f"could not finish job {job_id}")


_EVENT_ATTEMPTS = 50


def _state_event(state: int, error: str) -> pb.JobEvent:
    return pb.JobEvent(state_changed=pb.StateChanged(state=state, error=error))  # type: ignore[arg-type]


def _to_job(row: JobRow) -> pb.Job:
    request = pb.CreateJobRequest.FromString(row.request)
    job = pb.Job(
        id=row.id,
        state=row.state,  # type: ignore[arg-type]
        task=request.task,
        model=request.model,
        search=request.search,
        error=row.error,
        request_id=row.request_id or "",
    )
    job.create_time.CopyFrom(_timestamp(row.created_at))
    job.update_time.CopyFrom(_timestamp(row.updated_at))
    if row.progress:
        job.progress.ParseFromString(row.progress)
    if row.estimate:
        job.estimate.ParseFromString(row.estimate)
    if row.result:
        job.result.ParseFromString(row.result)
    return job
