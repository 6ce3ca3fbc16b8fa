"""`prompttune batch submit` (with resume), `export` and `report` against a live server."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
import yaml
from tests.fakes import sentiment_examples

from prompttune.client import Client, render
from prompttune.server import EmbeddedServer
from prompttune.server._report import trial_points
from prompttune.server.cli import main

TASK_DOC = {
    "task": {
        "description": "Decide whether a movie review sentence is positive or negative.",
        "seed_instruction": "Read the text and classify it.",
        "labels": ["positive", "negative"],
        "metric": "label_choice",
        "output_name": "sentiment",
    },
    "model": {"kind": "openai_compatible", "base_url": "http://fake.invalid/v1", "model": "m"},
    "search": {
        "seed": 1,
        "num_instruction_candidates": 1,
        "max_demos": 2,
        "minibatch_size": 8,
        "budget": {"max_trials": 4},
    },
    "data": {"train": "train.jsonl", "validation": "validation.jsonl", "test": "test.jsonl"},
}


def write_batch(folder: Path) -> Path:
    for name, count in (("train", 12), ("validation", 16), ("test", 8)):
        lines = [
            json.dumps({"id": e.id, "input": e.inputs["input"], "output": e.output})
            for e in sentiment_examples(count, name)
        ]
        (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "task.yaml").write_text(yaml.safe_dump(TASK_DOC), encoding="utf-8")
    inline = dict(TASK_DOC, search={**TASK_DOC["search"], "seed": 2})  # type: ignore[dict-item]
    broken = dict(TASK_DOC, task={**TASK_DOC["task"], "labels": ["only"]})  # type: ignore[dict-item]
    batch = folder / "jobs.jsonl"
    batch.write_text(
        "\n".join(
            [
                json.dumps({"task_file": "task.yaml"}),
                json.dumps(inline),
                json.dumps({**broken, "request_id": "broken-1"}),
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    return batch


def test_batch_submit_resume_export_report(
    tmp_path: Path, server: EmbeddedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    batch = write_batch(tmp_path)
    out = tmp_path / "results.jsonl"
    args = ["batch", "submit", str(batch), "--out", str(out), "--server", server.target]
    assert main([*args, "--max-in-flight", "2"]) == 1  # one line is invalid
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["line"] for r in records] == [1, 2, 3]
    assert [r["state"] for r in records] == ["succeeded", "succeeded", "unspecified"]
    assert "dataset" in records[2]["error"] or "labels" in records[2]["error"]
    first = records[0]
    assert first["job_id"] and first["best_prompt"]["instruction"]
    assert first["scores"]["best"]["validation"] >= 0 and first["cost"]["llm_calls"] > 0
    state = json.loads(out.with_name(out.name + ".state.json").read_text())
    assert sorted(state["done"]) == ["1", "2"]
    stderr = capsys.readouterr().err
    assert "[2/3 done]" in stderr or "[1/3 done]" in stderr

    # Resume: finished lines are skipped; resubmitting is idempotent (same request ids).
    with Client(server.target) as client:
        before = len(client.list_jobs(page_size=200).jobs)
    out.with_name(out.name + ".state.json").write_text(
        json.dumps({"done": {"1": state["done"]["1"]}})
    )
    assert main(args) == 1
    with Client(server.target) as client:
        assert len(client.list_jobs(page_size=200).jobs) == before
    again = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["job_id"] for r in again] == [r["job_id"] for r in records], again
    assert "2 to run" in capsys.readouterr().err

    job_id = first["job_id"]
    exported_file, yaml_file = tmp_path / "prompt.json", tmp_path / "prompt.yaml"
    base = ["export", job_id, "--server", server.target, "--format"]
    assert main([*base, "openai", "--out", str(exported_file)]) == 0
    exported = json.loads(exported_file.read_text())
    assert exported["messages"][-1]["role"] == "user"
    assert "{{input}}" in exported["messages"][-1]["content"]
    assert main([*base, "yaml", "--out", str(yaml_file)]) == 0
    instruction = yaml.safe_load(yaml_file.read_text())["instruction"]
    assert instruction == first["best_prompt"]["instruction"]

    for fmt in ("html", "md"):
        report = tmp_path / f"report.{fmt}"
        assert main(["report", job_id, "--format", fmt, "--out", str(report), "--server",
                     server.target]) == 0  # fmt: skip
        text = report.read_text()
        png = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)
        assert png and base64.b64decode(png.group(1)).startswith(b"\x89PNG")
        assert job_id in text and "baseline" in text


def test_trial_points_pair_trials_with_llm_calls(client: Client, server: EmbeddedServer) -> None:
    from tests.server.conftest import FAKE_MODEL, SMALL_SEARCH, TASK, small_dataset

    job = client.optimize(TASK, small_dataset(), FAKE_MODEL, SMALL_SEARCH)
    points = trial_points(list(client.watch_job(job.id)))
    assert job.result is not None and len(points) >= job.result.trials_completed
    calls = [p.llm_calls for p in points]
    assert calls == sorted(calls) and calls[-1] <= job.result.usage.llm_calls
    assert render(job.result.best.prompt, "hi") == client.render_prompt(
        job.result.best.prompt, "hi"
    )
