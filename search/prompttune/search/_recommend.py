"""Which model of a multi-model job to run: the quality/cost frontier and a recommendation.

Pure functions over each model's finished search; the paired statistics are `_compare`'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from prompttune.contract import PairedComparison, Recommendation
from prompttune.search._compare import paired_difference


@dataclass(frozen=True)
class ModelOutcome:
    """One model's search as the comparison sees it.

    ``score``: its best prompt's test mean (validation mean when the job has no test split).
    ``example_scores``: example id -> that prompt's score on each test example it answered.
    ``usd_per_call``: task-model cost per call sent; ``seconds_per_example``: task-model wall
    seconds per scored test example. ``failed`` models, and models ``untested`` where others
    were tested (their test scoring did not finish), are never on the frontier nor
    recommended: a validation score is not comparable with test scores.
    """

    name: str
    score: float = 0.0
    example_scores: Mapping[str, float] = field(default_factory=dict)
    usd_per_call: float = 0.0
    seconds_per_example: float = 0.0
    failed: bool = False
    untested: bool = False

    @property
    def comparable(self) -> bool:
        return not self.failed and not self.untested


def model_costs(outcomes: Sequence[ModelOutcome]) -> tuple[tuple[float, ...], str]:
    """Each model's cost and its unit: USD per call when any model has a price, else wall
    seconds per example."""
    if any(o.usd_per_call > 0 for o in outcomes if o.comparable):
        return tuple(o.usd_per_call for o in outcomes), "USD per call"
    return tuple(o.seconds_per_example for o in outcomes), "s per example"


def on_frontier(outcomes: Sequence[ModelOutcome]) -> tuple[bool, ...]:
    """Per model: True when no other (successful) model scores at least as well at no more
    cost while being strictly better in one of the two."""
    costs, _ = model_costs(outcomes)
    flags = []
    for i, mine in enumerate(outcomes):
        dominated = any(
            other.comparable
            and other.score >= mine.score
            and costs[j] <= costs[i]
            and (other.score > mine.score or costs[j] < costs[i])
            for j, other in enumerate(outcomes)
            if j != i
        )
        flags.append(mine.comparable and not dominated)
    return tuple(flags)


def compare_with_best(best: ModelOutcome, other: ModelOutcome, seed: int) -> PairedComparison:
    """other - best over the test examples both answered."""
    shared = sorted(set(best.example_scores) & set(other.example_scores))
    return paired_difference(
        [best.example_scores[i] for i in shared], [other.example_scores[i] for i in shared], seed
    )


def recommend(outcomes: Sequence[ModelOutcome], seed: int = 0) -> Recommendation | None:
    """The cheapest model whose test score is not worse than the best model's beyond noise
    (paired bootstrap 95% interval of the difference reaching 0), with the reason in plain
    words. A model that shares no scored test example with the best one is not a candidate.
    None when no model is comparable (every model failed or went untested)."""
    alive = [i for i, o in enumerate(outcomes) if o.comparable]
    if not alive:
        return None
    costs, unit = model_costs(outcomes)
    best = max(alive, key=lambda i: (outcomes[i].score, -i))
    comparisons = {i: compare_with_best(outcomes[best], outcomes[i], seed) for i in alive}
    candidates = [
        i
        for i in alive
        if i == best or (comparisons[i].examples and comparisons[i].verdict != "b_worse")
    ]
    chosen = min(candidates, key=lambda i: (costs[i], -outcomes[i].score, i))
    if len(alive) == 1:
        reason = f"{outcomes[chosen].name}: the only model whose search succeeded and was tested"
    elif chosen == best:
        reason = _best_reason(outcomes, best, comparisons, costs)
    else:
        reason = _cheaper_reason(outcomes, (best, chosen), comparisons[chosen], costs, unit)
    untested = [o.name for o in outcomes if o.untested and not o.failed]
    if untested:
        reason += (
            f"; not compared: {', '.join(untested)} (test scoring did not finish within the "
            "budget; a validation score is not comparable with test scores)"
        )
    return Recommendation(model_index=chosen, reason=reason)


def _interval(comparison: PairedComparison) -> str:
    return (
        f"paired 95% interval [{comparison.ci_low:+.2f}, {comparison.ci_high:+.2f}] "
        f"over {comparison.examples} test examples"
    )


def _cheaper_reason(
    outcomes: Sequence[ModelOutcome],
    pair: tuple[int, int],
    comparison: PairedComparison,
    costs: Sequence[float],
    unit: str,
) -> str:
    best, chosen = pair
    saving = 100.0 * (1.0 - costs[chosen] / costs[best]) if costs[best] > 0 else 0.0
    return (
        f"{outcomes[chosen].name}: test {outcomes[chosen].score:.2f} is not worse than "
        f"{outcomes[best].name}'s {outcomes[best].score:.2f} beyond noise "
        f"({_interval(comparison)}) and costs {saving:.0f}% less "
        f"({costs[chosen]:.3g} vs {costs[best]:.3g} {unit})"
    )


def _best_reason(
    outcomes: Sequence[ModelOutcome],
    best: int,
    comparisons: Mapping[int, PairedComparison],
    costs: Sequence[float],
) -> str:
    cheaper = [
        f"{outcomes[i].name} {outcomes[i].score:.2f} ({_interval(comparisons[i])})"
        for i in comparisons
        if i != best and costs[i] < costs[best]
    ]
    reason = f"{outcomes[best].name}: the best test score, {outcomes[best].score:.2f}"
    if cheaper:
        reason += "; no cheaper model is within noise of it: " + "; ".join(cheaper)
    return reason
