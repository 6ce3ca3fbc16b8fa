"""The end of a search: promote finalists to the full validation split, pick the winner on
validation only, keep the baseline unless the gain is beyond noise, score both on test.

Minibatch scores never leave this module as final scores: every `PromptScores` of a complete
result is measured on the complete validation (and test) split. Only a partial result (the
job was cancelled or failed) reports the scores of the examples scored so far, marked
``partial``. Promotion and testing end when the wall budget does: what was not validated
then is left out, and a test split not scored in time is skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from prompttune.contract import (
    Evaluation,
    Example,
    ExampleResult,
    JobResult,
    Prompt,
    PromptScores,
    prompt_token_count,
)
from prompttune.search._errors import BudgetExceeded, SearchFailed
from prompttune.search._evaluate import score_examples
from prompttune.search._space import BASELINE, PromptKey
from prompttune.search._state import COMPLETE, FAILED, PRUNED, SearchState, TrialRecord
from prompttune.search._stats import make_score, objective_value, paired_bootstrap_lower_bound


@dataclass(frozen=True)
class Finalist:
    key: PromptKey
    prompt: Prompt
    evaluation: Evaluation


def pareto_front(scores: list[PromptScores]) -> tuple[PromptScores, ...]:
    """Prompts not dominated on (validation mean up, prompt tokens down), shortest first."""
    front = [
        s
        for s in scores
        if not any(
            o.validation.mean >= s.validation.mean
            and o.prompt_tokens <= s.prompt_tokens
            and (o.validation.mean > s.validation.mean or o.prompt_tokens < s.prompt_tokens)
            for o in scores
        )
    ]
    return tuple(sorted(front, key=lambda s: (s.prompt_tokens, -s.validation.mean)))


def finalist_records(state: SearchState) -> list[TrialRecord]:
    """The best distinct prompts of the search, as the objective ranks them."""
    usable = [r for r in state.by_key.values() if r.state != FAILED]
    ranked = state.objective.rank(usable)
    return ranked[: state.objective.finalist_count(state.spec.num_finalists)]


async def full_validation(state: SearchState, key: PromptKey, prompt: Prompt) -> Evaluation:
    record = state.by_key.get(key)
    done = list(record.results) if record is not None else []
    rest = state.val_order[len(done) :]
    settings = state.space.call_settings(prompt, state.settings)
    scoring = score_examples(state.task_gateway, state.task, prompt, rest, settings)
    done.extend(await state.guard.within(scoring))
    score = make_score(state.task, state.val_order, done, state.spec.seed)
    return Evaluation(score, tuple(done))


async def validate_finalists(state: SearchState) -> list[Finalist]:
    """The baseline first, then the finalists, each on the full validation split.

    Raises `BudgetExceeded` only when not even the baseline can be validated, and
    `SearchFailed` when no call of any of them succeeded.
    """
    baseline_key, baseline_prompt = state.space.prompt_for(state.task, BASELINE)
    candidates = [(baseline_key, baseline_prompt)] + [
        (r.key, r.prompt) for r in finalist_records(state) if r.key != baseline_key
    ]
    for key, prompt in candidates:
        try:
            evaluation = await full_validation(state, key, prompt)
        except BudgetExceeded as error:
            if not state.finalists:
                raise
            _stopped_by(state, error, "validation stopped early")
            break
        state.finalists.append(Finalist(key, prompt, evaluation))
    if not any(f.evaluation.score.examples for f in state.finalists):
        raise SearchFailed(failure_cause(state), partial_result(state, "failed"))
    return state.finalists


def _stopped_by(state: SearchState, error: BudgetExceeded, what: str) -> None:
    state.notes.append(f"{what} ({error.limit})")
    if error.limit == "max_wall_seconds":
        state.stop_reason = error.limit


def failure_cause(state: SearchState) -> str:
    """Why nothing could be scored: the failed calls by endpoint and status."""
    return state.task_gateway.failures.summary() or "no call of the search was answered"


def improvement(state: SearchState, winner: Finalist, baseline: Finalist) -> tuple[bool, str]:
    """Whether `winner` beats `baseline` beyond noise (paired bootstrap), with a verdict."""
    if winner is baseline:
        return False, "no candidate beat the baseline on validation"
    ours = {r.id: r for r in winner.evaluation.results if not r.error}
    theirs = {r.id: r for r in baseline.evaluation.results if not r.error}
    shared = sorted(set(ours) & set(theirs))
    lower = paired_bootstrap_lower_bound(
        [ours[i].score for i in shared], [theirs[i].score for i in shared], state.spec.seed
    )
    gain = winner.evaluation.score.mean - baseline.evaluation.score.mean
    if lower <= 0:
        return False, (
            f"best candidate gained {gain:+.3f} on validation, but the paired bootstrap "
            f"95% lower bound {lower:+.3f} is not above 0; keeping the baseline"
        )
    return True, f"validation {gain:+.3f} over the baseline (95% lower bound {lower:+.3f})"


async def score_on_test(state: SearchState, prompt: Prompt) -> Evaluation | None:
    if not state.splits.test:
        return None
    settings = state.space.call_settings(prompt, state.settings)
    scoring = score_examples(state.task_gateway, state.task, prompt, state.splits.test, settings)
    try:
        results = await state.guard.within(scoring)
    except BudgetExceeded as error:
        _stopped_by(state, error, "test scoring skipped")
        return None
    return Evaluation(make_score(state.task, state.splits.test, results, state.spec.seed), results)


def prompt_scores(finalist: Finalist, test: Evaluation | None) -> PromptScores:
    return PromptScores(
        prompt=finalist.prompt,
        validation=finalist.evaluation.score,
        test=test.score if test is not None else None,
        prompt_tokens=prompt_token_count(finalist.prompt),
    )


async def conclude(state: SearchState) -> JobResult:
    """Pick the winner on validation (by the search objective), test baseline and winner,
    and build the result."""
    finalists = state.finalists
    baseline = finalists[0]
    winner = max(
        finalists,
        key=lambda f: (
            objective_value(state.spec, f.evaluation.score),
            f is baseline,
            -prompt_token_count(f.prompt),
        ),
    )
    improved, summary = improvement(state, winner, baseline)
    best = winner if improved else baseline
    baseline_test = await score_on_test(state, baseline.prompt)
    best_test = await score_on_test(state, best.prompt) if improved else baseline_test
    if improved and baseline_test and best_test and best_test.score.mean < baseline_test.score.mean:
        summary += "; note: worse than the baseline on test"
    tests = {baseline.key: baseline_test, best.key: best_test}
    validated = [prompt_scores(f, tests.get(f.key)) for f in finalists]
    return _result(
        state,
        baseline=prompt_scores(baseline, baseline_test),
        best=prompt_scores(best, best_test),
        improved=improved,
        summary="; ".join([summary, *state.notes]),
        pareto=pareto_front(validated),
    )


def _result(
    state: SearchState,
    baseline: PromptScores,
    best: PromptScores,
    improved: bool,
    summary: str,
    pareto: tuple[PromptScores, ...] = (),
    partial: bool = False,
) -> JobResult:
    return JobResult(
        baseline=baseline,
        best=best,
        improved=improved,
        summary=summary,
        usage=state.usage(),
        trials_completed=sum(1 for r in state.records if r.state == COMPLETE),
        trials_pruned=sum(1 for r in state.records if r.state == PRUNED),
        wall_seconds=state.budget.elapsed(),
        stop_reason=state.stop_reason,
        pareto=pareto,
        usage_by_role=state.ledger.by_role(),
        partial=partial,
    )


def _scored_so_far(
    state: SearchState, prompt: Prompt, results: Sequence[ExampleResult]
) -> PromptScores:
    examples: Sequence[Example] = state.val_order
    score = make_score(state.task, examples, results, state.spec.seed)
    return PromptScores(prompt, score, None, prompt_token_count(prompt))


def partial_result(state: SearchState, stop_reason: str) -> JobResult | None:
    """The best found before the run stopped, on the validation examples scored so far
    (validated finalists when promotion had begun); None when no call succeeded."""
    if state.finalists:
        candidates = [
            (f.prompt, f.evaluation.results) for f in state.finalists if f.evaluation.score.examples
        ]
    else:
        baseline_key, _ = state.space.prompt_for(state.task, BASELINE)
        records = sorted(
            (r for r in state.by_key.values() if r.answered),
            key=lambda r: (r.key != baseline_key, r.number),
        )
        candidates = [(r.prompt, tuple(r.results)) for r in records]
    if not candidates:
        return None
    scores = [_scored_so_far(state, prompt, results) for prompt, results in candidates]
    best = max(scores, key=lambda s: s.validation.mean)
    state.stop_reason = stop_reason
    return _result(
        state,
        baseline=scores[0],
        best=best,
        improved=best is not scores[0] and best.validation.mean > scores[0].validation.mean,
        summary=f"{stop_reason}: partial result on the validation examples scored so far",
        partial=True,
    )
