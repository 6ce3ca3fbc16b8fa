"""Per-label and per-slice scores through a real in-process gRPC server, the SDK and the CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from tests.fakes import sentiment_examples
from tests.server.conftest import (
    FAKE_MODEL,
    SMALL_SEARCH,
    TASK,
    FakeModels,
    client_examples,
    start_server,
)
from tests.server.test_cli_batch import TASK_DOC

from prompttune.client import Client, Dataset, Example, InvalidArgumentError
from prompttune.contract import Objective
from prompttune.server.cli import main


def tagged(examples: tuple[Example, ...]) -> tuple[Example, ...]:
    """Tags by index: ``parity`` even/odd and ``source`` a/b/c."""
    return tuple(
        replace(e, tags={"parity": "even" if i % 2 == 0 else "odd", "source": "abc"[i % 3]})
        for i, e in enumerate(examples)
    )


def test_get_job_carries_confusion_label_metrics_and_slices(client: Client) -> None:
    dataset = Dataset.from_splits(
        client_examples(16, "train"),
        tagged(client_examples(24, "val")),
        tagged(client_examples(16, "test")),
    )
    search = replace(SMALL_SEARCH, objective=Objective.WORST_SLICE, slice_tag="source")
    job = client.optimize(TASK, dataset, FAKE_MODEL, search)
    assert job.search.objective is Objective.WORST_SLICE and job.search.slice_tag == "source"
    assert job.result is not None and job.result.best.test is not None
    for score in (job.result.baseline.validation, job.result.best.test):
        confusion = score.confusion
        assert confusion is not None and confusion.labels[:2] == ("positive", "negative")
        assert sum(confusion.counts) == score.examples
        assert set(score.label_metrics) == {"positive", "negative"}
        assert sum(m.support for m in score.label_metrics.values()) == score.examples
        f1s = [m.f1 for m in score.label_metrics.values() if m.support]
        assert score.macro_f1 == pytest.approx(sum(f1s) / len(f1s))
        assert [(s.tag, s.value) for s in score.slices] == [
            ("parity", "even"),
            ("parity", "odd"),
            ("source", "a"),
            ("source", "b"),
            ("source", "c"),
        ]
        assert all(s.ci_low <= s.mean <= s.ci_high for s in score.slices)
        assert score.worst_slice is not None
        assert score.worst_slice.mean == min(s.mean for s in score.slices)
    assert client.get_job(job.id) == job


def test_a_bad_objective_is_refused_naming_the_field(client: Client) -> None:
    dataset = Dataset.from_splits(client_examples(8, "tr"), client_examples(8, "va"))
    search = replace(SMALL_SEARCH, objective=Objective.WORST_SLICE, slice_tag="dialect")
    with pytest.raises(InvalidArgumentError, match="no validation example carries") as error:
        client.create_job(TASK, dataset, FAKE_MODEL, search)
    assert error.value.field == "search.slice_tag"
    bad_tags = Dataset.from_splits(
        (Example("x", "positive", id="t0", tags={"bad name": "x"}),), client_examples(8, "va")
    )
    with pytest.raises(InvalidArgumentError) as error:
        client.create_job(TASK, bad_tags, FAKE_MODEL, SMALL_SEARCH)
    assert error.value.field == "dataset.train[0].tags"


def test_cli_prints_per_label_metrics_and_the_worst_slice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, count in (("train", 12), ("validation", 16), ("test", 12)):
        rows = [
            {"id": e.id, "input": e.inputs["input"], "output": e.output, "tags": e.tags}
            for e in tagged(sentiment_examples(count, name))
        ]
        lines = "\n".join(json.dumps(row) for row in rows) + "\n"
        (tmp_path / f"{name}.jsonl").write_text(lines, encoding="utf-8")
    document = {**TASK_DOC, "search": {**TASK_DOC["search"], "objective": "macro_f1"}}  # type: ignore[dict-item]
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(document), encoding="utf-8")
    with start_server(tmp_path, FakeModels()) as server:
        out = tmp_path / "result.json"
        argv = ["optimize", str(tmp_path / "task.yaml"), "--quiet", "--server", server.target]
        assert main([*argv, "--out", str(out)]) == 0
        printed = capsys.readouterr().err
        job_id = json.loads(out.read_text())["id"]
        assert main(["jobs", "get", job_id, "--server", server.target]) == 0
        from_get = capsys.readouterr().err
    assert "best on test: per label (precision / recall / F1, support)" in printed
    assert "macro-F1 " in printed and "worst label " in printed
    assert "source=a" in printed and "parity=odd" in printed
    assert "worst slice " in printed
    summary = printed[printed.index(f"job {job_id}") : printed.index("result written")]
    assert from_get == summary
