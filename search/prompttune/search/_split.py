"""Deterministic train / validation / test splitting."""

from __future__ import annotations

import random
from collections.abc import Sequence

from prompttune.contract import Example
from prompttune.search._errors import InvalidArgument
from prompttune.search._types import DatasetSplits


def split_examples(
    examples: Sequence[Example], train: float, validation: float, test: float, seed: int = 0
) -> DatasetSplits:
    """Shuffle with `seed` and cut into fractions of the examples (each in [0, 1], sum <= 1).

    A split with a positive fraction gets at least one example when there are enough.
    Raises `InvalidArgument` on bad fractions.
    """
    fractions = {"train": train, "validation": validation, "test": test}
    for name, fraction in fractions.items():
        if not 0.0 <= fraction <= 1.0:
            raise InvalidArgument(f"split.{name}", "must be a fraction in [0, 1]")
    if train + validation + test > 1.0 + 1e-9:
        raise InvalidArgument("split", "fractions must sum to at most 1")
    shuffled = list(examples)
    random.Random(seed).shuffle(shuffled)
    total = len(shuffled)
    sizes = [
        max(1, round(total * f)) if f > 0 and total >= 3 else round(total * f)
        for f in (train, validation, test)
    ]
    while sum(sizes) > total:
        sizes[sizes.index(max(sizes))] -= 1
    n_train, n_val = sizes[0], sizes[1]
    return DatasetSplits(
        train=tuple(shuffled[:n_train]),
        validation=tuple(shuffled[n_train : n_train + n_val]),
        test=tuple(shuffled[n_train + n_val : n_train + n_val + sizes[2]]),
    )
