"""Bootstrap statistics and `Score` construction. Seeded numpy only: results are reproducible.

A label task's score is broken down by label (confusion matrix, precision, recall, F1,
macro-F1), and any score by the examples' tags (slices). `objective_value` reads the search
objective off such a score; `TrialObjective` computes it for a trial's results as they grow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from prompttune.contract import (
    ConfusionMatrix,
    Example,
    ExampleResult,
    LabelMetrics,
    Objective,
    Score,
    SearchSpec,
    SliceScore,
    TaskSpec,
)
from prompttune.search._metrics import extract_prediction, normalize_answer

BOOTSTRAP_RESAMPLES = 1000
# The confusion matrix column of answers that named none of the task's labels.
NO_LABEL = "(none)"


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


def mean_score(results: Sequence[ExampleResult]) -> float:
    """Mean metric value of the non-failed results (0 when there are none)."""
    scored = [result.score for result in results if not result.error]
    return sum(scored) / len(scored) if scored else 0.0


def _task_label(task: TaskSpec, text: str) -> str | None:
    """The label of `task.labels` that `text` names (after normalisation), or None."""
    wanted = normalize_answer(text)
    return next((label for label in task.labels if normalize_answer(label) == wanted), None)


def predicted_label(task: TaskSpec, result: ExampleResult) -> str:
    """The label a result predicted: `result.prediction` when the scorer set it, else the one
    the metric reads from the answer; `NO_LABEL` when it names none of the task's labels."""
    prediction = result.prediction or extract_prediction(task, result.answer)
    return _task_label(task, prediction) or NO_LABEL


def _label_pairs(
    task: TaskSpec, results: Sequence[ExampleResult], gold: Mapping[str, Example]
) -> list[tuple[str, str]]:
    """(expected, predicted) of the non-failed results whose expected output is a label."""
    pairs = []
    for result in results:
        expected = _task_label(task, gold[result.id].output) if not result.error else None
        if expected is not None:
            pairs.append((expected, predicted_label(task, result)))
    return pairs


def confusion_matrix(task: TaskSpec, pairs: Sequence[tuple[str, str]]) -> ConfusionMatrix:
    """Counts of (expected, predicted) over the task's labels, plus `NO_LABEL` when some
    prediction named no label."""
    labels = task.labels + ((NO_LABEL,) if any(p == NO_LABEL for _, p in pairs) else ())
    index = {label: i for i, label in enumerate(labels)}
    counts = [0] * (len(labels) * len(labels))
    for expected, predicted in pairs:
        counts[index[expected] * len(labels) + index[predicted]] += 1
    return ConfusionMatrix(labels, tuple(counts))


def label_metrics(task: TaskSpec, confusion: ConfusionMatrix) -> dict[str, LabelMetrics]:
    """Precision, recall, F1 and support per task label; a ratio with a zero denominator
    (a never-predicted or absent label) is 0."""
    size = len(confusion.labels)
    rows = [confusion.counts[i * size : (i + 1) * size] for i in range(size)]
    found: dict[str, LabelMetrics] = {}
    for i, label in enumerate(task.labels):
        hits, support, predicted = rows[i][i], sum(rows[i]), sum(row[i] for row in rows)
        precision = hits / predicted if predicted else 0.0
        recall = hits / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        found[label] = LabelMetrics(precision, recall, f1, support)
    return found


def macro_f1(confusion: ConfusionMatrix, metrics: Mapping[str, LabelMetrics]) -> float:
    """Mean F1 over the labels that were expected or predicted at least once (scikit-learn's
    default label set), so a label absent from a minibatch does not count as a failure."""
    size = len(confusion.labels)
    seen = [
        label
        for i, label in enumerate(confusion.labels)
        if label in metrics
        and (metrics[label].support or any(confusion.counts[j * size + i] for j in range(size)))
    ]
    return sum(metrics[label].f1 for label in seen) / len(seen) if seen else 0.0


def slice_scores(
    results: Sequence[ExampleResult], gold: Mapping[str, Example], seed: int, intervals: bool
) -> tuple[SliceScore, ...]:
    """The mean (and, with `intervals`, bootstrap CI) of the non-failed results of every
    (tag, value) the examples carry, sorted by tag then value."""
    groups: dict[tuple[str, str], list[float]] = {}
    for result in results:
        if result.error:
            continue
        for tag, value in gold[result.id].tags.items():
            groups.setdefault((tag, value), []).append(result.score)
    slices = []
    for (tag, value), scores in sorted(groups.items()):
        low, high = bootstrap_ci(scores, seed) if intervals else (0.0, 0.0)
        slices.append(SliceScore(tag, value, sum(scores) / len(scores), low, high, len(scores)))
    return tuple(slices)


def worst_slice(slices: Sequence[SliceScore]) -> SliceScore | None:
    """The slice with the lowest mean; ties go to the larger slice, then the first."""
    return min(slices, key=lambda s: (s.mean, -s.examples), default=None)


def make_score(
    task: TaskSpec,
    examples: Sequence[Example],
    results: Sequence[ExampleResult],
    seed: int = 0,
    *,
    intervals: bool = True,
) -> Score:
    """Mean, 95% CI, and the label and slice breakdowns over the non-failed results;
    failures are counted. Every result's id must be one of `examples`. `intervals=False`
    skips the bootstrap (CIs are 0): for trial scoring, where only the values count."""
    gold = {example.id: example for example in examples}
    scored = [result.score for result in results if not result.error]
    mean = sum(scored) / len(scored) if scored else 0.0
    low, high = bootstrap_ci(scored, seed) if intervals else (0.0, 0.0)
    slices = slice_scores(results, gold, seed, intervals)
    score = Score(
        mean,
        low,
        high,
        len(scored),
        len(results) - len(scored),
        slices=slices,
        worst_slice=worst_slice(slices),
    )
    if not task.labels:
        return score
    confusion = confusion_matrix(task, _label_pairs(task, results, gold))
    metrics = label_metrics(task, confusion)
    per_label = {label: m.recall for label, m in sorted(metrics.items()) if m.support}
    return Score(
        mean,
        low,
        high,
        score.examples,
        score.failed,
        per_label,
        confusion,
        metrics,
        macro_f1(confusion, metrics),
        slices,
        score.worst_slice,
    )


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


@dataclass(frozen=True)
class TrialObjective:
    """The search objective's value of a trial's results (the examples scored so far).

    `examples` are the examples trials are scored on (every result's id must be one). The
    mean needs no breakdown; other objectives build a `Score` without bootstrap intervals.
    """

    task: TaskSpec
    spec: SearchSpec
    examples: Sequence[Example]

    def value(self, results: Sequence[ExampleResult]) -> float:
        if self.spec.objective is Objective.MEAN:
            return mean_score(results)
        score = make_score(self.task, self.examples, results, intervals=False)
        return objective_value(self.spec, score)
