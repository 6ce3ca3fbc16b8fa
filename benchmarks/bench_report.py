"""The search benchmark's report (JSON, Markdown and a bar chart), rebuilt from the stored
per-(model, task, method) results.

Criteria of issue 14, per (model, task): prompttune minus the better of the hand-written prompt
and the zero-shot seed, and prompttune minus demo-only random search, each with the 95% interval
of the paired difference on the test examples (paired bootstrap over per-example correctness).
A row FAILS when prompttune is below either by more than the interval (the interval lies wholly
below 0); a section FAILS when its average gain over either is under 5 points.
"""

from __future__ import annotations

import json
import random
import statistics
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench_tasks import TASKS

from prompttune.search._proposer import instruction_problem

METHOD_TITLES = {
    "zero_shot": "zero-shot seed instruction",
    "handwritten": "hand-written prompt",
    "prompttune": "prompttune (scoring auto)",
    "random_demos": "demo-only random search",
    "prompttune_generation": "prompttune (scoring generation)",
    "dspy_bfsrs": "DSPy BootstrapFewShotWithRandomSearch",
    "dspy_mipro": "DSPy MIPROv2 light",
}
BOOTSTRAP_RESAMPLES = 2000
REQUIRED_GAIN = 0.05
Key = tuple[str, str, str]


def load_results(results_dir: Path, triples: Sequence[Key]) -> dict[Key, dict[str, Any]]:
    """{(model, task, method): result} of the planned triples that have a stored result."""
    found = {}
    for model, task, method in triples:
        path = results_dir / model / TASKS[task].slug / f"{method}.json"
        if path.exists():
            found[(model, task, method)] = json.loads(path.read_text())
    return found


def correctness(record: dict[str, Any] | None) -> dict[str, float]:
    """Example id -> score on test of a finished run (failed calls count as wrong)."""
    if record is None or record.get("status") != "ok":
        return {}
    return {a["id"]: float(a["score"]) for a in record.get("test_answers", [])}


def paired_difference(
    better: dict[str, float], other: dict[str, float], seed: int = 0
) -> dict[str, float] | None:
    """Mean of `better` - `other` over their shared examples, with its 95% paired bootstrap
    interval; None without shared examples."""
    ids = sorted(set(better) & set(other))
    if not ids:
        return None
    diffs = [better[i] - other[i] for i in ids]
    rng = random.Random(seed)
    means = sorted(
        statistics.fmean(rng.choices(diffs, k=len(diffs))) for _ in range(BOOTSTRAP_RESAMPLES)
    )
    low, high = means[int(0.025 * BOOTSTRAP_RESAMPLES)], means[int(0.975 * BOOTSTRAP_RESAMPLES) - 1]
    return {"diff": statistics.fmean(diffs), "ci_low": low, "ci_high": high, "examples": len(ids)}


def _test_mean(record: dict[str, Any] | None) -> float | None:
    if record is None or record.get("status") != "ok":
        return None
    mean = record.get("test", {}).get("mean")
    return float(mean) if mean is not None else None


def criteria_row(results: dict[Key, dict[str, Any]], model: str, task: str) -> dict[str, Any]:
    """Prompttune against the better baseline and against random demos on one (model, task)."""
    get = lambda method: results.get((model, task, method))  # noqa: E731
    baselines = [m for m in ("handwritten", "zero_shot") if _test_mean(get(m)) is not None]
    best_baseline = max(baselines, key=lambda m: _test_mean(get(m)) or 0.0, default=None)
    prompttune = correctness(get("prompttune"))
    row: dict[str, Any] = {"model": model, "task": task, "best_baseline": best_baseline}
    row["vs_baseline"] = (
        paired_difference(prompttune, correctness(get(best_baseline))) if best_baseline else None
    )
    row["vs_random_demos"] = paired_difference(prompttune, correctness(get("random_demos")))
    compared = [row["vs_baseline"], row["vs_random_demos"]]
    if any(c is None for c in compared):
        row["verdict"] = "incomplete"
    else:
        below = any(c["ci_high"] < 0 for c in compared)
        row["verdict"] = "FAIL" if below else "PASS"
    return row


def averages(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Average gains of complete rows and whether each reaches +5 points."""
    complete = [r for r in rows if r["verdict"] != "incomplete"]
    out: dict[str, Any] = {"rows": len(complete)}
    for name in ("vs_baseline", "vs_random_demos"):
        mean = statistics.fmean(r[name]["diff"] for r in complete) if complete else None
        out[name] = mean
        out[f"{name}_pass"] = mean is not None and mean >= REQUIRED_GAIN
    return out


def scoring_pairs(results: dict[Key, dict[str, Any]], model: str, task: str) -> dict[str, Any]:
    """Prompttune with scoring auto (label probabilities where possible) beside generation."""
    auto, gen = (
        results.get((model, task, "prompttune")),
        results.get((model, task, "prompttune_generation")),
    )
    row: dict[str, Any] = {"model": model, "task": task}
    for name, record in (("auto", auto), ("generation", gen)):
        ok = record is not None and record.get("status") == "ok"
        row[name] = {
            "test": _test_mean(record),
            "seconds_per_example": record.get("seconds_per_scored_example") if ok else None,
            "scoring": record.get("scoring") if ok else None,
        }
    a, g = row["auto"]["seconds_per_example"], row["generation"]["seconds_per_example"]
    row["time_ratio"] = a / g if a and g else None
    row["timing"] = "separate runs"
    side = side_by_side(results.get((model, task, "scoring_cost")), "prompttune winner")
    if side is not None:  # the same prompt scored both ways in one run: the fair figure
        row["auto"]["seconds_per_example"] = side["label_seconds_per_example"]
        row["generation"]["seconds_per_example"] = side["generation_seconds_per_example"]
        row["time_ratio"] = side["time_ratio"]
        row["timing"] = "side by side"
    row["difference"] = paired_difference(correctness(auto), correctness(gen))
    # Issue 14: the same or better accuracy (not worse beyond noise) in at most half the time.
    if row["auto"]["scoring"] == "generation":  # no label probabilities to judge
        row["verdict"] = "n/a (auto scored by generation)"
    elif row["difference"] is None or row["time_ratio"] is None:
        row["verdict"] = "incomplete"
    else:
        not_worse = row["difference"]["ci_high"] >= 0
        row["verdict"] = "PASS" if not_worse and row["time_ratio"] <= 0.5 else "FAIL"
    return row


def side_by_side(record: dict[str, Any] | None, prompt: str) -> dict[str, Any] | None:
    """The side-by-side scoring-cost figures of one prompt, when they were measured."""
    if record is None or record.get("status") != "ok":
        return None
    found: dict[str, Any] | None = record.get("prompts", {}).get(prompt)
    return found


def _accuracy(correct: Sequence[float | None]) -> float | None:
    scored = [c for c in correct if c is not None]
    return sum(scored) / len(scored) if scored else None


def _cost_section(report: dict[str, Any]) -> list[str]:
    lines = [
        "| model | task | prompt | examples | label s / example | generation s / example "
        "| label / generation time | label test % | generation test % | label fallbacks |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (model, task, method), record in report["records"]:
        if method != "scoring_cost" or record.get("status") != "ok":
            continue
        for name, m in record["prompts"].items():
            ratio = "—" if m["time_ratio"] is None else f"{m['time_ratio']:.2f}"
            lines.append(
                f"| {model} | {task} | {name} | {m['examples']} "
                f"| {m['label_seconds_per_example']:.3f} "
                f"| {m['generation_seconds_per_example']:.3f} | {ratio} "
                f"| {_pct(_accuracy(m['label_correct']))} "
                f"| {_pct(_accuracy(m['generation_correct']))} | {m['label_fallbacks']} |"
            )
    return lines if len(lines) > 2 else ["(not measured yet)"]


def at_chance(results: dict[Key, dict[str, Any]], model: str, task: str) -> bool:
    """Whether every finished method's test interval on a label task includes chance (one
    over the number of labels) or lies below it."""
    labels = TASKS[task].label_set
    records = [r for (m, t, _), r in results.items() if (m, t) == (model, task)]
    finished = [r for r in records if r.get("status") == "ok" and "test" in r]
    if not labels or not finished:
        return False
    return all(r["test"]["ci_low"] <= 1.0 / len(labels) for r in finished)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def _diff(value: dict[str, float] | None) -> str:
    if value is None:
        return "—"
    return (
        f"{100 * value['diff']:+.1f} [{100 * value['ci_low']:+.1f}, {100 * value['ci_high']:+.1f}]"
    )


def _result_row(key: Key, record: dict[str, Any]) -> str:
    model, task, method = key
    if record.get("status") != "ok":
        error = record.get("error", {})
        status = f"{record.get('status')}: {error.get('type', '')}"
        return f"| {model} | {task} | {METHOD_TITLES.get(method, method)} | {status} |" + " |" * 5
    test, usage = record["test"], record.get("usage", {})
    seconds = record.get("seconds_per_scored_example")
    return (
        f"| {model} | {task} | {METHOD_TITLES.get(method, method)} | {_pct(test['mean'])} "
        f"[{_pct(test['ci_low'])}, {_pct(test['ci_high'])}] | {usage.get('calls', '—')} | "
        f"{record.get('wall_seconds', 0):.0f} | {'—' if seconds is None else f'{seconds:.3f}'} | "
        f"{record.get('scoring', '—')} | {record.get('scoring_note', '')} |"
    )


def _results_section(report: dict[str, Any], held_out: bool) -> list[str]:
    lines = [
        "| model | task | method | test % [95% CI] | calls | wall s (without test) "
        "| task s / scored test example | scoring | scoring note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, record in report["records"]:
        if TASKS[key[1]].held_out == held_out and key[2] in METHOD_TITLES:
            lines.append(_result_row(tuple(key), record))
    return lines if len(lines) > 2 else ["(no results yet)"]


def _criteria_section(report: dict[str, Any], held_out: bool) -> list[str]:
    lines = [
        "| model | task | better baseline | prompttune − better baseline [95% CI] "
        "| prompttune − random demos [95% CI] | verdict | note |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = [r for r in report["criteria"] if TASKS[r["task"]].held_out == held_out]
    for r in rows:
        note = "model stays at chance" if r.get("at_chance") else ""
        lines.append(
            f"| {r['model']} | {r['task']} | {r['best_baseline'] or '—'} "
            f"| {_diff(r['vs_baseline'])} | {_diff(r['vs_random_demos'])} | {r['verdict']} "
            f"| {note} |"
        )
    for model in report["settings"]["models"]:
        avg = averages([r for r in rows if r["model"] == model])
        verdicts = {
            name: "PASS" if avg[f"{name}_pass"] else "FAIL"
            for name in ("vs_baseline", "vs_random_demos")
        }
        lines.append(
            f"| {model} | **average** ({avg['rows']} tasks) | "
            f"| {_pct(avg['vs_baseline'])} ({verdicts['vs_baseline']} ≥ +5) "
            f"| {_pct(avg['vs_random_demos'])} ({verdicts['vs_random_demos']} ≥ +5) | | |"
        )
    return lines


def _scoring_section(report: dict[str, Any]) -> list[str]:
    lines = [
        "| model | task | auto: scoring | auto: test % | generation: test % "
        "| auto − generation [95% CI] | auto s / example | generation s / example "
        "| auto / generation time | timing | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["scoring_pairs"]:
        a, g = r["auto"], r["generation"]
        sec = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
        ratio = "—" if r["time_ratio"] is None else f"{r['time_ratio']:.2f}"
        lines.append(
            f"| {r['model']} | {r['task']} | {a['scoring'] or '—'} | {_pct(a['test'])} "
            f"| {_pct(g['test'])} | {_diff(r['difference'])} | {sec(a['seconds_per_example'])} "
            f"| {sec(g['seconds_per_example'])} | {ratio} | {r.get('timing', '—')} "
            f"| {r['verdict']} |"
        )
    return lines


def _winners_section(report: dict[str, Any]) -> list[str]:
    lines = []
    for (model, task, method), record in report["records"]:
        if not method.startswith("prompttune") or record.get("status") != "ok":
            continue
        prompt = record["prompt"]
        fmt = prompt["format"]
        bench_task = TASKS[task]
        if prompt["instruction"] == bench_task.seed_instruction:
            origin = "the seed instruction"
        elif prompt["instruction"] == bench_task.handwritten_prompt().instruction:
            origin = "the hand-written baseline prompt, kept"
        else:
            problem = instruction_problem(prompt["instruction"], bench_task.spec())
            origin = (
                f"a proposal; the filter would drop it: {problem}"
                if problem
                else ("a proposal that passes the filter's text checks")
            )
        lines.append(
            f"- **{model} / {task} / {method}** ({origin}): “{prompt['instruction']}” — "
            f"{len(prompt['demos'])} demos, instruction in {fmt['instruction_placement']}, "
            f"cue “{fmt['answer_prefix']}”, "
            f"calibration {prompt.get('calibration')}; improved {record.get('improved')}"
        )
    return lines or ["(no prompttune run finished yet)"]


def write_markdown(path: Path, report: dict[str, Any]) -> None:
    settings = report["settings"]
    lines = [
        f"# Search benchmark v2 ({report['generated_at'][:10]})",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Settings: models {settings['models']}; train {settings['sizes']['train']}, validation "
        f"{settings['sizes']['validation']} (the engine holds back part of it to pick the "
        f"winner), test {settings['sizes']['test']} (fewer where the dataset has fewer); "
        f"prompttune budget {settings['fixed_budget']} LLM calls, random demos at the calls "
        f"prompttune used, prompttune with generation scoring at prompttune's budget; seed "
        f"{settings['seed']}; answers up to {settings['task_max_tokens']} tokens.",
        "",
        "## Results: tuned tasks",
        "",
        *_results_section(report, held_out=False),
        "",
        "## Results: held-out tasks (benchmarks/HELD_OUT.md)",
        "",
        *_results_section(report, held_out=True),
        "",
        "## Issue 14 criteria: tuned tasks",
        "",
        *_criteria_section(report, held_out=False),
        "",
        "## Issue 14 criteria: held-out tasks",
        "",
        *_criteria_section(report, held_out=True),
        "",
        "## Label-probability scoring against generation (prompttune, same budget)",
        "",
        "Verdict: PASS when scoring auto is not worse than generation beyond the paired interval "
        "and takes at most half the task-model seconds per scored example (test scoring).",
        "",
        *_scoring_section(report),
        "",
        'Timing "side by side": prompttune\'s winner scored both ways in one run, the two '
        'kinds of call alternating per example (the table below); "separate runs": the '
        "two prompttune runs' own test scoring, at different times on a shared machine.",
        "",
        "## Scoring cost side by side (one run, alternating per example, one call at a time)",
        "",
        *_cost_section(report),
        "",
        "## Winners' instructions",
        "",
        *_winners_section(report),
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


def write_plot(path: Path, report: dict[str, Any]) -> None:
    """Test accuracy per (model, task), one bar per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = {tuple(k[:2]): {} for k, _ in report["records"]}
    for (model, task, method), record in report["records"]:
        records[(model, task)][method] = _test_mean(record)
    groups = list(records)
    methods = [m for m in METHOD_TITLES if any(m in v for v in records.values())]
    if not groups or not methods:
        return
    figure, axis = plt.subplots(figsize=(max(6.0, 1.2 * len(groups)), 4.5))
    width = 0.8 / len(methods)
    for index, method in enumerate(methods):
        values = [100 * (records[g].get(method) or 0.0) for g in groups]
        axis.bar([i + index * width for i in range(len(groups))], values, width, label=method)
    axis.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))])
    axis.set_xticklabels([f"{m}\n{t}" for m, t in groups], fontsize=7, rotation=30)
    axis.set_ylabel("test accuracy (%)")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(
    results_dir: Path,
    out_dir: Path,
    run_name: str,
    command: str,
    triples: Sequence[Key],
    settings: dict[str, Any],
) -> dict[str, Any]:
    """Rebuilds `<run_name>-<date>.{json,md,png}` under `out_dir`; per-example test results
    are kept in the JSON (``test_answers`` of every record)."""
    results = load_results(results_dir, triples)
    pairs = list(dict.fromkeys((m, t) for m, t, _ in triples if (m, t) in {k[:2] for k in results}))
    criteria = []
    for model, task in pairs:
        row = criteria_row(results, model, task)
        row["at_chance"] = at_chance(results, model, task)
        criteria.append(row)
    report = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "settings": settings,
        "records": [[list(key), record] for key, record in results.items()],
        "criteria": criteria,
        "scoring_pairs": [scoring_pairs(results, m, t) for m, t in pairs],
    }
    stem = out_dir / f"{run_name}-{report['generated_at'][:10]}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str))
    write_markdown(stem.with_suffix(".md"), report)
    write_plot(stem.with_suffix(".png"), report)
    return report
