"""Paired comparison of two prompts' (or models') scores on the same examples.

Pure, seeded numpy: the same inputs and seed give the same interval and p-value.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from prompttune.contract import PairedComparison

BOOTSTRAP_RESAMPLES = 2000
PERMUTATION_RESAMPLES = 2000
# Mean differences within this of the observed one count as "at least as extreme": float
# sums of the same 0/1 values in another order differ in the last bits.
_TIE_TOLERANCE = 1e-12


def paired_difference(
    a_scores: Sequence[float], b_scores: Sequence[float], seed: int = 0
) -> PairedComparison:
    """Compare b with a over paired examples (``a_scores[i]`` and ``b_scores[i]`` score the
    same example).

    ``difference`` is mean(b - a); ``ci_low``/``ci_high`` its 95% percentile paired bootstrap
    interval (2000 resamples); ``p_value`` the two-sided paired sign-flip permutation test of
    "no difference" (2000 resamples, add-one smoothed, so never 0). ``verdict`` is "b_better"
    when the interval lies above 0, "b_worse" when below, else "no_difference".
    ``per_label_difference`` is left empty: labels are the caller's business.
    No examples give the neutral comparison (difference 0, p-value 1).
    Raises ValueError when the two sequences differ in length.
    """
    if len(a_scores) != len(b_scores):
        raise ValueError("paired samples must have equal length")
    if not a_scores:
        return PairedComparison()
    diffs = np.asarray(b_scores, dtype=np.float64) - np.asarray(a_scores, dtype=np.float64)
    rng = np.random.default_rng(seed)
    low, high = _bootstrap_interval(diffs, rng)
    p_value = _sign_flip_p_value(diffs, rng)
    verdict = "b_better" if low > 0 else "b_worse" if high < 0 else "no_difference"
    return PairedComparison(
        difference=float(diffs.mean()),
        ci_low=low,
        ci_high=high,
        p_value=p_value,
        examples=len(diffs),
        verdict=verdict,
    )


def _bootstrap_interval(diffs: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    indices = rng.integers(0, len(diffs), size=(BOOTSTRAP_RESAMPLES, len(diffs)))
    low, high = np.percentile(diffs[indices].mean(axis=1), [2.5, 97.5])
    return float(low), float(high)


def _sign_flip_p_value(diffs: np.ndarray, rng: np.random.Generator) -> float:
    # Under "no difference" each example's a and b are exchangeable, so each paired
    # difference is as likely to have the opposite sign.
    signs = rng.choice(np.array([-1.0, 1.0]), size=(PERMUTATION_RESAMPLES, len(diffs)))
    flipped = np.abs((signs * diffs).mean(axis=1))
    observed = abs(float(diffs.mean()))
    extreme = int(np.count_nonzero(flipped >= observed - _TIE_TOLERANCE))
    return (extreme + 1) / (PERMUTATION_RESAMPLES + 1)
