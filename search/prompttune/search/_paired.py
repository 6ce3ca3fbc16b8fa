"""Two evaluations of the same examples compared example by example."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from prompttune.contract import Evaluation, Example, PairedComparison, TaskSpec
from prompttune.search._compare import paired_difference
from prompttune.search._metrics import normalize_answer


def compare_evaluations(
    task: TaskSpec, examples: Sequence[Example], a: Evaluation, b: Evaluation, seed: int = 0
) -> PairedComparison:
    """`paired_difference` of b - a over the examples both evaluations scored (an example whose
    call failed for either prompt is left out), with, for label tasks, each label's recall
    difference over the paired examples expecting it. Examples are matched by id."""
    a_scores = {r.id: r.score for r in a.results if not r.failed}
    b_scores = {r.id: r.score for r in b.results if not r.failed}
    paired = [ex for ex in examples if ex.id in a_scores and ex.id in b_scores]
    comparison = paired_difference(
        [a_scores[ex.id] for ex in paired], [b_scores[ex.id] for ex in paired], seed
    )
    if not task.labels:
        return comparison
    by_label: dict[str, list[float]] = {}
    labels = {normalize_answer(label): label for label in task.labels}
    for example in paired:
        label = labels.get(normalize_answer(example.output))
        if label is not None:
            # A label task scores 1 for the right label: the mean score over the examples
            # expecting a label is its recall.
            by_label.setdefault(label, []).append(b_scores[example.id] - a_scores[example.id])
    per_label = {label: sum(d) / len(d) for label, d in sorted(by_label.items())}
    return dataclasses.replace(comparison, per_label_difference=per_label)
