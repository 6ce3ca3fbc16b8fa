"""The end of a search: promote finalists to the full validation split, pick the winner on
validation only, keep the baseline unless the gain is beyond noise, score both on test.

Minibatch scores never leave this module as final scores: every `PromptScores` it returns
is measured on the complete validation (and test) split.
"""

from __future__ import annotations

from dataclasses import dataclass

from prompttune.contract import (
    Evaluation,
    JobResult,
    Prompt,
    PromptScores,
    SearchSpec,
    prompt_token_count,
)
from prompttune.search._errors import BudgetExceeded
from prompttune.search._evaluate import score_examples
from prompttune.search._space import BASELINE, PromptKey
from prompttune.search._state import COMPLETE, FAILED, PRUNED, SearchState, TrialRecord
from prompttune.search._stats import make_score, paired_bootstrap_lower_bound


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


def finalist_count(config: SearchSpec) -> int:
    """Finalists promoted to full validation; multi-objective runs promote twice as many."""
    return (2 if config.multi_objective else 1) * config.num_finalists


def _minibatch_front(records: list[TrialRecord]) -> list[TrialRecord]:
    """Records not dominated on (minibatch score up, prompt tokens down)."""
    points = sorted(
        ((-r.score, prompt_token_count(r.prompt), r.number, r) for r in records),
        key=lambda p: p[:3],
    )
    front: list[TrialRecord] = []
    fewest_tokens: int | None = None
    for _, tokens, _, record in points:  # best score first: keep strictly shorter prompts
        if fewest_tokens is None or tokens < fewest_tokens:
            front.append(record)
            fewest_tokens = tokens
    return front


def finalist_records(state: SearchState) -> list[TrialRecord]:
    """The best distinct prompts of the search: deepest rung first, then minibatch score.

    Multi-objective runs take the minibatch Pareto front (score vs prompt tokens) first.
    """
    usable = [r for r in state.by_key.values() if r.state != FAILED]
    ranked = sorted(usable, key=lambda r: (-r.scored, -r.score, r.number))
    if state.config.multi_objective:
        front = _minibatch_front(usable)
        ranked = front + [r for r in ranked if r not in front]
    return ranked[: finalist_count(state.config)]


async def full_validation(state: SearchState, key: PromptKey, prompt: Prompt) -> Evaluation:
    record = state.by_key.get(key)
    done = list(record.results) if record is not None else []
    rest = state.val_order[len(done) :]
    settings = state.space.call_settings(prompt, state.settings)
    done.extend(await score_examples(state.task_gateway, state.task, prompt, rest, settings))
    score = make_score(state.task, state.val_order, done, state.config.seed)
    return Evaluation(score, tuple(done))


async def validate_finalists(state: SearchState) -> list[Finalist]:
    """The baseline first, then the finalists, each on the full validation split.

    Raises `BudgetExceeded` only when not even the baseline can be validated.
    """
    baseline_key, baseline_prompt = state.space.prompt_for(state.task, BASELINE)
    candidates = [(baseline_key, baseline_prompt)] + [
        (r.key, r.prompt) for r in finalist_records(state) if r.key != baseline_key
    ]
    finalists: list[Finalist] = []
    for key, prompt in candidates:
        try:
            evaluation = await full_validation(state, key, prompt)
        except BudgetExceeded as error:
            if not finalists:
                raise
            state.notes.append(f"validation stopped early ({error.limit})")
            break
        finalists.append(Finalist(key, prompt, evaluation))
    return finalists


def improvement(state: SearchState, winner: Finalist, baseline: Finalist) -> tuple[bool, str]:
    """Whether `winner` beats `baseline` beyond noise (paired bootstrap), with a verdict."""
    if winner is baseline:
        return False, "no candidate beat the baseline on validation"
    ours = {r.id: r for r in winner.evaluation.results if not r.error}
    theirs = {r.id: r for r in baseline.evaluation.results if not r.error}
    shared = sorted(set(ours) & set(theirs))
    lower = paired_bootstrap_lower_bound(
        [ours[i].score for i in shared], [theirs[i].score for i in shared], state.config.seed
    )
    gain = winner.evaluation.score.mean - baseline.evaluation.score.mean
    if lower <= 0:
        return False, (
            f"best candidate gained {gain:+.3f} on validation, but the paired bootstrap "
            f"95% lower bound {lower:+.3f} is not above 0; keeping the baseline"
        )
    return True, f"validation {gain:+.3f} over the baseline (95% lower bound {lower:+.3f})"


async def score_on_test(state: SearchState, prompt: Prompt) -> Evaluation | None:
    if not state.data.test:
        return None
    settings = state.space.call_settings(prompt, state.settings)
    try:
        results = await score_examples(
            state.task_gateway, state.task, prompt, state.data.test, settings
        )
    except BudgetExceeded as error:
        state.notes.append(f"test scoring skipped ({error.limit})")
        return None
    return Evaluation(make_score(state.task, state.data.test, results, state.config.seed), results)


def prompt_scores(finalist: Finalist, test: Evaluation | None) -> PromptScores:
    return PromptScores(
        prompt=finalist.prompt,
        validation=finalist.evaluation.score,
        test=test.score if test is not None else None,
        prompt_tokens=prompt_token_count(finalist.prompt),
    )


async def conclude(state: SearchState, finalists: list[Finalist]) -> JobResult:
    """Pick the winner on validation, test baseline and winner, and build the result."""
    baseline = finalists[0]
    winner = max(
        finalists,
        key=lambda f: (f.evaluation.score.mean, f is baseline, -prompt_token_count(f.prompt)),
    )
    improved, summary = improvement(state, winner, baseline)
    best = winner if improved else baseline
    baseline_test = await score_on_test(state, baseline.prompt)
    best_test = await score_on_test(state, best.prompt) if improved else baseline_test
    if improved and baseline_test and best_test and best_test.score.mean < baseline_test.score.mean:
        summary += "; note: worse than the baseline on test"
    tests = {baseline.key: baseline_test, best.key: best_test}
    validated = [prompt_scores(f, tests.get(f.key)) for f in finalists]
    return JobResult(
        baseline=prompt_scores(baseline, baseline_test),
        best=prompt_scores(best, best_test),
        improved=improved,
        summary="; ".join([summary, *state.notes]),
        usage=state.usage(),
        trials_completed=sum(1 for r in state.records if r.state == COMPLETE),
        trials_pruned=sum(1 for r in state.records if r.state == PRUNED),
        wall_seconds=state.budget.elapsed(),
        stop_reason=state.stop_reason,
        pareto=pareto_front(validated),
        usage_by_role=state.ledger.by_role(),
    )
