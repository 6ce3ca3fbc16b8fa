"""The job store on SQLite and on the real PostgreSQL: exclusive claims under concurrency,
lease expiry and reclaim, gap-free event sequences, idempotent creation."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa

from prompttune.server import SqlJobStore
from prompttune.server._db import create_db_engine
from prompttune.v1 import optimizer_pb2 as pb


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlJobStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    engine = create_db_engine(url)
    if request.param == "postgres":
        with engine.begin() as connection:  # a clean slate for each test on the shared database
            connection.execute(sa.text("DELETE FROM pt_job_events"))
            connection.execute(sa.text("DELETE FROM pt_jobs"))
    yield SqlJobStore(engine)
    engine.dispose()


def request(request_id: str = "") -> pb.CreateJobRequest:
    return pb.CreateJobRequest(
        task=pb.TaskSpec(description="d", metric=pb.METRIC_EXACT_MATCH), request_id=request_id
    )


def test_concurrent_workers_claim_each_job_exactly_once(store: SqlJobStore) -> None:
    ids = {store.create(request(), pb.Estimate()).id for _ in range(24)}
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while (job := store.claim(name, lease_seconds=60)) is not None:
            with lock:
                claimed.append(job.job_id)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(worker, [f"w{i}" for i in range(4)]))
    assert Counter(claimed) == Counter(ids)
    assert all(store.get(job_id).state == pb.JOB_STATE_RUNNING for job_id in ids)


def test_expired_lease_is_reclaimed_and_the_old_owner_loses_it(store: SqlJobStore) -> None:
    job = store.create(request(), pb.Estimate())
    first = store.claim("dead-worker", lease_seconds=0.3)
    assert first is not None and first.job_id == job.id
    assert store.claim("other", lease_seconds=60) is None  # lease still valid
    time.sleep(0.5)
    second = store.claim("other", lease_seconds=60)
    assert second is not None and second.job_id == job.id
    assert not store.renew_lease(job.id, "dead-worker", 60)
    assert store.renew_lease(job.id, "other", 60)


def test_concurrent_event_appends_get_gap_free_sequences(store: SqlJobStore) -> None:
    job = store.create(request(), pb.Estimate())
    phase = pb.JobEvent(phase_changed=pb.PhaseChanged(phase="searching"))
    with ThreadPoolExecutor(4) as pool:
        sequences = list(pool.map(lambda _: store.append_event(job.id, phase), range(40)))
    assert sorted(sequences) == list(range(2, 42))  # 1 is the QUEUED event
    stored = [event.sequence for event in store.events_after(job.id, 0, 1000)]
    assert stored == list(range(1, 42))
    assert [e.sequence for e in store.events_after(job.id, 30, 1000)] == list(range(31, 42))


def test_concurrent_creates_with_one_request_id_make_one_job(store: SqlJobStore) -> None:
    with ThreadPoolExecutor(4) as pool:
        jobs = list(pool.map(lambda _: store.create(request("same"), pb.Estimate()), range(8)))
    assert len({job.id for job in jobs}) == 1


def test_finish_is_terminal_and_idempotent(store: SqlJobStore) -> None:
    job = store.create(request(), pb.Estimate())
    store.claim("w", 60)
    store.finish(job.id, pb.JOB_STATE_SUCCEEDED, pb.JobResult(summary="ok"), "")
    store.finish(job.id, pb.JOB_STATE_FAILED, None, "late duplicate")
    final = store.get(job.id)
    assert final.state == pb.JOB_STATE_SUCCEEDED
    assert final.result.summary == "ok"
    states = [e.state_changed.state for e in store.events_after(job.id, 0, 100)]
    assert states == [pb.JOB_STATE_QUEUED, pb.JOB_STATE_RUNNING, pb.JOB_STATE_SUCCEEDED]
