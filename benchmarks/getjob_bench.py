"""GetJob benchmark: latency of GetJob for a job with 20,000 examples against a job with 10,
side by side in one run (calls alternate between the two jobs), on one in-process server
(real gRPC, SQLite, no workers so both jobs stay queued). Job rows keep the spec without its
dataset, so the two should cost the same; the target is a p50 ratio within 1.2x.

    .venv/bin/python benchmarks/getjob_bench.py [--calls 500] [--large 20000] [--input-chars 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from prompttune.contract import (  # noqa: E402
    Dataset,
    Example,
    JobSpec,
    ModelSpec,
    TaskSpec,
    wire,
)
from prompttune.v1 import optimizer_pb2 as pb  # noqa: E402
from prompttune.v1 import optimizer_pb2_grpc as pb_grpc  # noqa: E402


def job_request(examples: int, input_chars: int) -> pb.CreateJobRequest:
    filler = "x" * max(0, input_chars - 20)
    pool = tuple(
        Example({"input": f"text {index} {filler}"}, f"out {index % 7}", f"e{index}")
        for index in range(examples)
    )
    half = max(1, examples // 2)
    spec = JobSpec(
        task=TaskSpec(description="Copy the label."),
        dataset=Dataset.from_splits(pool[:half], pool[half:] or pool[:1]),
        model=ModelSpec.openai_compatible("http://fake.invalid/v1", "fake-model"),
    )
    request = pb.CreateJobRequest()
    wire.fill(request, spec)
    return request


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def measure(target: str, calls: int, large: int, input_chars: int) -> dict[str, float | int]:
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.OptimizerServiceStub(channel)
        big_request = job_request(large, input_chars)
        started = time.perf_counter()
        big = stub.CreateJob(big_request, timeout=300).job.id
        create_seconds = time.perf_counter() - started
        small = stub.CreateJob(job_request(10, input_chars), timeout=30).job.id
        for job_id in (big, small) * 20:  # warm-up: connections, caches, code paths
            stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=30)
        timings: dict[str, list[float]] = {big: [], small: []}
        for _ in range(calls):
            for job_id in (big, small):
                begin = time.perf_counter()
                stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=30)
                timings[job_id].append((time.perf_counter() - begin) * 1000)
    large_p50, small_p50 = statistics.median(timings[big]), statistics.median(timings[small])
    return {
        "large_examples": large,
        "large_request_mib": round(big_request.ByteSize() / 2**20, 2),
        "create_large_seconds": round(create_seconds, 2),
        "calls_per_job": calls,
        "get_job_large_p50_ms": round(large_p50, 3),
        "get_job_small_p50_ms": round(small_p50, 3),
        "get_job_large_p99_ms": round(percentile(timings[big], 0.99), 3),
        "get_job_small_p99_ms": round(percentile(timings[small], 0.99), 3),
        "p50_ratio_large_over_small": round(large_p50 / small_p50, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--large", type=int, default=20_000)
    parser.add_argument("--input-chars", type=int, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    from tests.fakes import FakeEmbedder
    from tests.server.conftest import FakeModels

    from prompttune.server import Adapters, EmbeddedServer, ServerConfig
    from prompttune.server._logging import configure_logging

    configure_logging("WARNING")
    with tempfile.TemporaryDirectory() as folder:
        config = ServerConfig(db_url=f"sqlite:///{folder}/bench.db", workers=0)
        adapters = Adapters(chat_models=FakeModels(), embedder_factory=FakeEmbedder)
        with EmbeddedServer(config, adapters) as server:
            figures = measure(server.target, args.calls, args.large, args.input_chars)
    command = "python benchmarks/getjob_bench.py " + " ".join(sys.argv[1:])
    report = {"command": command.strip(), **figures}
    print(json.dumps(report, indent=2))
    day = datetime.now(UTC).date().isoformat()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"getjob-{day}.json").write_text(json.dumps(report, indent=2) + "\n")
    rows = "\n".join(f"| {key} | {value} |" for key, value in report.items())
    (args.out / f"getjob-{day}.md").write_text(
        f"# GetJob benchmark {day}\n\n"
        "GetJob latency for a job with 20,000 examples and one with 10, alternating calls in one "
        "run; in-process server, real gRPC, SQLite, no workers. Target: p50 ratio within 1.2x.\n\n"
        f"| figure | value |\n|---|---|\n{rows}\n"
    )


if __name__ == "__main__":
    main()
