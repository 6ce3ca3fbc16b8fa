"""`prompttune report` and `prompttune export`: a finished job as a self-contained HTML or
Markdown report with a PNG plot, or its best prompt in a ready-to-use format."""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from prompttune.client import Job, JobEvent, Prompt, to_openai_messages
from prompttune.client._render import render


@dataclass(frozen=True)
class TrialPoint:
    trial: int
    score: float
    pruned: bool
    llm_calls: int  # cumulative LLM calls when the trial finished


def trial_points(events: list[JobEvent]) -> list[TrialPoint]:
    """Trials in order, each with the LLM calls used by the time its usage was reported."""
    points: list[TrialPoint] = []
    calls = 0
    for event in events:
        if event.budget_used is not None:
            calls = event.budget_used.usage.llm_calls
            if points and points[-1].llm_calls < 0:
                points[-1] = TrialPoint(
                    points[-1].trial, points[-1].score, points[-1].pruned, calls
                )
        elif event.trial_finished is not None:
            t = event.trial_finished
            points.append(TrialPoint(t.trial, t.score, t.pruned, -1))
    return [
        p if p.llm_calls >= 0 else TrialPoint(p.trial, p.score, p.pruned, calls) for p in points
    ]


def plot_png(job: Job, points: list[TrialPoint]) -> bytes:
    """Score against trials and against LLM calls, baseline and best marked; the Pareto set
    (score vs prompt tokens) in a third panel when present."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    result = job.result
    pareto = result.pareto if result is not None else ()
    panels = 3 if pareto else 2
    figure, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.8), dpi=100)
    x_axes: tuple[tuple[str, Callable[[TrialPoint], float]], ...] = (
        ("trial", lambda p: p.trial),
        ("LLM calls", lambda p: p.llm_calls),
    )
    for axis, (label, x_of) in zip(axes, x_axes, strict=False):
        kept = [p for p in points if not p.pruned]
        pruned = [p for p in points if p.pruned]
        axis.scatter([x_of(p) for p in kept], [p.score for p in kept], s=16, label="trial")
        axis.scatter(
            [x_of(p) for p in pruned], [p.score for p in pruned], s=12, marker="x", label="pruned"
        )
        best_so_far: list[float | None] = []
        running = float("-inf")
        for point in points:
            running = max(running, point.score) if not point.pruned else running
            best_so_far.append(running if running > float("-inf") else None)
        axis.step([x_of(p) for p in points], best_so_far, where="post", label="best so far")
        if result is not None:
            axis.axhline(result.baseline.validation.mean, color="grey", ls="--", label="baseline")
            axis.axhline(result.best.validation.mean, color="green", ls=":", label="best (val)")
        axis.set_xlabel(label)
        axis.set_ylabel("score")
        axis.legend(fontsize=7)
    if pareto:
        axes[2].plot([p.prompt_tokens for p in pareto], [p.validation.mean for p in pareto], "o-")
        axes[2].set_xlabel("prompt tokens")
        axes[2].set_ylabel("validation score")
        axes[2].set_title("Pareto set")
    figure.suptitle(f"{job.id}")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def _summary_rows(job: Job) -> list[tuple[str, str]]:
    rows = [("job", job.id), ("state", job.state.value)]
    result = job.result
    if result is None:
        return [*rows, ("error", job.error)]
    for name, scores in (("baseline", result.baseline), ("best", result.best)):
        val = scores.validation
        text = f"validation {val.mean:.3f} [{val.ci_low:.3f}, {val.ci_high:.3f}]"
        if scores.test is not None:
            test = scores.test
            text += f"; test {test.mean:.3f} [{test.ci_low:.3f}, {test.ci_high:.3f}]"
        rows.append((name, text))
    usage = result.usage
    rows += [
        ("verdict", result.summary),
        ("trials", f"{result.trials_completed} (pruned {result.trials_pruned})"),
        ("LLM calls", f"{usage.llm_calls} (cache hits {usage.cache_hits})"),
        ("tokens", str(usage.prompt_tokens + usage.completion_tokens)),
        ("wall time", f"{result.wall_seconds:.1f} s, stopped by {result.stop_reason}"),
        ("pareto points", str(len(result.pareto))),
    ]
    return rows


def report(job: Job, events: list[JobEvent], fmt: str) -> str:
    """A self-contained report (the plot is an inline data: URI) in "html" or "md"."""
    png = base64.b64encode(plot_png(job, trial_points(events))).decode()
    rows = _summary_rows(job)
    best = json.dumps(prompt_document(job.result.best.prompt), indent=2) if job.result else ""
    if fmt == "md":
        table = "\n".join(f"| {k} | {v.replace('|', '/')} |" for k, v in rows)
        return (
            f"# prompttune report: {job.id}\n\n| | |\n|---|---|\n{table}\n\n"
            f"![score plot](data:image/png;base64,{png})\n\n"
            f"## Best prompt\n\n```json\n{best}\n```\n"
        )
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>prompttune report {html.escape(job.id)}</title></head><body>"
        f"<h1>prompttune report: {html.escape(job.id)}</h1><table>{cells}</table>"
        f"<img alt='score plot' src='data:image/png;base64,{png}'>"
        f"<h2>Best prompt</h2><pre>{html.escape(best)}</pre></body></html>\n"
    )


def prompt_document(prompt: Prompt) -> dict[str, Any]:
    from prompttune.server.cli import to_jsonable

    document: dict[str, Any] = to_jsonable(prompt)
    return document


def export(job: Job, fmt: str) -> str:
    """The best prompt: "json"/"yaml" = the prompt itself (loadable by `prompttune render
    --prompt`); "openai" = chat messages with an `{input}`-style placeholder per input field
    plus the prompt, ready for chat.completions."""
    if job.result is None:
        raise ValueError(f"job {job.id} has no result ({job.state.value})")
    prompt = job.result.best.prompt
    document = prompt_document(prompt)
    if fmt == "json":
        return json.dumps(document, indent=2) + "\n"
    if fmt == "yaml":
        return yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
    fields = prompt.input_fields or ("input",)
    placeholders = {name: f"{{{{{name}}}}}" for name in fields}
    exported: dict[str, Any] = {
        "job_id": job.id,
        "input_fields": list(fields),
        "placeholder_syntax": "{{field}} marks where each input goes; substitute literally",
    }
    if prompt.knn_k > 0 and prompt.demo_pool:
        # Demonstrations are chosen per input, so the template holds the static part only.
        static = dataclasses.replace(prompt, knn_k=0, demo_pool=())
        exported["dynamic_demos"] = {
            "k": prompt.knn_k,
            "how": "insert the k pool examples most similar to the input (all-MiniLM-L6-v2 "
            "cosine), most similar last, before the input; or call RenderPrompt per input",
            "pool": document.get("demo_pool", []),
        }
    else:
        static = prompt
    exported["messages"] = to_openai_messages(render(static, placeholders))
    exported["prompt"] = document
    return json.dumps(exported, indent=2) + "\n"
