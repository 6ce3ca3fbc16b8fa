"""Paired comparison of two prompts' per-example scores. Seeded numpy: reproducible."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from prompttune.contract import PairedComparison

PAIRED_RESAMPLES = 2000
PERMUTATIONS = 5000


def paired_difference(
    a_scores: Sequence[float], b_scores: Sequence[float], seed: int = 0
) -> PairedComparison:
    """b - a over paired examples (position i of both sequences is the same example): the mean
    difference, its 95% percentile bootstrap interval, a two-sided sign-flip permutation
    p-value and the verdict ("b_better" when the interval lies above 0, "b_worse" below 0,
    else "no_difference"). Raises ValueError for sequences of unequal length; no examples
    give the default comparison (no difference, p-value 1)."""
    if len(a_scores) != len(b_scores):
        raise ValueError("paired samples must have equal length")
    if not a_scores:
        return PairedComparison()
    diffs = np.asarray(b_scores, dtype=np.float64) - np.asarray(a_scores, dtype=np.float64)
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, len(diffs), size=(PAIRED_RESAMPLES, len(diffs)))
    low, high = (float(v) for v in np.percentile(diffs[indices].mean(axis=1), [2.5, 97.5]))
    verdict = "b_better" if low > 0 else "b_worse" if high < 0 else "no_difference"
    return PairedComparison(
        difference=float(diffs.mean()),
        ci_low=low,
        ci_high=high,
        p_value=_sign_flip_p_value(diffs, rng),
        examples=len(diffs),
        verdict=verdict,
    )


def _sign_flip_p_value(diffs: np.ndarray, rng: np.random.Generator) -> float:
    """Under "no difference" each paired difference is as likely negated: the share of random
    sign flips whose mean is at least as far from 0 as the observed one (add-one smoothed, so
    never 0)."""
    observed = abs(float(diffs.mean()))
    signs = rng.choice(np.array([-1.0, 1.0]), size=(PERMUTATIONS, len(diffs)))
    flipped = np.abs((signs * diffs).mean(axis=1))
    # A tolerance: floating-point sums of the same magnitudes may differ in the last bits.
    extreme = int(np.count_nonzero(flipped >= observed - 1e-12))
    return (extreme + 1) / (PERMUTATIONS + 1)
