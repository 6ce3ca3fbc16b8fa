"""`prompttune report`: a finished job as a self-contained HTML or Markdown report with a PNG
plot (matplotlib, imported only when a report is drawn)."""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Callable
from dataclasses import dataclass

from prompttune.contract import ConfusionMatrix, Job, JobEvent, to_document


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


def confusion_panels(job: Job) -> list[tuple[str, ConfusionMatrix]]:
    """The confusion matrices the report draws: baseline and best, on test (validation when
    the job had no test split)."""
    result = job.result
    if result is None:
        return []
    panels = []
    for name, scores in (("baseline", result.baseline), ("best", result.best)):
        split, score = ("test", scores.test) if scores.test else ("validation", scores.validation)
        if score.confusion is not None and score.confusion.labels:
            panels.append((f"{name} on {split}", score.confusion))
    return panels


def confusion_png(panels: list[tuple[str, ConfusionMatrix]]) -> bytes:
    """Heatmaps of confusion matrices side by side, expected label (rows) x predicted
    (columns), the count written in every cell."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    size = max(len(matrix.labels) for _, matrix in panels)
    side = min(12.0, 2.0 + 0.6 * size)
    figure, axes = plt.subplots(
        1, len(panels), figsize=(side * len(panels), side), dpi=100, squeeze=False
    )
    for axis, (title, matrix) in zip(axes[0], panels, strict=True):
        n = len(matrix.labels)
        grid = [list(matrix.counts[row * n : (row + 1) * n]) for row in range(n)]
        axis.imshow(grid, cmap="Blues")
        most = max(matrix.counts, default=0)
        for row in range(n):
            for column in range(n):
                count = grid[row][column]
                axis.text(column, row, str(count), ha="center", va="center",
                          color="white" if count > most / 2 else "black", fontsize=8)  # fmt: skip
        axis.set_xticks(range(n), matrix.labels, rotation=45, ha="right", fontsize=8)
        axis.set_yticks(range(n), matrix.labels, fontsize=8)
        axis.set_xlabel("predicted")
        axis.set_ylabel("expected")
        axis.set_title(title)
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


def _images(job: Job, events: list[JobEvent]) -> tuple[str, str]:
    """The score plot and the confusion matrices as base64 PNGs ("" when not drawn)."""
    try:
        png = base64.b64encode(plot_png(job, trial_points(events))).decode()
        panels = confusion_panels(job)
        confusion = base64.b64encode(confusion_png(panels)).decode() if panels else ""
    except ImportError:
        return "", ""
    return png, confusion


def report(job: Job, events: list[JobEvent], fmt: str) -> str:
    """A self-contained report (the plots are inline data: URIs) in "html" or "md": scores,
    the score plot, and for label tasks the confusion matrices of baseline and best. Without
    matplotlib (the ``report`` extra) the report says so in place of the plots."""
    png, confusion = _images(job, events)
    rows = _summary_rows(job)
    if not png:
        rows.append(("plot", "not drawn: install matplotlib (pip install 'prompttune[report]')"))
    best = json.dumps(to_document(job.result.best.prompt), indent=2) if job.result else ""
    if fmt == "md":
        table = "\n".join(f"| {k} | {v.replace('|', '/')} |" for k, v in rows)
        return (
            f"# prompttune report: {job.id}\n\n| | |\n|---|---|\n{table}\n\n"
            + (f"![score plot](data:image/png;base64,{png})\n\n" if png else "")
            + (f"![confusion matrices](data:image/png;base64,{confusion})\n\n" if confusion else "")
            + f"## Best prompt\n\n```json\n{best}\n```\n"
        )
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>prompttune report {html.escape(job.id)}</title></head><body>"
        f"<h1>prompttune report: {html.escape(job.id)}</h1><table>{cells}</table>"
        + (f"<img alt='score plot' src='data:image/png;base64,{png}'>" if png else "")
        + (
            f"<img alt='confusion matrices' src='data:image/png;base64,{confusion}'>"
            if confusion
            else ""
        )
        + f"<h2>Best prompt</h2><pre>{html.escape(best)}</pre></body></html>\n"
    )
