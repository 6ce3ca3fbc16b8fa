"""ComparePrompts, the regression gate `check`, GetJobDataset and the fine-tuning export,
through a real in-process gRPC server with fake models and the real SDK and CLI."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.fakes import demo_following_responder
from tests.server.conftest import (
    FAKE_MODEL,
    FAKE_REGISTRY,
    REGISTRY_MODEL,
    SMALL_SEARCH,
    TASK,
    FakeModels,
    client_examples,
    fake_adapters,
    small_dataset,
    start_server,
)

from prompttune.client import (
    Client,
    Contender,
    Dataset,
    Example,
    InvalidArgumentError,
    Job,
    NotFoundError,
    Prompt,
    PromptFormat,
    SplitRatio,
    render,
    to_document,
    to_openai_messages,
)
from prompttune.contract import JobSpec
from prompttune.server import EmbeddedServer, ServerConfig
from prompttune.server._auth import TokenRegistry
from prompttune.server._limits import Limits
from prompttune.server._promptfile import dump_json, dump_yaml
from prompttune.server._validate import validate_job_spec
from prompttune.server.cli import main

ZERO_SHOT = Prompt("Read the text and classify it.", labels=TASK.labels, output_name="sentiment")
# Names both labels, shows demos and ends with the answer cue: the fake answers it far better.
HELPED = Prompt(
    "Classify the review as positive or negative.",
    demos=client_examples(2, "demo"),
    format=PromptFormat(answer_prefix="Sentiment:"),
    labels=TASK.labels,
    output_name="sentiment",
)
WRONG_DEMOS = dataclasses.replace(
    HELPED,
    demos=tuple(
        Example(demo.inputs, "negative" if demo.output == "positive" else "positive", demo.id)
        for demo in HELPED.demos
    ),
)


def test_compare_prompts_pairs_two_prompts_on_the_same_examples(client: Client) -> None:
    examples = client_examples(60, "cmp")
    result = client.compare(TASK, examples, ZERO_SHOT, HELPED, FAKE_MODEL, FAKE_MODEL, seed=4)

    assert [r.id for r in result.a.results] == [e.id for e in examples]
    assert [r.id for r in result.b.results] == [e.id for e in examples]
    paired = result.comparison
    assert paired.examples == 60
    assert paired.difference == pytest.approx(result.b.score.mean - result.a.score.mean)
    assert paired.ci_low <= paired.difference <= paired.ci_high
    assert paired.verdict == "b_better" and paired.ci_low > 0 and paired.p_value < 0.01
    assert set(paired.per_label_difference) == {"positive", "negative"}
    # The same prompt on the same model twice: answers come from the cache, no difference.
    same = client.compare(TASK, examples, HELPED, HELPED, FAKE_MODEL, FAKE_MODEL)
    assert same.comparison.difference == 0.0 and same.comparison.verdict == "no_difference"
    # one side is answered wholly from the cache (its 60 examples and the scoring probe)
    cached = [side.usage for side in (same.a, same.b) if side.usage.llm_calls == 0]
    assert cached and cached[0].cache_hits >= 60


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"a": dataclasses.replace(HELPED, instruction="x" * 20_001)}, "a.instruction"),
        ({"model_b": dataclasses.replace(FAKE_MODEL, temperature=5.0)}, "model_b.temperature"),
        ({"model_a": dataclasses.replace(FAKE_MODEL, max_tokens=5000)}, "model_a.max_tokens"),
        ({"model_b": dataclasses.replace(FAKE_MODEL, api_key_env="SERVER_SECRET")},
         "model_b.api_key_env"),
        ({"examples": (*client_examples(3, "e"), Example("t", "positive", "bad id!"))},
         "examples[3].id"),
        ({"examples": ()}, "examples"),
        ({"examples": client_examples(5001, "many")}, "examples"),
    ],
)  # fmt: skip
def test_compare_refuses_bad_input_naming_the_field(
    client: Client, change: dict[str, object], field: str
) -> None:
    arguments: dict[str, object] = {
        "task": TASK,
        "examples": client_examples(4, "ok"),
        "a": HELPED,
        "b": HELPED,
        "model_a": FAKE_MODEL,
        "model_b": FAKE_MODEL,
        **change,
    }
    with pytest.raises(InvalidArgumentError) as raised:
        client.compare(**arguments)  # type: ignore[arg-type]
    assert raised.value.field == field


def test_the_job_dataset_is_split_as_the_search_splits_it(client: Client) -> None:
    pooled = Dataset(examples=client_examples(40, "pool"), split=SplitRatio(0.5, 0.3, 0.2, 7))
    job = client.create_job(TASK, pooled, FAKE_MODEL, SMALL_SEARCH)
    expected = validate_job_spec(JobSpec(TASK, pooled, FAKE_MODEL, SMALL_SEARCH), Limits())

    dataset = client.get_job_dataset(job.id)

    assert dataset.job_id == job.id
    assert dataset.train == expected.dataset.train and len(dataset.train) == 20
    assert dataset.validation == expected.dataset.validation and len(dataset.validation) == 12
    assert dataset.test == expected.dataset.test and len(dataset.test) == 8
    with pytest.raises(NotFoundError):
        client.get_job_dataset("job-0000000000000000")
    with pytest.raises(InvalidArgumentError) as raised:
        client.get_job_dataset("no such id!")
    assert raised.value.field == "job_id"


def test_another_tenants_job_dataset_is_not_found(tmp_path: Path) -> None:
    tokens = TokenRegistry.from_mapping({"token-alpha": "alpha", "token-beta": "beta"})
    config = ServerConfig(
        db_url=f"sqlite:///{tmp_path / 'tenants.db'}",
        workers=0,
        endpoint_config=FAKE_REGISTRY,
        auth=tokens,
    )
    with (
        EmbeddedServer(config, fake_adapters(FakeModels())) as server,
        Client(server.target, timeout=10, token="token-alpha") as alpha,
        Client(server.target, timeout=10, token="token-beta") as beta,
    ):
        job = alpha.create_job(TASK, small_dataset(), REGISTRY_MODEL)
        assert len(alpha.get_job_dataset(job.id).train) == 16
        with pytest.raises(NotFoundError):
            beta.get_job_dataset(job.id)
        # Comparing under authentication goes through the tenant's registry endpoints.
        compared = beta.compare(TASK, client_examples(4, "t"), HELPED, HELPED,
                                REGISTRY_MODEL, REGISTRY_MODEL)  # fmt: skip
        assert compared.comparison.examples == 4


# ---- the regression gate ----------------------------------------------------------------


@pytest.fixture
def demo_server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    """A server whose fake model answers like the prompt's demonstrations."""
    with start_server(tmp_path, FakeModels(demo_following_responder), workers=0) as server:
        yield server


def test_check_passes_for_the_same_prompt_and_fails_for_wrong_demos(
    demo_server: EmbeddedServer,
) -> None:
    examples = client_examples(30, "gold")
    baseline = Contender(HELPED, FAKE_MODEL, "prod")
    with Client(demo_server.target, timeout=10) as client:
        same = client.check(HELPED, FAKE_MODEL, examples, against=baseline, task=TASK)
        worse = client.check(WRONG_DEMOS, FAKE_MODEL, examples, against=baseline)

    assert same.passed and same.comparison.comparison.verdict == "no_difference"
    assert same.comparison.a.score.mean == 1.0 == same.comparison.b.score.mean
    assert not worse.passed and worse.comparison.comparison.verdict == "b_worse"
    assert worse.comparison.b.score.mean == 0.0
    assert worse.comparison.comparison.per_label_difference == {
        "negative": -1.0,
        "positive": -1.0,
    }
    assert worse.task.labels == TASK.labels  # implied by the prompt when not given
    assert (worse.baseline, worse.candidate.prompt) == (baseline, WRONG_DEMOS)


def _write_check_files(folder: Path) -> dict[str, Path]:
    files = {
        "prompt": folder / "prod.json",
        "worse": folder / "worse.yaml",
        "model": folder / "new.yaml",
        "data": folder / "golden.jsonl",
    }
    files["prompt"].write_text(dump_json(to_document(HELPED)), encoding="utf-8")
    files["worse"].write_text(dump_yaml(to_document(WRONG_DEMOS)), encoding="utf-8")
    files["model"].write_text(dump_yaml(to_document(FAKE_MODEL)), encoding="utf-8")
    rows = [
        json.dumps({"id": e.id, "input": e.inputs["input"], "output": e.output})
        for e in client_examples(24, "gold")
    ]
    files["data"].write_text("\n".join(rows) + "\n", encoding="utf-8")
    return files


def test_check_command_exit_codes_and_verdict_files(
    demo_server: EmbeddedServer, tmp_path: Path
) -> None:
    files = _write_check_files(tmp_path)
    common = ["--model", str(files["model"]), "--data", str(files["data"]),
              "--against", str(files["prompt"]), "--server", demo_server.target]  # fmt: skip

    passed, failed = tmp_path / "passed", tmp_path / "failed"
    assert main(["check", "--prompt", str(files["prompt"]), *common, "--out", str(passed)]) == 0
    assert main(["check", "--prompt", str(files["worse"]), *common, "--out", str(failed)]) == 1

    good = json.loads((passed / "verdict.json").read_text())
    assert (good["passed"], good["verdict"]) == (True, "no_difference")
    assert good["comparison"]["examples"] == 24
    bad = json.loads((failed / "verdict.json").read_text())
    assert (bad["passed"], bad["verdict"]) == (False, "b_worse")
    assert bad["baseline"]["score"]["mean"] == 1.0 and bad["candidate"]["score"]["mean"] == 0.0
    assert bad["comparison"]["per_label_difference"] == {"negative": -1.0, "positive": -1.0}
    assert bad["inputs"]["prompt"] == str(files["worse"])
    assert bad["inputs"]["model"]["base_url"] == FAKE_MODEL.base_url
    markdown = (failed / "verdict.md").read_text()
    assert "FAILED" in markdown and "b_worse" in markdown and "| negative | -1.000 |" in markdown


def test_check_command_usage_errors_exit_2(
    demo_server: EmbeddedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = _write_check_files(tmp_path)
    base = ["check", "--prompt", str(files["prompt"]), "--model", str(files["model"]),
            "--server", demo_server.target, "--out", str(tmp_path)]  # fmt: skip
    assert main([*base, "--data", str(tmp_path / "missing.jsonl")]) == 2
    assert main([*base, "--data", str(files["data"]), "--against", "missing.json"]) == 2
    assert "--against: no such file" in capsys.readouterr().err
    assert main([*base, "--data", str(files["data"]), "--against", "job-0000000000000000"]) == 2
    assert not (tmp_path / "verdict.json").exists()


# ---- jobs as sources: compare and the fine-tuning export --------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedServer, Job]]:
    folder = tmp_path_factory.mktemp("finished")
    with start_server(folder, FakeModels()) as server, Client(server.target, timeout=30) as client:
        job = client.optimize(TASK, small_dataset(), FAKE_MODEL, SMALL_SEARCH)
        yield server, job


def test_compare_command_takes_job_ids_and_exports(
    finished: tuple[EmbeddedServer, Job], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server, job = finished
    export = tmp_path / "zero-shot.json"
    export.write_text(dump_json(to_document(ZERO_SHOT)), encoding="utf-8")
    data = tmp_path / "test.jsonl"
    rows = [{"input": e.inputs["input"], "output": e.output} for e in client_examples(20, "t")]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    model = json.dumps(to_document(FAKE_MODEL))
    args = ["compare", str(export), job.id, "--data", str(data), "--model", model,
            "--server", server.target]  # fmt: skip

    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"B {job.id}:" in printed and "B - A:" in printed and "p=" in printed
    assert "positive: recall" in printed and "negative: recall" in printed

    assert main([*args, "--json"]) == 0
    printed = capsys.readouterr().out
    # In-process, the server's log lines share stdout; the document starts on a line "{".
    start = re.search(r"^\{$", printed, re.MULTILINE)
    assert start is not None, printed
    document = json.loads(printed[start.start() :])
    assert document["comparison"]["examples"] == 20
    assert len(document["a"]["results"]) == len(document["b"]["results"]) == 20


def _check_chat_line(line: str) -> list[dict[str, str]]:
    """One line of chat fine-tuning data: exactly {"messages": [...]}, roles system, user or
    assistant with non-empty text, at least one user message, the last from the assistant."""
    record = json.loads(line)
    assert isinstance(record, dict) and set(record) == {"messages"}
    messages = record["messages"]
    assert isinstance(messages, list) and messages
    for message in messages:
        assert isinstance(message, dict) and set(message) == {"role", "content"}
        assert message["role"] in ("system", "user", "assistant")
        assert isinstance(message["content"], str) and message["content"].strip()
    assert messages[-1]["role"] == "assistant"
    assert any(message["role"] == "user" for message in messages)
    return messages


def test_finetune_export_is_valid_chat_data_of_the_job_splits(
    finished: tuple[EmbeddedServer, Job], tmp_path: Path
) -> None:
    server, job = finished
    out = tmp_path / "ft"
    args = ["export", job.id, "--format", "finetune-openai", "--out", str(out)]
    assert main([*args, "--server", server.target]) == 0

    with Client(server.target) as client:
        dataset = client.get_job_dataset(job.id)
    assert job.result is not None
    prompt = job.result.best.prompt
    for name, examples in (("train", dataset.train), ("validation", dataset.validation)):
        lines = (out / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(lines) == len(examples) > 0
        for line, example in zip(lines, examples, strict=True):
            messages = _check_chat_line(line)
            assert messages[:-1] == to_openai_messages(render(prompt, example.inputs))
            assert messages[-1] == {"role": "assistant", "content": example.output}
    assert not (out / "test.jsonl").exists()
