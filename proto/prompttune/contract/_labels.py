"""Label probabilities from a model's first-token log probabilities, and contextual
calibration: one definition shared by the engine, the service and the SDK.

Pure functions, no I/O. A top-logprob entry is ``(token text, natural-log probability)``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

from prompttune.contract._types import Calibration, Prompt

# Content-free inputs of contextual calibration (Zhao et al. 2021, "calibrate before use").
CONTENT_FREE_INPUTS: tuple[str, ...] = ("N/A", "", "[MASK]")
# A label the content-free inputs never chose would get an infinite weight; this caps it.
MAX_CALIBRATION_WEIGHT = 1e3

_WORD = re.compile(r"[^\W_]+")
_NOT_WORD = re.compile(r"[\W_]+")


def _normalise_token(token: str) -> str:
    """Lower case, punctuation, underscores and spaces removed."""
    return _NOT_WORD.sub("", token.lower())


def _first_word(label: str) -> str:
    """A label's normalised first word ("card_arrival" -> "card"), "" when it has none."""
    found = _WORD.search(label.lower())
    return found.group(0) if found else ""


def labels_distinguishable(labels: Sequence[str]) -> bool:
    """True when every label has a non-empty first word and no two share it, so a first
    token can name at most one label. ("card_arrival" and "card_linking" are not.)"""
    words = [_first_word(label) for label in labels]
    return bool(words) and all(words) and len(set(words)) == len(words)


def _label_of(token: str, first_words: Sequence[str]) -> int | None:
    """Index of the label a token names: its first word, else the one first word the token
    is a prefix of; None when the token is empty or ambiguous."""
    text = _normalise_token(token)
    if not text:
        return None
    if text in first_words:
        return first_words.index(text)
    matches = [index for index, word in enumerate(first_words) if word.startswith(text)]
    return matches[0] if len(matches) == 1 else None


def label_probabilities(
    labels: Sequence[str], top_logprobs: Sequence[tuple[str, float]]
) -> dict[str, float] | None:
    """Label -> probability, normalised over `labels` (in their order, every label present):
    the mass of the top tokens that name each label (see `labels_distinguishable`).

    Tokens that name no label, or several, are ignored, as are non-finite or positive
    logprobs. None when no label got any mass.
    """
    first_words = [_first_word(label) for label in labels]
    mass = [0.0] * len(labels)
    for token, logprob in top_logprobs:
        if not math.isfinite(logprob) or logprob > 0.0:
            continue
        index = _label_of(token, first_words)
        if index is not None:
            mass[index] += math.exp(logprob)
    total = sum(mass)
    if total <= 0.0:
        return None
    return {label: value / total for label, value in zip(labels, mass, strict=True)}


def apply_calibration(
    calibration: Calibration | None, probabilities: Mapping[str, float]
) -> dict[str, float]:
    """`probabilities` multiplied by the calibration's weights (a label without a weight
    keeps 1) and renormalised; unchanged (as a dict) without a calibration or mass."""
    weights = calibration.weights if calibration is not None else {}
    weighted = {label: p * weights.get(label, 1.0) for label, p in probabilities.items()}
    total = sum(weighted.values())
    if total <= 0.0 or not math.isfinite(total):
        return dict(probabilities)
    return {label: value / total for label, value in weighted.items()}


def calibrated_prediction(
    calibration: Calibration | None, probabilities: Mapping[str, float]
) -> str:
    """The label with the highest calibrated probability; ties go to the earlier label in
    `probabilities`' order; "" when there are no labels."""
    calibrated = apply_calibration(calibration, probabilities)
    best, best_value = "", -1.0
    for label, value in calibrated.items():
        if value > best_value:
            best, best_value = label, value
    return best


def calibration_from(
    content_free_probabilities: Sequence[Mapping[str, float]], inputs: Sequence[str]
) -> Calibration:
    """The calibration that undoes the mean label bias of the content-free answers: each
    label's weight is 1 / its mean probability (capped at `MAX_CALIBRATION_WEIGHT` times the
    smallest), normalised so the weights' mean is 1. No probabilities: no weights."""
    labels: list[str] = []
    for probabilities in content_free_probabilities:
        labels.extend(label for label in probabilities if label not in labels)
    if not labels:
        return Calibration({}, tuple(inputs))
    count = len(content_free_probabilities)
    means = [sum(p.get(label, 0.0) for p in content_free_probabilities) / count for label in labels]
    floor = max(means) / MAX_CALIBRATION_WEIGHT
    raw = [1.0 / max(mean, floor) for mean in means]
    scale = len(raw) / sum(raw)
    return Calibration(
        {label: w * scale for label, w in zip(labels, raw, strict=True)}, tuple(inputs)
    )


def predict_label(prompt: Prompt, top_logprobs: Sequence[tuple[str, float]]) -> str:
    """The label `prompt`'s answer predicts from its first token's top log probabilities,
    after the prompt's calibration; "" when no label is among them."""
    probabilities = label_probabilities(prompt.labels, top_logprobs)
    if probabilities is None:
        return ""
    return calibrated_prediction(prompt.calibration, probabilities)
