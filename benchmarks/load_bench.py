"""Load benchmark: one server (fake LLM adapters, real gRPC, SQLite), 50 queued jobs and 200
concurrent WatchJob streams; reports GetJob latency p50/p99 under that load and the server's
peak memory (VmHWM of the server subprocess).

    .venv/bin/python benchmarks/load_bench.py [--watchers 200] [--jobs 50] [--gets 500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def serve(db_url: str) -> None:
    """Child process: a server with slow fake models, so jobs stay queued/running."""
    from tests.fakes import FakeChatModel, FakeEmbedder, routing_responder

    from prompttune.server import Adapters, PromptTuneServer, ServerConfig, WorkerConfig
    from prompttune.server._logging import configure_logging

    configure_logging("WARNING")

    def models(endpoint: object) -> FakeChatModel:
        return FakeChatModel(routing_responder, delay=0.02)

    async def run() -> None:
        config = ServerConfig(port=0, db_url=db_url, workers=1, worker=WorkerConfig())
        app = PromptTuneServer(config, Adapters(chat_models=models, embedder_factory=FakeEmbedder))
        port = await app.start()
        print(port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await app.stop()

    asyncio.run(run())


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def load(target: str, watchers: int, jobs: int, gets: int) -> dict[str, float]:
    from tests.server.conftest import FAKE_MODEL, SMALL_SEARCH, TASK, small_dataset

    from prompttune.client import AsyncClient, Job

    async with AsyncClient(target, timeout=30) as client:
        created = [
            await client.create_job(TASK, small_dataset(), FAKE_MODEL, SMALL_SEARCH)
            for _ in range(jobs)
        ]
        ids = [job.id for job in created if isinstance(job, Job)]
        events = 0
        errors: list[str] = []

        async def watch(job_id: str) -> None:
            nonlocal events
            try:
                async for _ in client.watch_job(job_id):
                    events += 1
            except Exception as error:  # counted and reported, not raised
                errors.append(repr(error))

        streams = [asyncio.create_task(watch(ids[i % len(ids)])) for i in range(watchers)]
        await asyncio.sleep(2.0)  # let every stream open and poll
        latencies = []
        for i in range(gets):
            started = time.perf_counter()
            await client.get_job(ids[i % len(ids)])
            latencies.append((time.perf_counter() - started) * 1000)
        open_streams = sum(not task.done() for task in streams)
        for job_id in ids:
            await client.cancel_job(job_id)
        await asyncio.wait_for(asyncio.gather(*streams), 120)
    latencies.sort()
    return {
        "get_job_p50_ms": round(statistics.median(latencies), 2),
        "get_job_p99_ms": round(latencies[int(len(latencies) * 0.99) - 1], 2),
        "get_job_calls": gets,
        "streams_open_during_gets": open_streams,
        "watch_events_received": events,
        "errors": len(errors),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--watchers", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--gets", type=int, default=500)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    with tempfile.TemporaryDirectory() as folder:
        db_url = f"sqlite:///{folder}/load.db"
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", db_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert server.stdout is not None and server.stdin is not None
        port = int(server.stdout.readline())
        started = time.monotonic()
        figures = asyncio.run(load(f"127.0.0.1:{port}", args.watchers, args.jobs, args.gets))
        figures["server_peak_rss_mib"] = round(peak_rss_mib(server.pid), 1)
        figures["wall_seconds"] = round(time.monotonic() - started, 1)
        server.stdin.close()
        server.wait(60)
    command = "python benchmarks/load_bench.py " + " ".join(sys.argv[1:])
    report = {"command": command.strip(), "watchers": args.watchers, "jobs": args.jobs, **figures}
    for key, value in report.items():
        print(f"{key:>26}: {value}")
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"load-{stamp}.json").write_text(json.dumps(report, indent=2) + "\n")
    rows = "\n".join(f"| {k} | {v} |" for k, v in report.items())
    (out / f"load-{stamp}.md").write_text(
        f"# Load benchmark {stamp}\n\n`{report['command']}` on {os.cpu_count()} CPUs, "
        "fake LLM adapters (20 ms per call), SQLite, 1 worker.\n\n| figure | value |\n"
        f"|---|---|\n{rows}\n"
    )
    return 0 if figures["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
