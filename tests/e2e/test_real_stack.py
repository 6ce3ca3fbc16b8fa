"""The real stack end to end: the CLI's embedded gRPC server, the managed llama.cpp server
with SmolLM2-135M-Instruct, MiniLM embeddings and SQLite, on a slice of SST-2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from prompttune.contract import JobState
from prompttune.server import SqlJobStore
from prompttune.server._db import create_db_engine
from prompttune.server.cli import main

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "sst2"


def write_task(directory: Path) -> Path:
    for split, count in (("train", 30), ("validation", 24), ("test", 24)):
        lines = (EXAMPLES / f"{split}.jsonl").read_text().splitlines()[:count]
        (directory / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    task = yaml.safe_load((EXAMPLES / "task.yaml").read_text())
    task["search"] = {
        "seed": 1,
        "num_instruction_candidates": 2,
        "max_demos": 2,
        "minibatch_size": 8,
        "num_finalists": 2,
        "budget": {"max_trials": 5, "max_llm_calls": 600, "max_wall_seconds": 600},
    }
    path = directory / "task.yaml"
    path.write_text(yaml.safe_dump(task))
    return path


def test_cli_optimize_on_the_real_stack_twice(tmp_path: Path) -> None:
    task_file = write_task(tmp_path)
    db_url = f"sqlite:///{tmp_path / 'service.db'}"
    first_out, second_out = tmp_path / "first.json", tmp_path / "second.json"

    assert (
        main(["optimize", str(task_file), "--db", db_url, "--out", str(first_out), "--quiet"]) == 0
    )
    first = json.loads(first_out.read_text())
    assert first["state"] == "succeeded"
    result = first["result"]
    picked_on = "selection" if "selection" in result["best"] else "validation"
    assert result["best"][picked_on]["mean"] >= result["baseline"][picked_on]["mean"]
    assert result["baseline"]["test"]["examples"] + result["baseline"]["test"]["failed"] == 24
    assert result["usage"]["llm_calls"] > 0
    assert result["usage"]["llm_calls"] <= 600

    # Result and events are persisted in the database.
    store = SqlJobStore(create_db_engine(db_url))
    stored = store.get(first["id"])
    assert stored.state is JobState.SUCCEEDED
    assert stored.result is not None
    assert stored.result.best.validation.mean == pytest.approx(result["best"]["validation"]["mean"])
    events = store.events_after(first["id"], 0, 10_000)
    assert any(event.trial_finished is not None for event in events)
    assert events[-1].state_changed is not None
    assert events[-1].state_changed.state is JobState.SUCCEEDED

    # The same optimisation again: every call is a cache hit and the prompt is the same.
    assert (
        main(["optimize", str(task_file), "--db", db_url, "--out", str(second_out), "--quiet"]) == 0
    )
    second = json.loads(second_out.read_text())
    assert second["result"]["usage"]["llm_calls"] == 0
    assert second["result"]["usage"]["cache_hits"] > 0
    assert second["result"]["best"]["prompt"] == result["best"]["prompt"]
    assert second["result"]["best"]["test"] == result["best"]["test"]
