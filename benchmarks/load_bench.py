"""Load benchmark: one server (fake LLM adapters, real gRPC) with N concurrent WatchJob streams
on a set of running jobs, once per wake-up mode, side by side in one run.

Modes: ``poll`` (every stream reads the database every 0.2 s) and ``notify`` (streams sleep
until PostgreSQL LISTEN/NOTIFY says their job has a new event; on SQLite it falls back to
polling). Each mode gets a fresh server subprocess and a fresh database (on PostgreSQL a
throwaway database ``loadbench_<pid>_<mode>``, dropped afterwards).

While every stream is open it times GetJob calls (p50/p99) and measures the server's CPU time
and database transactions per second. Then it cancels the jobs, so every stream ends at a
terminal event, and checks each stream's sequence numbers against the job's full history:
strictly consecutive from 1, none missing, none repeated, ending at the terminal state.

    .venv/bin/python benchmarks/load_bench.py [--db URL] [--modes poll notify]
        [--watchers 200] [--jobs 50] [--gets 500]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SQLITE = "sqlite"
TERMINAL_STATES = (3, 4, 5)  # JOB_STATE_SUCCEEDED, _FAILED, _CANCELLED
# Raw channels of their own, so the streams spread over several HTTP/2 connections.
# Pause between the last stream opening and the measured window: the streams' first reads
# come in one burst, which is not the steady state measured.
SETTLE_SECONDS = 2.0
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1), ("grpc.keepalive_time_ms", 60_000)]


@dataclass(frozen=True)
class LoadConfig:
    """One mode's load: `watchers` streams spread over `jobs` jobs, `streams_per_channel`
    streams per client connection, `gets` GetJob calls paced over `hold_seconds`."""

    watchers: int
    jobs: int
    gets: int
    hold_seconds: float
    streams_per_channel: int = 100


@dataclass(frozen=True)
class ServeConfig:
    """The server subprocess: its database, wake-up mode, worker slots and model delay."""

    db_url: str
    mode: str
    workers: int
    model_delay: float


def serve(config: ServeConfig) -> None:
    """Child process: a server with slow fake models, so jobs keep running and emitting."""
    from tests.fakes import FakeChatModel, FakeEmbedder, FakeResolver, routing_responder
    from tests.server.conftest import CALLER_ENDPOINTS

    from prompttune.server import Adapters, PromptTuneServer, ServerConfig, WorkerConfig
    from prompttune.server._logging import configure_logging

    configure_logging("WARNING")

    def models(endpoint: object) -> FakeChatModel:
        return FakeChatModel(routing_responder, delay=config.model_delay)

    async def run() -> None:
        server_config = ServerConfig(
            port=0,
            db_url=config.db_url,
            workers=config.workers,
            worker=WorkerConfig(poll_seconds=0.2, cancel_check_seconds=0.2),
            endpoint_config=CALLER_ENDPOINTS,
            watch_notify=config.mode == "notify",
        )
        adapters = Adapters(
            chat_models=models, embedder_factory=FakeEmbedder, host_resolver=FakeResolver()
        )
        app = PromptTuneServer(server_config, adapters)
        port = await app.start()
        print(port, type(app.waker).__name__, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await app.stop()

    asyncio.run(run())


class ServerProcess:
    """The server subprocess of one mode; stops when its stdin closes."""

    def __init__(self, config: ServeConfig) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve", json.dumps(dataclasses.asdict(config))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self.process.stdout is not None
        port, self.waker = self.process.stdout.readline().split()
        self.target = f"127.0.0.1:{port}"

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the server process (all its threads)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(60)


@contextlib.contextmanager
def fresh_database(db: str, mode: str) -> Iterator[str]:
    """A new empty database for one mode: a SQLite file in a temporary folder, or a
    throwaway PostgreSQL database next to the one `db` names, dropped afterwards."""
    if db.startswith(SQLITE):
        with tempfile.TemporaryDirectory() as folder:
            yield f"sqlite:///{folder}/load-{mode}.db"
        return
    from sqlalchemy.engine import make_url

    name = f"loadbench_{os.getpid()}_{mode}"
    admin = make_url(db).set(database="postgres")
    _admin_execute(admin, f"CREATE DATABASE {name}")
    try:
        yield make_url(db).set(database=name).render_as_string(hide_password=False)
    finally:
        _admin_execute(admin, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _admin_execute(url: Any, statement: str) -> None:
    import psycopg

    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute(statement)


def db_transactions(db_url: str) -> int | None:
    """Committed plus rolled-back transactions of `db_url`'s PostgreSQL database so far (a
    proxy for queries); None on SQLite."""
    if db_url.startswith(SQLITE):
        return None
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(db_url)
    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute("SELECT pg_stat_force_next_flush()")
        row = connection.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
            (url.database,),
        ).fetchone()
    return int(row[0]) if row is not None else None


@dataclass
class Stream:
    """What one WatchJob stream received: sequence numbers and whether each was terminal."""

    job_id: str
    sequences: list[int] = field(default_factory=list)
    terminal: list[bool] = field(default_factory=list)
    error: str = ""
    opened: asyncio.Event = field(default_factory=asyncio.Event)


async def watch(stub: Any, stream: Stream, after_sequence: int = 0) -> None:
    """Reads one raw WatchJob stream to its end. Raw, not the SDK: the SDK drops repeated
    sequence numbers and resumes after UNAVAILABLE, which would hide what is measured."""
    from prompttune.v1 import optimizer_pb2 as pb

    request = pb.WatchJobRequest(job_id=stream.job_id, after_sequence=after_sequence)
    try:
        async for event in stub.WatchJob(request):
            stream.sequences.append(event.sequence)
            changed = event.WhichOneof("kind") == "state_changed"
            stream.terminal.append(changed and event.state_changed.state in TERMINAL_STATES)
            stream.opened.set()
    except Exception as error:  # counted and reported, not raised
        stream.error = repr(error)
    finally:
        stream.opened.set()


def violations(stream: Stream, history: Stream) -> dict[str, int]:
    """The stream's events missing or repeated against the job's full history, and whether
    the stream failed (ended without its terminal event, or with an error)."""
    seen = stream.sequences
    pairs = list(itertools.pairwise(seen))
    gaps = sum(later - earlier - 1 for earlier, later in pairs if later > earlier + 1)
    first, last = (seen[0], seen[-1]) if seen else (1, 0)
    missing = gaps + (first - 1) + max(0, len(history.sequences) - last)
    return {
        "events_missing": missing,
        "events_duplicated": sum(later <= earlier for earlier, later in pairs),
        "streams_not_terminal": int(not stream.terminal or not stream.terminal[-1]),
        "streams_failed": int(bool(stream.error)),
    }


def check_streams(streams: list[Stream], histories: dict[str, Stream]) -> dict[str, int]:
    """Totals of `violations` over all streams, with events received and expected."""
    totals = dict.fromkeys(violations(Stream(""), Stream("")), 0)
    bad_streams = 0
    for stream in streams:
        found = violations(stream, histories[stream.job_id])
        bad_streams += any(found.values())
        for key, count in found.items():
            totals[key] += count
    return {
        "events_received": sum(len(stream.sequences) for stream in streams),
        "events_expected": sum(len(histories[stream.job_id].sequences) for stream in streams),
        **totals,
        "streams_with_violations": bad_streams,
    }


async def create_jobs(client: Any, jobs: int) -> list[str]:
    """`jobs` jobs whose task descriptions differ, so no job answers from another's cache."""
    from tests.server.conftest import FAKE_MODEL, SMALL_SEARCH, TASK, small_dataset

    from prompttune.client import Job

    ids = []
    for number in range(jobs):
        task = dataclasses.replace(TASK, description=f"{TASK.description} (load job {number})")
        job = await client.create_job(task, small_dataset(), FAKE_MODEL, SMALL_SEARCH)
        assert isinstance(job, Job)
        ids.append(job.id)
    return ids


async def time_gets(client: Any, ids: list[str], config: LoadConfig) -> list[float]:
    """GetJob latencies in ms, one call at a time, paced to spread over `hold_seconds`; stops
    early after three times `hold_seconds` (when the server is too slow)."""
    latencies = []
    interval = config.hold_seconds / config.gets
    started_all = time.perf_counter()
    for number in range(config.gets):
        if time.perf_counter() - started_all > 3 * config.hold_seconds:
            break
        await asyncio.sleep(max(0.0, started_all + number * interval - time.perf_counter()))
        started = time.perf_counter()
        await client.get_job(ids[number % len(ids)])
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


class Window:
    """Server CPU time and database transactions from construction to `figures()`."""

    def __init__(self, server: ServerProcess, db_url: str) -> None:
        self._server, self._db_url = server, db_url
        self._transactions = db_transactions(db_url)
        self._started, self._cpu = time.monotonic(), server.cpu_seconds()

    def figures(self) -> dict[str, float | None]:
        seconds = time.monotonic() - self._started
        cpu = self._server.cpu_seconds() - self._cpu
        after = db_transactions(self._db_url)
        rate = None
        if after is not None and self._transactions is not None:
            rate = round((after - self._transactions) / seconds, 1)
        return {
            "window_seconds": round(seconds, 1),
            "server_cpu_percent": round(100 * cpu / seconds, 1),
            "db_transactions_per_second": rate,
        }


class Watchers:
    """`watchers` raw WatchJob streams over the jobs, `streams_per_channel` per connection."""

    def __init__(self, target: str, ids: list[str], config: LoadConfig) -> None:
        import grpc

        from prompttune.v1 import optimizer_pb2_grpc as pb_grpc

        count = -(-config.watchers // config.streams_per_channel)
        self.channels = [grpc.aio.insecure_channel(target, CHANNEL_OPTIONS) for _ in range(count)]
        self.stubs = [pb_grpc.OptimizerServiceStub(channel) for channel in self.channels]
        self.streams = [Stream(ids[number % len(ids)]) for number in range(config.watchers)]
        self.tasks = [
            asyncio.create_task(watch(self.stubs[number // config.streams_per_channel], stream))
            for number, stream in enumerate(self.streams)
        ]

    async def opened(self, timeout: float) -> float:
        """Seconds until every stream received its first event (or ended)."""
        started = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*(s.opened.wait() for s in self.streams)), timeout)
        return time.monotonic() - started

    def open_count(self) -> int:
        return sum(not task.done() for task in self.tasks)

    async def histories(self, ids: list[str]) -> dict[str, Stream]:
        """Each job's full history, read once from sequence 0 after it ended."""
        histories = {job_id: Stream(job_id) for job_id in ids}
        await asyncio.gather(*(watch(self.stubs[0], h) for h in histories.values()))
        return histories

    async def close(self, timeout: float) -> None:
        await asyncio.wait_for(asyncio.gather(*self.tasks), timeout)
        for channel in self.channels:
            await channel.close()


async def load(server: ServerProcess, db_url: str, config: LoadConfig) -> dict[str, Any]:
    """Opens the streams, times GetJob under them, cancels the jobs and checks the streams."""
    from prompttune.client import AsyncClient

    async with AsyncClient(server.target, timeout=60) as client:
        ids = await create_jobs(client, config.jobs)
        watchers = Watchers(server.target, ids, config)
        open_seconds = await watchers.opened(300)
        await asyncio.sleep(SETTLE_SECONDS)
        window = Window(server, db_url)
        latencies = await time_gets(client, ids, config)
        figures = window.figures()
        open_during_gets = watchers.open_count()
        for job_id in ids:
            await client.cancel_job(job_id)
        ended = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*watchers.tasks), 300)
        drain_seconds = time.monotonic() - ended
        histories = await watchers.histories(ids)
        await watchers.close(60)
    latencies.sort()
    return {
        "streams_open_seconds": round(open_seconds, 1),
        "streams_open_during_gets": open_during_gets,
        "get_job_calls": len(latencies),
        "get_job_p50_ms": round(statistics.median(latencies), 2),
        "get_job_p95_ms": percentile(latencies, 0.95),
        "get_job_p99_ms": percentile(latencies, 0.99),
        "get_job_max_ms": round(latencies[-1], 2),
        **figures,
        "streams_end_after_cancel_seconds": round(drain_seconds, 1),
        **check_streams(watchers.streams, histories),
    }


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    return round(ordered[max(0, math.ceil(len(ordered) * fraction) - 1)], 2)


def run_mode(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    """One mode in its own fresh database and server subprocess."""
    config = LoadConfig(args.watchers, args.jobs, args.gets, args.hold)
    load_average = round(os.getloadavg()[0], 2)
    with fresh_database(args.db, mode) as db_url:
        server = ServerProcess(ServeConfig(db_url, mode, args.workers, args.model_delay))
        try:
            started = time.monotonic()
            figures = asyncio.run(load(server, db_url, config))
            figures["server_peak_rss_mib"] = round(server.peak_rss_mib(), 1)
            figures["wall_seconds"] = round(time.monotonic() - started, 1)
        finally:
            server.stop()
    return {"mode": mode, "waker": server.waker, "machine_load_1min": load_average, **figures}


def passed(figures: dict[str, Any]) -> bool:
    keys = ("events_missing", "events_duplicated", "streams_not_terminal", "streams_failed")
    return not any(figures[key] for key in keys)


def table(results: list[dict[str, Any]]) -> str:
    """A markdown table, one column per mode."""
    header = "| figure | " + " | ".join(str(r["mode"]) for r in results) + " |"
    rule = "|---|" + "---|" * len(results)
    rows = [f"| {key} | " + " | ".join(str(r[key]) for r in results) + " |" for key in results[0]]
    return "\n".join([header, rule, *rows])


LEGEND = (
    "Streams are raw WatchJob calls (the SDK would drop repeats). `events_missing`: sequence "
    "numbers a stream skipped or never reached, against one WatchJob from 0 per job after the "
    "end; `events_duplicated`: numbers not above the previous one; `streams_not_terminal`: "
    "streams whose last event is not a terminal state. `db_transactions_per_second`: "
    "xact_commit + xact_rollback of the benchmark's database in pg_stat_database. "
    "`machine_load_1min`: load average when the mode started (other work shares the machine)."
)


def write_report(args: argparse.Namespace, results: list[dict[str, Any]]) -> Path:
    command = "python benchmarks/load_bench.py " + " ".join(sys.argv[1:])
    backend = "SQLite" if args.db.startswith(SQLITE) else "PostgreSQL"
    report = {
        "command": command.strip(),
        "database": backend,
        "cpus": os.cpu_count(),
        "watchers": args.watchers,
        "jobs": args.jobs,
        "workers": args.workers,
        "model_delay_seconds": args.model_delay,
        "modes": results,
    }
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"load-{stamp}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"load-{stamp}.md").write_text(
        f"# Load benchmark {stamp}\n\n`{report['command']}` on {os.cpu_count()} CPUs (shared "
        f"with other work), {backend}, one server subprocess per mode with {args.workers} "
        f"worker slots, fake LLM adapters ({args.model_delay * 1000:.0f} ms per call), client "
        "in one process on the same machine. GetJob is timed while every stream is open; CPU "
        "and database transactions are measured over the same window.\n\n"
        f"{table(results)}\n\n{LEGEND}\n"
    )
    return out / f"load-{stamp}.md"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", default="sqlite", help="sqlite, or a PostgreSQL URL")
    modes = ("poll", "notify")
    parser.add_argument("--modes", nargs="+", choices=modes, default=list(modes))
    parser.add_argument("--watchers", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--gets", type=int, default=500)
    parser.add_argument("--hold", type=float, default=10.0, help="seconds the gets spread over")
    parser.add_argument("--workers", type=int, default=2, help="worker slots of the server")
    parser.add_argument("--model-delay", type=float, default=0.5, help="seconds per LLM call")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.serve:
        serve(ServeConfig(**json.loads(args.serve)))
        return 0
    results = [run_mode(args, mode) for mode in args.modes]
    print(table(results))
    print(f"written: {write_report(args, results)}")
    return 0 if all(passed(figures) for figures in results) else 1


if __name__ == "__main__":
    sys.exit(main())
