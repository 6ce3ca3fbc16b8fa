"""The search benchmark's report: JSON, a Markdown table and a plot of best validation score
against LLM calls, rebuilt from the stored per-(task, method) results."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench_tasks import TASKS

METHOD_TITLES = {
    "zero_shot": "zero-shot (seed instruction)",
    "random_demos": "demo-only random search",
    "dspy_bfsrs": "DSPy BootstrapFewShotWithRandomSearch",
    "prompttune": "prompttune (budget of DSPy BFSRS)",
    "dspy_mipro": "DSPy MIPROv2 light",
    "prompttune_mipro_budget": "prompttune (budget of DSPy MIPROv2)",
}
PLOT_STYLES: dict[str, dict[str, Any]] = {
    "zero_shot": {"color": "black", "marker": "o", "linestyle": ":"},
    "random_demos": {"color": "tab:green", "linestyle": "--"},
    "dspy_bfsrs": {"color": "tab:orange"},
    "dspy_mipro": {"color": "tab:purple"},
    "prompttune": {"color": "tab:red", "linewidth": 2.2},
    "prompttune_mipro_budget": {"color": "tab:brown", "linewidth": 2.2, "linestyle": "-."},
}
# (prompttune method, the method it is compared with)
COMPARISONS = (
    ("prompttune", "dspy_bfsrs"),
    ("prompttune_mipro_budget", "dspy_mipro"),
    ("prompttune", "random_demos"),
    ("prompttune", "zero_shot"),
)


def load_results(results_dir: Path, pairs: Sequence[tuple[str, str]]) -> dict[str, dict[str, Any]]:
    """{task: {method: result}} of the planned pairs that have a stored result."""
    found: dict[str, dict[str, Any]] = {}
    for method, task in pairs:
        path = results_dir / TASKS[task].slug / f"{method}.json"
        if path.exists():
            record = json.loads(path.read_text())
            record.pop("test_answers", None)  # per-example answers stay in the pair's file
            found.setdefault(task, {})[method] = record
    return found


def _test_mean(record: dict[str, Any] | None) -> float | None:
    if record is None or record.get("status") != "ok":
        return None
    mean = record.get("test", {}).get("mean")
    return float(mean) if mean is not None else None


def comparisons(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per comparison: test-accuracy differences per task where both completed, and the mean."""
    lines = []
    for ours, theirs in COMPARISONS:
        per_task = {}
        for task, methods in results.items():
            a, b = _test_mean(methods.get(ours)), _test_mean(methods.get(theirs))
            if a is not None and b is not None:
                per_task[task] = {"ours": a, "theirs": b, "diff": a - b}
        mean = sum(d["diff"] for d in per_task.values()) / len(per_task) if per_task else None
        lines.append({"ours": ours, "theirs": theirs, "per_task": per_task, "mean_diff": mean})
    return lines


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _row(task: str, method: str, record: dict[str, Any]) -> str:
    status = record.get("status", "?")
    test = record.get("test", {})
    usage = record.get("usage", {})
    if "mean" in test:
        accuracy = f"{_pct(test['mean'])} [{_pct(test.get('ci_low'))}, {_pct(test.get('ci_high'))}]"
    else:
        accuracy = "–"
    budget = record.get("budget") or {}
    calls = usage.get("calls", "–")
    if budget:
        calls = f"{calls} / {budget['max_llm_calls']}"
    wall = record.get("wall_seconds")
    shown_wall = "–" if wall is None else f"{wall:.0f}"
    if wall is not None and 2 * usage.get("upstream_calls", 0) < usage.get("calls", 0):
        shown_wall += "*"  # mostly answered by the cache of an earlier run
    return (
        f"| {task} | {METHOD_TITLES.get(method, method)} | {status} | {accuracy} "
        f"| {_pct(record.get('validation', {}).get('mean'))} | {calls} "
        f"| {usage.get('calls_incl_cache_hits', '–')} | {usage.get('tokens', '–')} "
        f"| {shown_wall} |"
    )


def _summary_lines(lines: list[dict[str, Any]]) -> list[str]:
    text = []
    for line in lines:
        ours, theirs = METHOD_TITLES[line["ours"]], METHOD_TITLES[line["theirs"]]
        if line["mean_diff"] is None:
            text.append(f"- {ours} vs {theirs}: no task where both completed yet.")
            continue
        per_task = ", ".join(
            f"{task} {100 * d['diff']:+.1f}" for task, d in sorted(line["per_task"].items())
        )
        wins = sum(1 for d in line["per_task"].values() if d["diff"] >= 0)
        text.append(
            f"- {ours} vs {theirs}: {100 * line['mean_diff']:+.1f} points on average over "
            f"{len(line['per_task'])} task(s), ≥ on {wins}; per task: {per_task}."
        )
    return text


def _failures(results: dict[str, dict[str, Any]]) -> list[str]:
    text = []
    for task, methods in sorted(results.items()):
        for method, record in methods.items():
            note = record.get("note", "")
            budget = record.get("budget") or {}
            if budget and not str(budget.get("source", "")).startswith("calls used"):
                text.append(f"- {task} / {method}: budget {budget['source']}.")
            if record.get("status") == "ok":
                parse = record.get("test", {}).get("parse_failures")
                if parse:
                    text.append(f"- {task} / {method}: {parse} test answers unparsable (scored 0).")
                continue
            error = record.get("error") or {}
            message = " ".join(str(error.get("message", "")).split())  # one Markdown line
            detail = f"{error.get('type', '')}: {message[:300]}".replace("`", "'")
            where = " → ".join(error.get("where", []))
            calls = record.get("usage", {}).get("calls")
            text.append(
                f"- {task} / {method}: **{record.get('status')}** {note} {detail}"
                + (f" (after {calls} LLM calls)" if calls else "")
                + (f", raised at `{where}`" if where else "")
            )
    return text


def _commands(results: dict[str, dict[str, Any]]) -> list[str]:
    """Each distinct command that produced a stored result, with its pairs and end time."""
    produced: dict[str, list[str]] = {}
    for task, methods in sorted(results.items()):
        for method, record in methods.items():
            produced.setdefault(str(record.get("command", "?")), []).append(
                f"{task}/{method} ({record.get('finished_at', '?')})"
            )
    return [f"- `{command}`: {', '.join(pairs)}" for command, pairs in produced.items()]


def write_markdown(path: Path, report: dict[str, Any]) -> None:
    lines = [
        f"# Search benchmark — {report['date']}",
        "",
        f"Command: `{report['command']}`",
        "",
        "Task model: SmolLM2-135M-Instruct (Q4_1 GGUF) behind one llama-cpp-python server "
        f"(n_ctx 2048, {report['settings'].get('server_threads', 2)} thread(s)), temperature 0, "
        "every call capped by max_tokens (32 for prompttune's prompts, 128 for DSPy's field "
        "format, 384 for MIPROv2's proposer). Same fixed "
        "splits (train / validation / test, seeded and label-stratified) and the same test "
        "metric (label choice on the free-text answer, prompttune's `score_answer`) for every "
        "method. Test accuracy in % with its 95% bootstrap interval. *Calls* are the distinct "
        "optimisation requests (what a cold cache pays; test scoring excluded) against the "
        "method's budget where it has one; *incl. hits* counts every request made. A wall "
        "time marked * is a rerun that the cache of an earlier run mostly answered (its calls "
        "were paid then), not a cold-cache time.",
        "",
        f"Settings: `{json.dumps(report['settings'], sort_keys=True)}`",
        "",
        f"Progress: {report['finished']} of {report['planned']} planned (task, method) pairs.",
        "",
        "| task | method | status | test acc. [95% CI] | best val. | calls / budget "
        "| incl. hits | tokens | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for task, methods in report["results"].items():
        for method in METHOD_TITLES:
            if method in methods:
                lines.append(_row(task, method, methods[method]))
    lines += ["", "## Summary", "", *_summary_lines(report["comparisons"])]
    notes = _failures(report["results"])
    if notes:
        lines += ["", "## Crashes, timeouts and fallbacks", "", *notes]
    lines += ["", "## Commands that produced the results", "", *_commands(report["results"])]
    lines += ["", f"Plot: `{report['plot']}`", ""]
    path.write_text("\n".join(lines))


def write_plot(path: Path, results: dict[str, dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted(results)
    if not tasks:
        return
    columns = min(3, len(tasks))
    rows = (len(tasks) + columns - 1) // columns
    size = (max(5.0 * columns, 10.0), 3.6 * rows + 0.8)
    figure, axes = plt.subplots(rows, columns, figsize=size, squeeze=False)
    for index, task in enumerate(tasks):
        axis = axes[index // columns][index % columns]
        for method, record in results[task].items():
            trace = record.get("trace") or []
            if not trace:
                continue
            calls = [int(point[0]) for point in trace]
            scores = [float(point[1]) for point in trace]
            total = record.get("usage", {}).get("calls", calls[-1])
            calls.append(max(int(total or 0), calls[-1]))
            scores.append(scores[-1])
            axis.step(
                calls,
                scores,
                where="post",
                label=METHOD_TITLES.get(method, method),
                **PLOT_STYLES.get(method, {}),
            )
        axis.set_ylim(0.0, 1.02)
        axis.set_title(task)
        axis.set_xlabel("LLM calls")
        axis.set_ylabel("best validation score")
        axis.grid(alpha=0.3)
    for index in range(len(tasks), rows * columns):
        axes[index // columns][index % columns].axis("off")
    shown: dict[str, Any] = {}
    for axis in axes.flat:
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            shown.setdefault(label, handle)
    figure.legend(list(shown.values()), list(shown), loc="lower center", ncol=3, fontsize=8)
    figure.tight_layout(rect=(0, 0.8 / size[1] + 0.04, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_report(
    results_dir: Path,
    out_dir: Path,
    run_name: str,
    command: str,
    pairs: Sequence[tuple[str, str]],
    settings: dict[str, Any],
) -> Path:
    """Writes ``<run_name>-<date>.{json,md,png}`` in `out_dir`; returns the Markdown path."""
    date = datetime.now(UTC).date().isoformat()
    results = load_results(results_dir, pairs)
    stem = out_dir / f"{run_name}-{date}"
    report = {
        "date": date,
        "command": command,
        "settings": settings,
        "planned": len(pairs),
        "finished": sum(len(methods) for methods in results.values()),
        "plot": stem.with_suffix(".png").name,
        "results": results,
        "comparisons": comparisons(results),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str))
    write_markdown(stem.with_suffix(".md"), report)
    write_plot(stem.with_suffix(".png"), results)
    return stem.with_suffix(".md")
