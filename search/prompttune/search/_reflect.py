"""The reflection round: once, after half the trials, the proposer sees the best instructions
with their scores and the current best's mistakes; each usable new instruction joins the
space and is enqueued in the current best's configuration, so it is scored at least once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import optuna
import structlog

from prompttune.contract import PhaseChanged, SearchEvent
from prompttune.search._proposer import Mistake, ScoredInstruction
from prompttune.search._resume import INSTRUCTIONS_ATTR
from prompttune.search._state import FAILED, SearchState, TrialRecord
from prompttune.search._trials import checkpoint

log = structlog.get_logger(__name__)

# Instructions shown to the reflection round, and mistakes of the current best offered to it.
REFLECTION_HISTORY = 5
REFLECTION_MISTAKES = 6


def reflection_due(state: SearchState) -> bool:
    if state.reflected or state.best is None:
        return False
    halfway = max(1, state.spec.budget.max_trials // 2)
    return len(state.records) >= halfway or len(state.by_key) >= state.space.size()


def sync_instructions(state: SearchState, study: optuna.Study, publish: bool) -> None:
    """Takes the study's instruction table when it is longer (the primary reflected);
    otherwise, with `publish`, stores ours there (distributed searches)."""
    shared = study.user_attrs.get(INSTRUCTIONS_ATTR)
    if isinstance(shared, list) and len(shared) > len(state.space.instructions):
        state.space.instructions = tuple(str(text) for text in shared)
        state.reflected = True
    elif publish:
        study.set_user_attr(INSTRUCTIONS_ATTR, list(state.space.instructions))


class Reflection:
    def __init__(self, emit: Callable[[SearchEvent], None]) -> None:
        self._emit = emit

    async def maybe(self, state: SearchState, study: optuna.Study, enqueue: bool = True) -> bool:
        """Runs the round when it is due; True when it ran (the space changed).

        A resumed run repeats the round (from the cache) without enqueuing: the study
        already holds those trials."""
        if not reflection_due(state):
            return False
        state.reflected = True
        self._emit(PhaseChanged("reflecting"))
        added = await state.proposer.reflect(
            state.task,
            state.splits.train,
            tried_instructions(state),
            mistakes(state),
            state.space.instructions,
            state.spec.num_reflection_candidates,
            state.spec.seed,
        )
        first = len(state.space.instructions)
        state.space.instructions = state.space.instructions + added
        best = state.best.config if state.best is not None else state.space.baseline()
        if state.spec.parallelism > 1:
            sync_instructions(state, study, publish=True)  # before helpers ask for them
        for index in range(first, len(state.space.instructions) if enqueue else first):
            study.enqueue_trial(state.space.params(replace(best, instruction=index)))
        checkpoint(state)  # the round's proposer calls survive a crash
        log.info("search.reflected", added=len(added), instructions=len(state.space.instructions))
        self._emit(PhaseChanged("searching"))
        return True


def tried_instructions(state: SearchState) -> list[ScoredInstruction]:
    deepest: dict[int, TrialRecord] = {}
    for record in state.by_key.values():
        if record.state == FAILED or not record.scored:
            continue
        index = record.config.instruction
        known = deepest.get(index)
        if known is None or (record.scored, record.score) > (known.scored, known.score):
            deepest[index] = record
    tried = [
        ScoredInstruction(state.space.instructions[i], r.score, r.scored)
        for i, r in sorted(deepest.items())
    ]
    return sorted(tried, key=lambda t: -t.score)[:REFLECTION_HISTORY]


def mistakes(state: SearchState) -> list[Mistake]:
    if state.best is None:
        return []
    examples = {ex.id: ex for ex in state.val_order}
    wrong = [r for r in state.best.results if not r.error and r.score < 1.0]
    return [Mistake(examples[r.id], r.answer) for r in wrong][:REFLECTION_MISTAKES]
