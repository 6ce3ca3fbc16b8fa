"""The CLI's decision commands: `compare` two prompts, `check` a stored prompt on a new model
(the regression gate for CI pipelines), and `export --format finetune-openai`.

Like `prompttune.server._commands`, they talk to a server only through the SDK and read files
only through the contract's document codec. Prompts come from job ids, result files or prompt
exports; a result file or job also gives its model and task.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from prompttune.client import (
    CheckVerdict,
    Client,
    Comparison,
    Contender,
    Example,
    Job,
    ModelSpec,
    NotFoundError,
    Prompt,
    TaskSpec,
    render,
    task_for_prompt,
    to_document,
    to_openai_messages,
)
from prompttune.server._promptfile import dump_json, read_recorded_prompt
from prompttune.server._taskfile import (
    TaskFile,
    TaskFileError,
    decode,
    load_examples,
    read_document,
)

Connect = Callable[[argparse.Namespace], AbstractContextManager[Client]]
_FILE_SUFFIXES = (".json", ".yaml", ".yml")


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ---- where prompts, models and tasks come from ------------------------------------------


@dataclass(frozen=True)
class Source:
    """A prompt named on the command line, with the model and task its source records."""

    prompt: Prompt
    model: ModelSpec | None
    task: TaskSpec | None
    name: str


def read_source(client: Client, text: str, option: str) -> Source:
    """A job id (its best prompt, model and task), or a result file or prompt export.
    A missing file or job is a usage error (TaskFileError), as is a job without a result."""
    path = Path(text)
    if path.is_file():
        recorded = read_recorded_prompt(path)
        return Source(recorded.prompt, recorded.model, recorded.task, text)
    if path.suffix in _FILE_SUFFIXES or "/" in text:
        raise TaskFileError(f"{option}: no such file: {text}")
    try:
        job = client.get_job(text)
    except NotFoundError as error:
        raise TaskFileError(f"{option}: no job or file {text!r}") from error
    if job.result is None:
        raise TaskFileError(f"{option}: job {job.id} has no result ({job.state.value})")
    return Source(job.result.best.prompt, job.model, job.task, job.id)


def read_model(text: str, option: str) -> ModelSpec:
    """A model spec given as JSON text or as a YAML/JSON file."""
    if text.lstrip().startswith("{"):
        try:
            document = json.loads(text)
        except ValueError as error:
            raise TaskFileError(f"{option}: not JSON: {error}") from error
        return decode(ModelSpec, document, option)
    return decode(ModelSpec, read_document(Path(text)), text)


def read_task(args: argparse.Namespace, *sources: Source) -> TaskSpec:
    """--task (a task file's task), else the first source's recorded task, else the task the
    first prompt implies."""
    if args.task:
        return decode(TaskFile, read_document(Path(args.task)), args.task).task
    recorded = next((source.task for source in sources if source.task is not None), None)
    return recorded or task_for_prompt(sources[0].prompt)


# ---- compare ----------------------------------------------------------------------------


def cmd_compare(args: argparse.Namespace, connect: Connect) -> int:
    """Scores A and B on --data and prints the paired comparison (b - a)."""
    fallback = read_model(args.model, "--model") if args.model else ModelSpec()
    with connect(args) as client:
        a, b = read_source(client, args.a, "A"), read_source(client, args.b, "B")
        task = read_task(args, a, b)
        examples = load_examples(Path(args.data), task.input_fields)
        comparison = client.compare(
            task, examples, a.prompt, b.prompt, a.model or fallback, b.model or fallback,
            seed=args.seed,
        )  # fmt: skip
    if args.json:
        write_comparison(comparison, a.name, b.name, sys.stderr)
        sys.stdout.write(dump_json(to_document(comparison)))
    else:
        write_comparison(comparison, a.name, b.name, sys.stdout)
    return 0


def write_comparison(comparison: Comparison, a_name: str, b_name: str, stream: TextIO) -> None:
    """Both scores, the difference with its interval and p-value, per-label differences."""
    stream.write("\n".join(comparison_lines(comparison, a_name, b_name)) + "\n")
    stream.flush()


def comparison_lines(comparison: Comparison, a_name: str, b_name: str) -> list[str]:
    paired = comparison.comparison
    lines = [
        f"{side} {name}: {e.score.mean:.3f} [{e.score.ci_low:.3f}, {e.score.ci_high:.3f}] "
        f"on {e.score.examples} examples ({e.score.failed} failed)"
        for side, name, e in (("A", a_name, comparison.a), ("B", b_name, comparison.b))
    ]
    lines.append(
        f"B - A: {paired.difference:+.3f} [{paired.ci_low:+.3f}, {paired.ci_high:+.3f}] "
        f"p={paired.p_value:.4f} on {paired.examples} paired examples: {paired.verdict}"
    )
    lines += [
        f"  {label}: recall {difference:+.3f}"
        for label, difference in paired.per_label_difference.items()
    ]
    return lines


# ---- check ------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace, connect: Connect) -> int:
    """The regression gate: 0 when the prompt on --model is not worse than the reference
    beyond noise, 1 when it is; writes verdict.json and verdict.md to --out."""
    model = read_model(args.model, "--model")
    with connect(args) as client:
        stored = read_source(client, args.prompt, "--prompt")
        against = read_source(client, args.against, "--against") if args.against else stored
        baseline = Contender(against.prompt, against.model or ModelSpec(), against.name)
        task = read_task(args, against, stored)
        examples = load_examples(Path(args.data), task.input_fields)
        verdict = client.check(
            stored.prompt, model, examples, against=baseline, task=task, seed=args.seed
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    inputs = check_inputs(args, model, len(examples))
    (out / "verdict.json").write_text(dump_json(verdict_document(verdict, inputs)), "utf-8")
    (out / "verdict.md").write_text(verdict_markdown(verdict, inputs), encoding="utf-8")
    write_comparison(verdict.comparison, baseline.source, stored.name, sys.stderr)
    say(f"{'passed' if verdict.passed else 'FAILED'}: verdict written to {out}")
    return 0 if verdict.passed else 1


def check_inputs(args: argparse.Namespace, model: ModelSpec, examples: int) -> dict[str, Any]:
    """What the check was run on. Model specs name key variables, never keys."""
    return {
        "prompt": args.prompt,
        "model": to_document(model),
        "data": args.data,
        "examples": examples,
        "against": args.against or "",
        "task": args.task or "",
        "seed": args.seed,
    }


def verdict_document(verdict: CheckVerdict, inputs: dict[str, Any]) -> dict[str, Any]:
    paired = verdict.comparison.comparison
    return {
        "passed": verdict.passed,
        "verdict": paired.verdict,
        "inputs": inputs,
        "baseline": _side(verdict.baseline, verdict.comparison.a.score),
        "candidate": _side(verdict.candidate, verdict.comparison.b.score),
        "comparison": to_document(paired),
    }


def _side(contender: Contender, score: Any) -> dict[str, Any]:
    return {
        "source": contender.source,
        "model": to_document(contender.model),
        "score": to_document(score),
    }


def verdict_markdown(verdict: CheckVerdict, inputs: dict[str, Any]) -> str:
    paired = verdict.comparison.comparison
    a, b = verdict.comparison.a.score, verdict.comparison.b.score
    lines = [
        f"# prompttune check: {'passed' if verdict.passed else 'FAILED'}",
        "",
        f"Verdict: **{paired.verdict}** (candidate - baseline, paired on {paired.examples} "
        "examples; fails only when the 95% interval lies below 0).",
        "",
        "| | score | 95% interval | examples | failed |",
        "|---|---|---|---|---|",
        f"| baseline | {a.mean:.3f} | [{a.ci_low:.3f}, {a.ci_high:.3f}] | {a.examples} | "
        f"{a.failed} |",
        f"| candidate | {b.mean:.3f} | [{b.ci_low:.3f}, {b.ci_high:.3f}] | {b.examples} | "
        f"{b.failed} |",
        "",
        f"Difference {paired.difference:+.3f}, 95% interval [{paired.ci_low:+.3f}, "
        f"{paired.ci_high:+.3f}], p-value {paired.p_value:.4f}.",
    ]
    if paired.per_label_difference:
        lines += ["", "| label | recall difference |", "|---|---|"]
        lines += [f"| {label} | {d:+.3f} |" for label, d in paired.per_label_difference.items()]
    lines += ["", "## Inputs", "", "```json", json.dumps(inputs, indent=2), "```", ""]
    return "\n".join(lines)


# ---- fine-tuning export -----------------------------------------------------------------


def export_finetune(client: Client, job: Job, out: Path) -> dict[str, int]:
    """Writes ``train.jsonl`` and ``validation.jsonl`` in `out`: the job's best prompt rendered
    for every labelled example of that split (kNN prompts through the server's RenderPrompt,
    which has the embedder) plus the expected output as the assistant message. Returns the
    lines written per file. Raises TaskFileError when the job has no result."""
    if job.result is None:
        raise TaskFileError(f"job {job.id} has no result ({job.state.value})")
    prompt = job.result.best.prompt
    dataset = client.get_job_dataset(job.id)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, examples in (("train", dataset.train), ("validation", dataset.validation)):
        lines = [json.dumps(record, ensure_ascii=False) for record in
                 finetune_records(client, prompt, examples)]  # fmt: skip
        (out / f"{name}.jsonl").write_text("".join(f"{line}\n" for line in lines), "utf-8")
        written[f"{name}.jsonl"] = len(lines)
    if prompt.calibration is not None:
        say("note: the prompt's label calibration cannot be expressed in chat fine-tuning data "
            "and is left out")  # fmt: skip
    return written


def finetune_records(
    client: Client, prompt: Prompt, examples: tuple[Example, ...]
) -> Iterator[dict[str, Any]]:
    """One ``{"messages": [...]}`` per example with an expected output; an example whose
    rendering has an empty message is skipped (the format refuses empty content)."""
    retrieves = prompt.knn_k > 0 and bool(prompt.demo_pool)
    for example in examples:
        if not example.output.strip():
            continue
        if retrieves:
            messages = client.render_prompt(prompt, example.inputs)
        else:
            messages = render(prompt, example.inputs)
        # A reasoning prompt's demonstrations answer "Answer: <output>"; so do its targets.
        target = f"Answer: {example.output}" if prompt.format.reasoning else example.output
        chat = [*to_openai_messages(messages), {"role": "assistant", "content": target}]
        if all(message["content"].strip() for message in chat):
            yield {"messages": chat}


def cmd_export_finetune(args: argparse.Namespace, connect: Connect) -> int:
    out = Path(args.out or f"prompttune-finetune-{args.job_id}")
    with connect(args) as client:
        written = export_finetune(client, client.get_job(args.job_id), out)
    for name, count in written.items():
        say(f"{out / name}: {count} examples")
    return 0


# ---- parsers ----------------------------------------------------------------------------


ClientOptions = Callable[[argparse.ArgumentParser], None]
_SOURCE_HELP = "a job id, a result file or a prompt export (json, yaml, openai)"


def _common(parser: argparse.ArgumentParser, client_options: ClientOptions) -> None:
    parser.add_argument("--data", required=True, help="JSONL or CSV examples scored by both")
    parser.add_argument(
        "--task", help="task file whose task scores the answers (default: the job's or result "
        "file's task, else one implied by the prompt: its labels, or exact match)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    client_options(parser)


def add_comparison_commands(commands: Any, client_options: ClientOptions) -> None:
    compare_cmd = commands.add_parser(
        "compare", help="score two prompts on the same data and compare them paired"
    )
    compare_cmd.add_argument("a", metavar="A", help=_SOURCE_HELP)
    compare_cmd.add_argument("b", metavar="B", help=_SOURCE_HELP)
    compare_cmd.add_argument(
        "--model", help="model spec (JSON or a YAML/JSON file) for a side whose source records "
        "none (default: the local model)",
    )  # fmt: skip
    compare_cmd.add_argument("--json", action="store_true", help="the comparison as JSON")
    _common(compare_cmd, client_options)
    compare_cmd.set_defaults(handler=cmd_compare)

    check_cmd = commands.add_parser(
        "check", help="exit 1 when a stored prompt on a new model is worse beyond noise"
    )
    check_cmd.add_argument("--prompt", required=True, help=_SOURCE_HELP)
    check_cmd.add_argument("--model", required=True, help="the new model: JSON or a file")
    check_cmd.add_argument(
        "--against", help=f"reference: {_SOURCE_HELP} (default: the prompt on the model its "
        "file records, or the local model)",
    )  # fmt: skip
    check_cmd.add_argument("--out", default=".", help="folder for verdict.json and verdict.md")
    _common(check_cmd, client_options)
    check_cmd.set_defaults(handler=cmd_check)
