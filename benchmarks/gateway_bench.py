"""LLM gateway benchmark against the fake OpenAI-compatible endpoint (benchmarks/fake_openai.py).

1. Throughput: calls/s through `LLMGateway` + `OpenAIChatModel` (real HTTP on loopback, the
   fake in its own process) at concurrency 1, 8, 32, 128 with 100 ms latency, against the
   theoretical concurrency / latency, and the client process's CPU time per call. Also the
   gateway's own CPU per call with an in-process zero-latency model (no HTTP).
2. Shared rate limit: two jobs (threads, each with its own event loop) share one endpoint
   limited to 1200 requests/min; their combined rate must stay at or below 20/s.
3. Faults: one search job (`Runner`) against a fault-free fake and one against a fake
   injecting 20% 5xx and 10% 429 (Retry-After); results must be equal, budgets held, and a
   rerun over the same SQLite response cache must send 0 calls.

Run: .venv/bin/python benchmarks/gateway_bench.py   (writes benchmarks/results/gateway-<date>.*)
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.fakes: the sentiment data set, embedder and observer

import httpx2  # noqa: E402
from tests.fakes import (  # noqa: E402
    SENTIMENT_TASK,
    FakeEmbedder,
    RecordingObserver,
    sentiment_splits,
)

from prompttune.search import (  # noqa: E402
    Budget,
    ChatMessage,
    ChatRequest,
    ChatResponse,
    EndpointLimits,
    EndpointPolicy,
    GatewayRegistry,
    LLMGateway,
    ModelEndpoint,
    OpenAIChatModel,
    OpenAIClientPool,
    Pricing,
    Runner,
    RunnerDeps,
    SearchConfig,
    SearchResult,
)
from prompttune.server._cache import SqlResponseCache  # noqa: E402
from prompttune.server._db import create_db_engine  # noqa: E402

LATENCY = 0.1
CONCURRENCIES = (1, 8, 32, 128)
PRICING = Pricing(usd_per_million_prompt_tokens=0.15, usd_per_million_completion_tokens=0.6)
JOB_CONFIG = SearchConfig(
    max_trials=12,
    max_llm_calls=3000,
    max_tokens=1_000_000,
    max_cost_usd=0.5,
    num_instruction_candidates=3,
    max_demos=3,
    minibatch_size=8,
    seed=5,
)


class FakeProcess:
    """The fake endpoint in a child process (so its CPU does not count as the client's)."""

    def __init__(self, *flags: str) -> None:
        command = [sys.executable, str(ROOT / "benchmarks" / "fake_openai.py"), *flags]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"fake endpoint did not start: {line!r}")
        self.port = int(line.split()[1])
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=5) as reply:
            return dict(json.load(reply))

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def _request(index: int) -> ChatRequest:
    return ChatRequest((ChatMessage("user", f"the plot was wonderful #{index}"),), 0.0, 16)


async def throughput(url: str, concurrency: int, calls: int) -> dict[str, Any]:
    endpoint = ModelEndpoint(url, "fake", shared_max_concurrency=concurrency)
    model = OpenAIChatModel(endpoint, pool=OpenAIClientPool())
    gateway = LLMGateway(
        model, Budget(), None, concurrency, policy=EndpointPolicy.of(endpoint),
        registry=GatewayRegistry(),
    )  # fmt: skip
    await asyncio.gather(*(gateway.complete(_request(-i), "task") for i in range(concurrency)))
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(gateway.complete(_request(i), "task") for i in range(calls)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    achieved, theoretical = calls / wall, concurrency / LATENCY
    return {
        "concurrency": concurrency,
        "calls": calls,
        "wall_s": round(wall, 3),
        "calls_per_s": round(achieved, 1),
        "theoretical_calls_per_s": theoretical,
        "share_of_theoretical": round(achieved / theoretical, 3),
        "client_cpu_ms_per_call": round(1000 * cpu / calls, 3),
    }


async def raw_http(url: str, concurrency: int, calls: int) -> float:
    """Calls/s of a bare httpx client (no openai, no gateway) under the same load: the
    machine's own ceiling, measured side by side with the gateway."""
    limits = httpx2.Limits(max_connections=1000, max_keepalive_connections=1000)
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx2.AsyncClient(base_url=url, limits=limits) as client:

        async def one(index: int) -> None:
            async with semaphore:
                body = {"model": "fake", "max_tokens": 16, "messages": [
                    {"role": "user", "content": f"the plot was wonderful #{index}"}]}  # fmt: skip
                reply = await client.post("/chat/completions", json=body)
                reply.json()

        await asyncio.gather(*(one(-i) for i in range(concurrency)))
        wall = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(calls)))
        return calls / (time.perf_counter() - wall)


class InstantModel:
    """A zero-latency in-process ChatModel: isolates the gateway's own CPU cost."""

    identity = "instant|m"

    async def complete(self, request: ChatRequest) -> ChatResponse:
        return ChatResponse("positive", 12, 1)


async def gateway_overhead(calls: int = 20_000) -> dict[str, Any]:
    policy = EndpointPolicy(EndpointLimits(max_concurrency=32, requests_per_minute=1e9))
    gateway = LLMGateway(InstantModel(), Budget(max_llm_calls=10**9), None, 32, policy=policy)
    cpu = time.process_time()
    await asyncio.gather(*(gateway.complete(_request(i), "task") for i in range(calls)))
    cpu = time.process_time() - cpu
    return {"calls": calls, "gateway_cpu_us_per_call": round(1e6 * cpu / calls, 1)}


def shared_rate_limit(url: str, calls_per_job: int = 60) -> dict[str, Any]:
    registry = GatewayRegistry()
    endpoint = ModelEndpoint(url, "fake", requests_per_minute=1200)

    async def job(offset: int) -> None:
        model = OpenAIChatModel(endpoint, pool=OpenAIClientPool())
        gateway = LLMGateway(
            model, Budget(), None, 32, policy=EndpointPolicy.of(endpoint), registry=registry
        )
        await asyncio.gather(
            *(gateway.complete(_request(offset + i), "task") for i in range(calls_per_job))
        )

    threads = [
        threading.Thread(target=asyncio.run, args=(job(10_000 * (n + 1)),)) for n in range(2)
    ]
    wall = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - wall
    total = 2 * calls_per_job
    return {
        "jobs": 2,
        "requests_per_minute_limit": 1200,
        "calls": total,
        "wall_s": round(wall, 2),
        "calls_per_s": round(total / wall, 1),
        # The bucket starts full (1 s of burst = 20 calls); the rest at 20/s.
        "bound_calls_per_s": round(total / ((total - 20) / 20.0), 1),
    }


async def search_job(url: str, cache: SqlResponseCache, name: str) -> SearchResult:
    endpoint = ModelEndpoint(
        url, "fake", max_retries=12, retry_backoff_seconds=0.02, cache_identity="fake|sentiment"
    )
    model = OpenAIChatModel(endpoint, pool=OpenAIClientPool())
    policy = EndpointPolicy(pricing=PRICING)
    deps = RunnerDeps(
        task_model=model,
        proposer_model=model,
        embedder=FakeEmbedder(),
        observer=RecordingObserver(),
        cache=cache,
        task_max_concurrency=16,
        registry=GatewayRegistry(),
        task_policy=policy,
        proposer_policy=policy,
    )
    data = sentiment_splits(32, 48, 32)
    return await Runner(deps).run(SENTIMENT_TASK, data, JOB_CONFIG, name)


def _summary(result: SearchResult) -> dict[str, Any]:
    usage = result.usage
    return {
        "best_instruction": result.best.prompt.instruction,
        "best_demos": [demo.id for demo in result.best.prompt.demos],
        "validation": result.best.validation.mean,
        "test": result.best.test.mean if result.best.test else None,
        "baseline_validation": result.baseline.validation.mean,
        "trials_completed": result.trials_completed,
        "trials_pruned": result.trials_pruned,
        "llm_calls": usage.llm_calls,
        "failed_calls": usage.failed_calls,
        "tokens": usage.tokens,
        "cost_usd": round(usage.cost_usd, 6),
        "cache_hits": usage.cache_hits,
    }


def _same_result(a: SearchResult, b: SearchResult) -> bool:
    return (a.best, a.baseline, a.improved, a.trials_completed, a.trials_pruned) == (
        b.best,
        b.baseline,
        b.improved,
        b.trials_completed,
        b.trials_pruned,
    )


def fault_run(tmp: Path) -> dict[str, Any]:
    latency = ["--latency", "0.02"]
    clean = FakeProcess(*latency)
    faulty = FakeProcess(*latency, "--error-rate", "0.2", "--rate-limit-rate", "0.1", "--seed", "3")
    try:
        clean_cache = SqlResponseCache(create_db_engine(f"sqlite:///{tmp / 'clean.db'}"))
        cache = SqlResponseCache(create_db_engine(f"sqlite:///{tmp / 'faulty.db'}"))
        started = time.perf_counter()
        reference = asyncio.run(search_job(clean.url, clean_cache, "clean"))
        clean_s = time.perf_counter() - started
        started = time.perf_counter()
        result = asyncio.run(search_job(faulty.url, cache, "faulty"))
        faulty_s = time.perf_counter() - started
        before = faulty.stats()
        rerun = asyncio.run(search_job(faulty.url, cache, "rerun"))
        after = faulty.stats()
    finally:
        clean.close()
        faulty.close()
    limits = JOB_CONFIG
    within = all(
        r.usage.llm_calls <= limits.max_llm_calls
        and r.usage.tokens <= limits.max_tokens
        and r.usage.cost_usd <= limits.max_cost_usd
        for r in (reference, result, rerun)
    )
    return {
        "budget": {
            "max_llm_calls": limits.max_llm_calls,
            "max_tokens": limits.max_tokens,
            "max_cost_usd": limits.max_cost_usd,
        },
        "fault_free": {**_summary(reference), "wall_s": round(clean_s, 2)},
        "faulty": {**_summary(result), "wall_s": round(faulty_s, 2), "endpoint": before},
        "equal_results": _same_result(reference, result),
        "within_budget": within,
        "rerun": {
            **_summary(rerun),
            "new_http_requests": after["requests"] - before["requests"],
            "equal_result": _same_result(result, rerun),
        },
    }


def _markdown(report: dict[str, Any]) -> str:
    rows = [
        f"| {r['concurrency']} | {r['calls']} | {r['calls_per_s']} | "
        f"{r['theoretical_calls_per_s']:.0f} | {100 * r['share_of_theoretical']:.1f}% | "
        f"{r['client_cpu_ms_per_call']} | {r['raw_http_calls_per_s']} | "
        f"{100 * r['gateway_vs_raw_http']:.0f}% |"
        for r in report["throughput"]
    ]
    faults = report["faults"]
    return "\n".join(
        [
            f"# LLM gateway benchmark, {report['date']}",
            "",
            f"Command: `{report['command']}`  ",
            f"Machine: {report['machine']}",
            "",
            f"## Throughput (fake endpoint latency {LATENCY * 1000:.0f} ms, separate process)",
            "",
            "| concurrency | calls | calls/s | theoretical | share | client CPU ms/call "
            "| bare httpx calls/s | gateway vs bare |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            "Gateway alone (zero-latency in-process model): "
            f"{report['gateway_overhead']['gateway_cpu_us_per_call']} µs CPU per call.",
            "",
            "## Shared rate limit across two jobs (threads with their own loops)",
            "",
            "```json",
            json.dumps(report["shared_rate_limit"], indent=2),
            "```",
            "",
            "## Search job with 20% 5xx + 10% 429 vs fault-free",
            "",
            f"Equal results: **{faults['equal_results']}**; within budget: "
            f"**{faults['within_budget']}**; rerun new HTTP requests: "
            f"**{faults['rerun']['new_http_requests']}** (calls {faults['rerun']['llm_calls']}).",
            "",
            "```json",
            json.dumps(faults, indent=2),
            "```",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="target run per level")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    load = os.getloadavg()  # other processes on the machine skew wall-clock figures
    fake = FakeProcess("--latency", str(LATENCY))
    try:
        levels = []
        for concurrency in CONCURRENCIES:
            calls = max(20, int(args.seconds * concurrency / LATENCY))
            level = asyncio.run(throughput(fake.url, concurrency, calls))
            raw = asyncio.run(raw_http(fake.url, concurrency, calls))
            level["raw_http_calls_per_s"] = round(raw, 1)
            level["gateway_vs_raw_http"] = round(level["calls_per_s"] / raw, 3)
            levels.append(level)
            print(json.dumps(levels[-1]), flush=True)
        shared = shared_rate_limit(fake.url)
        print(json.dumps(shared), flush=True)
    finally:
        fake.close()
    overhead = asyncio.run(gateway_overhead())
    print(json.dumps(overhead), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        faults = fault_run(Path(tmp))
    print(json.dumps(faults, indent=2), flush=True)
    report = {
        "date": datetime.date.today().isoformat(),
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, load average at start {load[0]:.1f}",
        "throughput": levels,
        "gateway_overhead": overhead,
        "shared_rate_limit": shared,
        "faults": faults,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"gateway-{report['date']}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(_markdown(report))
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
