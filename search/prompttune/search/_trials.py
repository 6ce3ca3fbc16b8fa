"""One trial: build its prompt, score it rung by rung, store it in the study, report it.

Shared by every search loop (the local one, the primary of a distributed search and its
helpers): whoever asked a trial finishes it through `Trials.finish`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import optuna
import structlog
from optuna.trial import Trial, TrialState

from prompttune.contract import BudgetUsed, NewBest, SearchEvent, TrialFinished
from prompttune.search._errors import BudgetExceeded
from prompttune.search._evaluate import TASK_ROLE, score_examples
from prompttune.search._labelprobs import calibrate
from prompttune.search._resume import save_record, save_usage, usage_attr
from prompttune.search._space import TrialConfig
from prompttune.search._state import COMPLETE, FAILED, PRUNED, SearchState, TrialRecord

log = structlog.get_logger(__name__)

# A trial with more than this share of failed examples fails.
MAX_FAILED_SHARE = 0.5
# The search phase may use at most this share of the wall budget, and stops earlier when the
# final phase (promotion, selection, test) needs more at the measured pace (`Pace`).
SEARCH_WALL_SHARE = 0.75
TRIAL_ATTR_PREFIX = "prompttune.trial."


def checkpoint(state: SearchState) -> None:
    """Stores this runner's own usage in the study (helpers each under their index)."""
    if state.study is not None:
        save_usage(state.study, state.own_usage(), usage_attr(state.runner_index))


class Trials:
    """Runs and records trials of one run; reports each through `emit`."""

    def __init__(self, emit: Callable[[SearchEvent], None]) -> None:
        self._emit = emit

    async def finish(self, state: SearchState, study: optuna.Study, trial: Trial) -> None:
        """Scores `trial` and tells the study. A trial stopped by the budget (wall time
        included) fails and ends the search; cancellation and errors fail it and propagate,
        so no live process leaves a trial RUNNING (only a killed one does: see `resume`)."""
        try:
            record = await state.guard.within(
                self._run(state, trial), SEARCH_WALL_SHARE, state.final_seconds
            )
        except BudgetExceeded as error:
            study.tell(trial, state=TrialState.FAIL)
            state.stop_reason = error.limit
            return
        except (Exception, asyncio.CancelledError):
            study.tell(trial, state=TrialState.FAIL)
            raise
        save_record(trial, record)
        state.objective.tell(study, trial, record)
        self.report(state, record)
        checkpoint(state)

    async def _run(self, state: SearchState, trial: Trial) -> TrialRecord:
        config = TrialConfig.from_params(trial.params)
        for name, text in state.space.describe(config).items():
            trial.set_user_attr(TRIAL_ATTR_PREFIX + name, text)
        key, prompt = state.space.prompt_for(state.task, config)
        previous = state.by_key.get(key)
        if previous is not None:
            return _duplicate(trial.number, config, previous)
        if state.space.calibrated(config):
            prompt = await calibrate(state.task_gateway, prompt, state.settings.embedder)
            checkpoint(state)  # its content-free calls are paid even if the first rung is not
        record = TrialRecord(trial.number, config, key, prompt, objective=state.trial_objective)
        state.by_key[key] = record
        total = len(state.val_order)
        for size in state.objective.rungs(state.rungs):
            await self._score_rung(state, record, size)
            if record.failed_share() > MAX_FAILED_SHARE:
                record.state = FAILED
                break
            record.intermediate.append((size, record.score))
            if state.objective.stop_early(trial, record, size, total):
                break
        return record

    @staticmethod
    async def _score_rung(state: SearchState, record: TrialRecord, size: int) -> None:
        state.guard.check()
        batch = state.val_order[record.scored : size]
        settings = state.space.call_settings(record.prompt, state.settings)
        started, sent = state.guard.elapsed(), state.task_gateway.usage(TASK_ROLE).llm_calls
        results = await score_examples(
            state.task_gateway, state.task, record.prompt, batch, settings
        )
        sent = state.task_gateway.usage(TASK_ROLE).llm_calls - sent
        state.pace.add(state.guard.elapsed() - started, sent)
        record.results.extend(results)
        checkpoint(state)  # a crash loses at most one rung's accounting

    @staticmethod
    def remember(state: SearchState, record: TrialRecord) -> bool:
        """Adds the record; True when it is the new best."""
        state.records.append(record)
        best = state.best
        if record.state == COMPLETE and (best is None or record.score > best.score):
            state.best = record
            return True
        return False

    def report(self, state: SearchState, record: TrialRecord) -> None:
        """Adds the record and emits its events."""
        new_best = self.remember(state, record)
        pruned = record.state == PRUNED
        self._emit(
            TrialFinished(
                record.number, record.score, record.scored, pruned, record.config.describe()
            )
        )
        log.info(
            "search.trial.completed",
            trial=record.number,
            score=round(record.score, 4),
            examples=record.scored,
            state=record.state,
            duplicate_of=record.duplicate_of,
        )
        if new_best:
            self._emit(NewBest(record.number, record.score))
        self._emit(BudgetUsed(state.usage()))


def _duplicate(number: int, config: TrialConfig, previous: TrialRecord) -> TrialRecord:
    return TrialRecord(
        number,
        config,
        previous.key,
        previous.prompt,
        list(previous.results),
        list(previous.intermediate),
        previous.state,
        duplicate_of=previous.number,
        objective=previous.objective,
    )
