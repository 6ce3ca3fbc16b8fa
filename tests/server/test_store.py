"""The job store on SQLite and on the real PostgreSQL: exclusive claims under concurrency,
lease expiry and reclaim, helper slots, gap-free event sequences, idempotent creation."""

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
            connection.execute(sa.text("DELETE FROM pt_job_helpers"))
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


def parallel_request(parallelism: int) -> pb.CreateJobRequest:
    message = request()
    message.search.parallelism = parallelism
    return message


def searching_job(store: SqlJobStore, parallelism: int, lease_seconds: float = 60) -> str:
    """A job with `parallelism` claimed by a primary that reached its search phase."""
    job = store.create(parallel_request(parallelism), pb.Estimate())
    claimed = store.claim("primary", lease_seconds)
    assert claimed is not None and claimed.job_id == job.id
    store.set_progress(job.id, pb.Progress(phase="searching"))
    return job.id


def test_helpers_join_only_searching_jobs_with_free_slots(store: SqlJobStore) -> None:
    single = store.create(request(), pb.Estimate())
    assert store.claim("primary-0", 60) is not None
    store.set_progress(single.id, pb.Progress(phase="searching"))
    parallel = store.create(parallel_request(3), pb.Estimate())
    assert store.claim("primary-1", 60) is not None
    store.set_progress(parallel.id, pb.Progress(phase="proposing"))
    assert store.claim_helper("h0", 60) is None  # parallelism 1, and not searching yet

    store.set_progress(parallel.id, pb.Progress(phase="searching"))
    assert store.search_open(parallel.id)
    places = [store.claim_helper(f"h{i}", 60) for i in range(3)]
    assert [(p.job_id, p.slot) for p in places if p is not None] == [
        (parallel.id, 1),
        (parallel.id, 2),
    ]
    assert places[2] is None  # two helper slots for parallelism 3

    store.release_helper(parallel.id, 1, "h0", done=False)
    again = store.claim_helper("h3", 60)
    assert again is not None and again.slot == 1
    store.release_helper(parallel.id, 2, "h1", done=True)
    assert store.claim_helper("h4", 60) is None  # a finished helper's slot stays closed

    store.set_progress(parallel.id, pb.Progress(phase="validating"))
    assert not store.search_open(parallel.id)


def test_concurrent_helpers_take_each_slot_once(store: SqlJobStore) -> None:
    job_ids = {searching_job(store, parallelism=4) for _ in range(3)}
    taken: list[tuple[str, int]] = []
    lock = threading.Lock()

    def helper(name: str) -> None:
        while (place := store.claim_helper(name, lease_seconds=60)) is not None:
            with lock:
                taken.append((place.job_id, place.slot))

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(helper, [f"h{i}" for i in range(6)]))
    assert sorted(taken) == sorted((job_id, slot) for job_id in job_ids for slot in (1, 2, 3))


def test_expired_helper_slot_is_reclaimed_and_the_old_helper_loses_it(
    store: SqlJobStore,
) -> None:
    job_id = searching_job(store, parallelism=2)
    first = store.claim_helper("dead-helper", lease_seconds=0.3)
    assert first is not None
    assert store.claim_helper("other", lease_seconds=60) is None
    time.sleep(0.5)
    second = store.claim_helper("other", lease_seconds=60)
    assert second is not None and (second.job_id, second.slot) == (job_id, 1)
    assert not store.renew_helper_lease(job_id, 1, "dead-helper", 60)
    assert store.renew_helper_lease(job_id, 1, "other", 60)


def test_no_helper_joins_a_job_whose_primary_died_or_was_cancelled(store: SqlJobStore) -> None:
    cancelled = searching_job(store, parallelism=2)
    store.request_cancel(cancelled)
    dead = searching_job(store, parallelism=2, lease_seconds=0.3)
    time.sleep(0.5)
    assert store.claim_helper("h", 60) is None
    assert not store.search_open(cancelled)
    assert store.search_open(dead)  # the job itself is reclaimed by `claim`, not by helpers
