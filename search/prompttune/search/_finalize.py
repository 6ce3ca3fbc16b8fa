"""The end of a search: promote finalists to the search's full part of the validation
split, score them on the selection part no trial saw, pick the winner there (the simplest
within noise of the best), keep the baseline unless the gain is beyond noise, test both.

Minibatch scores never leave this module as final scores: every `PromptScores` of a complete
result is measured on the complete search part (``validation``), selection part and test
split. Only a partial result (the job was cancelled or failed) reports the scores of the
examples scored so far, marked ``partial``. Promotion, selection and testing end when the
wall budget does: what was not scored then is left out, and a test split not scored in time
is skipped. Without a selection part the winner is picked on the search's own examples, and
the summary says its validation score is optimistic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

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
from prompttune.search._space import PromptKey
from prompttune.search._state import COMPLETE, FAILED, PRUNED, SearchState, TrialRecord
from prompttune.search._stats import make_score, objective_value, paired_bootstrap_lower_bound


@dataclass(frozen=True)
class Finalist:
    """A prompt promoted to the end: `evaluation` on the search's part of the validation
    split, `selection` on the held-back part (None: no selection part, or not scored)."""

    key: PromptKey
    prompt: Prompt
    evaluation: Evaluation
    selection: Evaluation | None = None

    def judged(self, on_selection: bool) -> Evaluation | None:
        """The evaluation the winner is picked on."""
        return self.selection if on_selection else self.evaluation

    def validation_results(self) -> tuple[ExampleResult, ...]:
        """Its results on the whole validation split: the search's part and selection."""
        held = self.selection.results if self.selection is not None else ()
        return (*self.evaluation.results, *held)


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
    """The baseline first, then the finalists, each on the search's full part of the
    validation split, then on the selection part.

    Raises `BudgetExceeded` only when not even the baseline can be validated, and
    `SearchFailed` when no call of any of them succeeded.
    """
    baseline_key, baseline_prompt = state.space.baseline_for(state.task)
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
    await score_selection(state)
    return state.finalists


async def score_selection(state: SearchState) -> None:
    """Scores the baseline, then each finalist, on the selection examples (none when the
    job has no selection part). Finalists not reached before the budget ran out keep
    `selection` None and cannot win on selection."""
    examples = state.selection_order
    if not examples:
        return
    for index, finalist in enumerate(state.finalists):
        settings = state.space.call_settings(finalist.prompt, state.settings)
        scoring = score_examples(
            state.task_gateway, state.task, finalist.prompt, examples, settings
        )
        try:
            results = await state.guard.within(scoring)
        except BudgetExceeded as error:
            _stopped_by(state, error, "selection scoring stopped early")
            return
        score = make_score(state.task, examples, results, state.spec.seed)
        state.finalists[index] = replace(finalist, selection=Evaluation(score, results))


def _stopped_by(state: SearchState, error: BudgetExceeded, what: str) -> None:
    state.notes.append(f"{what} ({error.limit})")
    if error.limit == "max_wall_seconds":
        state.stop_reason = error.limit


def failure_cause(state: SearchState) -> str:
    """Why nothing could be scored: the failed calls by endpoint and status."""
    return state.task_gateway.failures.summary() or "no call of the search was answered"


def _paired(
    a: Sequence[ExampleResult], b: Sequence[ExampleResult]
) -> tuple[list[float], list[float]]:
    """Per-example scores of results `a` and `b` on the examples both answered, in id
    order."""
    ours = {r.id: r.score for r in a if not r.error}
    theirs = {r.id: r.score for r in b if not r.error}
    shared = sorted(set(ours) & set(theirs))
    return [ours[i] for i in shared], [theirs[i] for i in shared]


def _on_selection(finalists: Sequence[Finalist]) -> bool:
    """The winner is picked on selection when the baseline has a selection score."""
    return bool(finalists) and finalists[0].selection is not None


def _split_name(on_selection: bool) -> str:
    return "selection" if on_selection else "validation"


def improvement(state: SearchState, winner: Finalist, baseline: Finalist) -> tuple[bool, str]:
    """Whether `winner` beats `baseline` beyond noise (paired bootstrap on the examples the
    winner was picked on: selection when there are any, else validation), with a verdict."""
    on_selection = _on_selection(state.finalists)
    split = _split_name(on_selection)
    ours, theirs = winner.judged(on_selection), baseline.judged(on_selection)
    if winner is baseline or ours is None or theirs is None:
        return False, f"no candidate beat the baseline on {split}"
    lower = paired_bootstrap_lower_bound(*_paired(ours.results, theirs.results), state.spec.seed)
    gain = ours.score.mean - theirs.score.mean
    if lower <= 0:
        return False, (
            f"the winner gained {gain:+.3f} over the baseline on {split}, but the paired "
            f"bootstrap 95% lower bound {lower:+.3f} is not above 0; keeping the baseline"
        )
    return True, f"{split} {gain:+.3f} over the baseline (95% lower bound {lower:+.3f})"


def _within_noise(state: SearchState, best: Finalist, other: Finalist, on_selection: bool) -> bool:
    """True when `other` is not significantly worse than `best` (the one-sided 95% lower
    bound of best - other, paired bootstrap, is not above 0) on the picking split and on
    the whole validation split: a few held-back examples alone would call nearly any gap
    noise, and the search's part alone flatters the prompts the search picked there."""
    ours, theirs = best.judged(on_selection), other.judged(on_selection)
    if ours is None or theirs is None:
        return False
    picked = (ours.results, theirs.results)
    whole = (best.validation_results(), other.validation_results())
    return all(
        paired_bootstrap_lower_bound(*_paired(*pair), state.spec.seed) <= 0
        for pair in (picked, whole)
    )


def choose_winner(state: SearchState) -> tuple[Finalist, str]:
    """Parsimony: the best finalist (baseline excluded) on the picking split; among the
    finalists not significantly worse than it there and on the whole validation split (and,
    when the best beats the baseline beyond noise, beating it too), the simplest: the seed
    instruction before a proposal, then fewer prompt tokens. Returns the winner (the baseline
    when no other finalist was scored) and the rule that chose it, in plain words."""
    on_selection = _on_selection(state.finalists)
    split = _split_name(on_selection)
    scored = [
        (f, e) for f in state.finalists[1:] if (e := f.judged(on_selection)) and e.score.examples
    ]
    if not scored:
        return state.finalists[0], f"no finalist besides the baseline was scored on {split}"

    def value(evaluation: Evaluation) -> float:
        return objective_value(state.spec, evaluation.score)

    best, best_eval = max(scored, key=lambda p: (value(p[1]), -prompt_token_count(p[0].prompt)))
    close = [(f, e) for f, e in scored if f is best or _within_noise(state, best, f, on_selection)]
    if improvement(state, best, state.finalists[0])[0]:
        # a simpler prompt may stand in for the best only if it too beats the baseline
        close = [
            (f, e) for f, e in close if f is best or improvement(state, f, state.finalists[0])[0]
        ]
    winner, winner_eval = min(
        close,
        key=lambda p: (
            p[0].prompt.instruction != state.task.instruction,
            prompt_token_count(p[0].prompt),
            -value(p[1]),
        ),
    )
    if winner is best:
        return (
            winner,
            f"winner: the best of {len(scored)} finalists on {split} ({value(best_eval):.3f})",
        )
    return winner, (
        f"winner: the simplest finalist within noise of the best on {split} "
        f"({value(winner_eval):.3f} against {value(best_eval):.3f}), because "
        + _simpler(state, winner.prompt, best.prompt)
    )


def _simpler(state: SearchState, winner: Prompt, best: Prompt) -> str:
    """Why parsimony preferred `winner` to `best`, in plain words."""
    seed = state.task.instruction
    if winner.instruction == seed and best.instruction != seed:
        return "it keeps the seed instruction"
    return (
        f"it is shorter ({prompt_token_count(winner)} prompt tokens against "
        f"{prompt_token_count(best)})"
    )


async def score_on_test(state: SearchState, prompt: Prompt) -> Evaluation | None:
    if not state.splits.test:
        return None
    settings = state.space.call_settings(prompt, state.settings)
    scoring = score_examples(state.task_gateway, state.task, prompt, state.splits.test, settings)
    started = state.budget.elapsed()
    try:
        results = await state.guard.within(scoring)
    except BudgetExceeded as error:
        _stopped_by(state, error, "test scoring skipped")
        return None
    score = make_score(state.task, state.splits.test, results, state.spec.seed)
    evaluation = Evaluation(score, results)
    if state.test_listener is not None:
        state.test_listener(prompt, evaluation, state.budget.elapsed() - started)
    return evaluation


def prompt_scores(finalist: Finalist, test: Evaluation | None) -> PromptScores:
    validation = finalist.evaluation.score
    selection = finalist.selection.score if finalist.selection is not None else None
    return PromptScores(
        prompt=finalist.prompt,
        validation=validation,
        test=test.score if test is not None else None,
        prompt_tokens=prompt_token_count(finalist.prompt),
        selection=selection,
        optimism=validation.mean - selection.mean if selection is not None else 0.0,
    )


OPTIMISTIC_NOTE = (
    "no selection split: the winner was picked on the examples the search scored, so its "
    "validation score is optimistic"
)


async def conclude(state: SearchState) -> JobResult:
    """Pick the winner (selection when there is a selection part), test baseline and winner,
    and build the result."""
    finalists = state.finalists
    baseline = finalists[0]
    winner, rule = choose_winner(state)
    improved, verdict = improvement(state, winner, baseline)
    best = winner if improved else baseline
    baseline_test = await score_on_test(state, baseline.prompt)
    best_test = await score_on_test(state, best.prompt) if improved else baseline_test
    if improved and baseline_test and best_test and best_test.score.mean < baseline_test.score.mean:
        verdict += "; note: worse than the baseline on test"
    notes = [] if _on_selection(finalists) else [OPTIMISTIC_NOTE]
    tests = {baseline.key: baseline_test, best.key: best_test}
    validated = [prompt_scores(f, tests.get(f.key)) for f in finalists]
    return _result(
        state,
        baseline=prompt_scores(baseline, baseline_test),
        best=prompt_scores(best, best_test),
        improved=improved,
        summary="; ".join([rule, verdict, *notes, *state.notes]),
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
        dropped_instructions=tuple(state.proposer.dropped),
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
        baseline_key, _ = state.space.baseline_for(state.task)
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
