"""The CLI's progress line: in a multi-model job, trials and the best score are the current
model's."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from tests.server.conftest import SMALL_SEARCH, TASK

from prompttune.client import (
    Job,
    JobEvent,
    JobState,
    ModelSpec,
    NewBest,
    PhaseChanged,
    Progress,
    TrialFinished,
)
from prompttune.server._progress import ProgressLine

NOW = datetime(2026, 12, 1, tzinfo=UTC)


class Terminal(io.StringIO):
    """A stream that says it is a terminal: the line is rewritten on every event."""

    def isatty(self) -> bool:
        return True


def events(*payloads: PhaseChanged | TrialFinished | NewBest) -> list[JobEvent]:
    out = []
    for number, payload in enumerate(payloads, start=1):
        name = {PhaseChanged: "phase_changed", TrialFinished: "trial_finished"}.get(
            type(payload), "new_best"
        )
        out.append(JobEvent("job-1", number, NOW, **{name: payload}))
    return out


def test_the_progress_line_counts_trials_and_best_per_model() -> None:
    job = Job(
        "job-1", JobState.RUNNING, NOW, NOW, TASK, ModelSpec.local(), SMALL_SEARCH, Progress(),
        models=(ModelSpec.local(), ModelSpec.named("gemma")),
    )  # fmt: skip
    stream = Terminal()
    line = ProgressLine(job, stream)
    trial = TrialFinished(0, 0.5, 8, False, "")
    for event in events(
        PhaseChanged("searching model 1/2 (local)"), trial, trial, trial, NewBest(2, 0.66),
        PhaseChanged("testing model 1/2 (local)"),
        PhaseChanged("searching model 2/2 (gemma)"), trial,
    ):  # fmt: skip
        line.update(event)
    lines = stream.getvalue().split("\r")
    max_trials = SMALL_SEARCH.budget.max_trials
    assert f"[searching model 2/2 (gemma)] trials 1/{max_trials}  best -" in lines[-1]
    first_model = [row for row in lines if "testing model 1/2" in row]
    assert f"trials 3/{max_trials}  best 0.660" in first_model[-1]
