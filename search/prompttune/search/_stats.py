"""Bootstrap statistics and `Score` construction. Seeded numpy only: results are reproducible."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from prompttune.contract import Example, ExampleResult, Objective, Score, SearchSpec, TaskSpec
from prompttune.search._metrics import extract_prediction, normalize_answer

BOOTSTRAP_RESAMPLES = 1000


def bootstrap_ci(values: Sequence[float], seed: int = 0) -> tuple[float, float]:
    """Percentile 95% bootstrap interval of the mean (1000 resamples). (0, 0) when empty."""
    if not values:
        return 0.0, 0.0
    data = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, len(data), size=(BOOTSTRAP_RESAMPLES, len(data)))
    means = data[indices].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def paired_bootstrap_lower_bound(
    candidate: Sequence[float], baseline: Sequence[float], seed: int = 0
) -> float:
    """One-sided 95% lower bound of mean(candidate - baseline) over paired examples.

    A value above 0 means the candidate is better than the baseline at the 5% level.
    """
    if len(candidate) != len(baseline):
        raise ValueError("paired samples must have equal length")
    if not candidate:
        return 0.0
    diffs = np.asarray(candidate, dtype=np.float64) - np.asarray(baseline, dtype=np.float64)
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, len(diffs), size=(BOOTSTRAP_RESAMPLES, len(diffs)))
    return float(np.percentile(diffs[indices].mean(axis=1), 5.0))


def _per_label(
    task: TaskSpec, results: Sequence[ExampleResult], gold: Mapping[str, str]
) -> dict[str, float]:
    hits: dict[str, list[float]] = {label: [] for label in task.labels}
    for result in results:
        if result.error:
            continue
        expected = gold[result.id]
        label = next(
            (lab for lab in task.labels if normalize_answer(lab) == normalize_answer(expected)),
            None,
        )
        if label is None:
            continue
        predicted = extract_prediction(task, result.answer)
        hits[label].append(float(normalize_answer(predicted) == normalize_answer(expected)))
    return {label: sum(v) / len(v) for label, v in sorted(hits.items()) if v}


def make_score(
    task: TaskSpec, examples: Sequence[Example], results: Sequence[ExampleResult], seed: int = 0
) -> Score:
    """Mean, 95% CI and per-label accuracy over the non-failed results; failures are counted."""
    scored = [result.score for result in results if not result.error]
    failed = len(results) - len(scored)
    mean = sum(scored) / len(scored) if scored else 0.0
    low, high = bootstrap_ci(scored, seed)
    per_label: dict[str, float] = {}
    if task.labels:
        per_label = _per_label(task, results, {ex.id: ex.output for ex in examples})
    return Score(mean, low, high, len(scored), failed, per_label)


def objective_value(spec: SearchSpec, score: Score) -> float:
    """The value of `score` under the search's objective: the mean, macro-F1, the recall of
    the worst label, or the mean of the worst slice of `spec.slice_tag` (the mean when the
    score has no such breakdown)."""
    if spec.objective is Objective.MACRO_F1 and score.label_metrics:
        return score.macro_f1
    if spec.objective is Objective.WORST_LABEL:
        recalls = [m.recall for m in score.label_metrics.values() if m.support]
        return min(recalls, default=score.mean)
    if spec.objective is Objective.WORST_SLICE:
        means = [s.mean for s in score.slices if s.tag == spec.slice_tag and s.examples]
        return min(means, default=score.mean)
    return score.mean
