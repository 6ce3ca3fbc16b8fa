"""The job store on SQLite and on the real PostgreSQL: exclusive claims under concurrency,
lease expiry and reclaim, helper slots, gap-free event sequences, idempotent creation."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
import sqlalchemy as sa

from prompttune.contract import (
    Dataset,
    Estimate,
    Example,
    JobResult,
    JobSpec,
    JobState,
    ModelSpec,
    PhaseChanged,
    Progress,
    Prompt,
    PromptScores,
    Score,
    SearchSpec,
    TaskSpec,
    Usage,
)
from prompttune.search import FailedPrecondition, InvalidArgument, NotFound
from prompttune.server import SqlJobStore
from prompttune.server._db import create_db_engine
from prompttune.server._store import AlreadyExists


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
            connection.execute(sa.text("DELETE FROM pt_job_datasets"))
            connection.execute(sa.text("DELETE FROM pt_jobs"))
    yield SqlJobStore(engine)
    engine.dispose()


ESTIMATE = Estimate(llm_calls=10, tokens=100)


def request(request_id: str = "", parallelism: int = 1) -> JobSpec:
    return JobSpec(
        task=TaskSpec(description="d"),
        dataset=Dataset.from_splits((), (Example("x", "y", "v1"),)),
        search=SearchSpec(parallelism=parallelism),
        request_id=request_id,
    )


def result(summary: str, partial: bool = False) -> JobResult:
    scores = PromptScores(Prompt(instruction="d"), Score(0.5, 0.4, 0.6, 1))
    return JobResult(
        scores, scores, False, summary, Usage(), 1, 0, 1.0, "max_trials", partial=partial
    )


def test_concurrent_workers_claim_each_job_exactly_once(store: SqlJobStore) -> None:
    ids = {store.create(request(), ESTIMATE).id for _ in range(24)}
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while (job := store.claim(name, lease_seconds=60)) is not None:
            with lock:
                claimed.append(job.job_id)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(worker, [f"w{i}" for i in range(4)]))
    assert Counter(claimed) == Counter(ids)
    assert all(store.get(job_id).state == JobState.RUNNING for job_id in ids)


def test_expired_lease_is_reclaimed_and_the_old_owner_loses_it(store: SqlJobStore) -> None:
    job = store.create(request(), ESTIMATE)
    first = store.claim("dead-worker", lease_seconds=1.0)
    assert first is not None and first.job_id == job.id
    assert store.claim("other", lease_seconds=60) is None  # lease still valid
    time.sleep(1.2)
    second = store.claim("other", lease_seconds=60)
    assert second is not None and second.job_id == job.id
    assert not store.renew_lease(job.id, "dead-worker", 60)
    assert store.renew_lease(job.id, "other", 60)


def test_concurrent_event_appends_get_gap_free_sequences(store: SqlJobStore) -> None:
    job = store.create(request(), ESTIMATE)
    phase = PhaseChanged(phase="searching")
    with ThreadPoolExecutor(4) as pool:
        sequences = list(pool.map(lambda _: store.append_event(job.id, phase), range(40)))
    assert sorted(sequences) == list(range(2, 42))  # 1 is the QUEUED event
    stored = [event.sequence for event in store.events_after(job.id, 0, 1000)]
    assert stored == list(range(1, 42))
    assert [e.sequence for e in store.events_after(job.id, 30, 1000)] == list(range(31, 42))


def test_concurrent_creates_with_one_request_id_make_one_job(store: SqlJobStore) -> None:
    with ThreadPoolExecutor(4) as pool:
        jobs = list(pool.map(lambda _: store.create(request("same"), ESTIMATE), range(8)))
    assert len({job.id for job in jobs}) == 1


def test_finish_is_terminal_and_idempotent(store: SqlJobStore) -> None:
    job = store.create(request(), ESTIMATE)
    store.claim("w", 60)
    store.finish(job.id, JobState.SUCCEEDED, result("ok"), "")
    store.finish(job.id, JobState.FAILED, None, "late duplicate")
    final = store.get(job.id)
    assert final.state == JobState.SUCCEEDED
    assert final.result is not None and final.result.summary == "ok"
    states = [e.state_changed.state for e in store.events_after(job.id, 0, 100) if e.state_changed]
    assert states == [JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED]


def parallel_request(parallelism: int) -> JobSpec:
    return request(parallelism=parallelism)


def searching_job(store: SqlJobStore, parallelism: int, lease_seconds: float = 60) -> str:
    """A job with `parallelism` claimed by a primary that reached its search phase."""
    job = store.create(parallel_request(parallelism), ESTIMATE)
    claimed = store.claim("primary", lease_seconds)
    assert claimed is not None and claimed.job_id == job.id
    store.set_progress(job.id, Progress(phase="searching"))
    return job.id


def test_helpers_join_only_searching_jobs_with_free_slots(store: SqlJobStore) -> None:
    single = store.create(request(), ESTIMATE)
    assert store.claim("primary-0", 60) is not None
    store.set_progress(single.id, Progress(phase="searching"))
    parallel = store.create(parallel_request(3), ESTIMATE)
    assert store.claim("primary-1", 60) is not None
    store.set_progress(parallel.id, Progress(phase="proposing"))
    assert store.claim_helper("h0", 60) is None  # parallelism 1, and not searching yet

    store.set_progress(parallel.id, Progress(phase="searching"))
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

    store.set_progress(parallel.id, Progress(phase="validating"))
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


def test_jobs_are_read_without_their_dataset_and_claimed_with_it(store: SqlJobStore) -> None:
    spec = request("r1")
    job = store.create(spec, ESTIMATE)
    assert (job.task, job.model, job.search, job.request_id) == (
        spec.task,
        spec.model,
        spec.search,
        "r1",
    )
    assert job.estimate == ESTIMATE and job.state is JobState.QUEUED
    claimed = store.claim("w", 60)
    assert claimed is not None and claimed.spec == spec
    assert store.job_spec(job.id) == spec


def test_reused_request_id_with_another_body_is_refused_naming_the_job(
    store: SqlJobStore,
) -> None:
    first = store.create(request("same"), ESTIMATE)
    assert store.create(request("same"), ESTIMATE).id == first.id
    other = replace(request("same"), task=TaskSpec(description="another task"))
    with pytest.raises(AlreadyExists, match=first.id):
        store.create(other, ESTIMATE)
    # Another tenant may use the same key for its own job.
    assert store.create(other, ESTIMATE, tenant="t2").id != first.id


def test_delete_removes_a_finished_job_with_its_data_and_refuses_a_running_one(
    store: SqlJobStore,
) -> None:
    job = store.create(request(), ESTIMATE)
    store.claim("w", 60)
    with pytest.raises(FailedPrecondition, match="cancel it first"):
        store.delete(job.id)
    with pytest.raises(NotFound):
        store.delete(job.id, tenant="someone-else")
    store.finish(job.id, JobState.CANCELLED, result("partial", partial=True), "")
    store.delete(job.id)
    with pytest.raises(NotFound):
        store.get(job.id)
    assert store.events_after(job.id, 0, 10) == []
    with pytest.raises(NotFound):
        store.job_spec(job.id)


def test_pages_walk_every_job_once_and_altered_tokens_are_refused(store: SqlJobStore) -> None:
    ids = [store.create(request(), ESTIMATE).id for _ in range(5)]
    seen: list[str] = []
    token = ""
    while True:
        page = store.list_jobs(JobState.UNSPECIFIED, 2, token)
        seen.extend(job.id for job in page.jobs)
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(ids))
    first = store.list_jobs(JobState.UNSPECIFIED, 2, "").next_page_token
    altered = first[:-2] + ("AA" if first[-2:] != "AA" else "BB")
    for bad in (altered, "12", "not a token!", "\x00", "A" * 500, "é"):
        with pytest.raises(InvalidArgument, match="page_token"):
            store.list_jobs(JobState.UNSPECIFIED, 2, bad)


def test_a_job_whose_claims_keep_failing_is_failed_after_bounded_attempts(
    tmp_path: Path,
) -> None:
    store = SqlJobStore(create_db_engine(f"sqlite:///{tmp_path / 'a.db'}"), max_attempts=2)
    job = store.create(request(), ESTIMATE)
    for _ in range(2):
        assert store.claim("dying-worker", lease_seconds=0.01) is not None
        time.sleep(0.05)
    assert store.claim("next-worker", 60) is None
    failed = store.get(job.id)
    assert failed.state is JobState.FAILED
    assert "abandoned after 2 attempts" in failed.error


def test_a_job_whose_stored_spec_is_unreadable_fails_on_claim(store: SqlJobStore) -> None:
    job = store.create(request(), ESTIMATE)
    store._engine.dispose()
    with store._engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE pt_jobs SET spec = :spec WHERE id = :id"),
            {"spec": '{"task": {"descriptio": 1}}', "id": job.id},
        )
    assert store.claim("w", 60) is None
    failed = store.get(job.id)
    assert failed.state is JobState.FAILED and "unreadable" in failed.error


def test_errors_with_nul_bytes_and_huge_text_are_stored_safely(store: SqlJobStore) -> None:
    job = store.create(request(), ESTIMATE)
    store.claim("w", 60)
    store.finish(job.id, JobState.FAILED, None, "model\x00name " + "x" * 100_000)
    failed = store.get(job.id)
    assert failed.state is JobState.FAILED
    assert "\x00" not in failed.error and failed.error.startswith("model\\x00name")
    assert len(failed.error) <= 2000


def test_models_and_template_job_id_round_trip(store: SqlJobStore) -> None:
    extra = (ModelSpec.named("gemma"), ModelSpec.named("remote", model="small"))
    spec = replace(request(), models=extra, template_job_id="job-template-1")
    job = store.create(spec, ESTIMATE)
    assert (job.models, job.template_job_id) == (extra, "job-template-1")
    again = store.get(job.id)
    assert (again.models, again.template_job_id) == (extra, "job-template-1")
    stored = store.tenant_job_spec(job.id, "default")
    assert (stored.models, stored.template_job_id) == (extra, "job-template-1")
    assert stored.dataset == spec.dataset
    with pytest.raises(NotFound):
        store.tenant_job_spec(job.id, "another-tenant")
    single = store.get(store.create(request(), ESTIMATE).id)
    assert (single.models, single.template_job_id) == ((), "")
