"""The CLI's live progress line: phase, trials, best score so far and LLM calls.

In a multi-model job the trials and best score are those of the model being searched (the
phase names it, as in "searching model 2/2 (gemma)"); LLM calls are the job's."""

from __future__ import annotations

import re
import time
from typing import TextIO

from prompttune.client import Job, JobEvent


class ProgressLine:
    """Rewrites one terminal line per event (or prints a line every few seconds when the
    stream is not a terminal)."""

    def __init__(self, job: Job, stream: TextIO, enabled: bool = True) -> None:
        self._job_id = job.id
        self._stream = stream
        self._enabled = enabled
        self._tty = stream.isatty()
        self._phase = "queued"
        self._trials = 0
        self._max_trials = job.search.budget.max_trials or 0
        self._best: float | None = None
        self._calls = 0
        self._hits = 0
        self._started = time.monotonic()
        self._last_print = 0.0
        self._model = ""

    def update(self, event: JobEvent) -> None:
        if event.phase_changed is not None:
            self._phase = event.phase_changed.phase
            self._next_model(self._phase)
        elif event.trial_finished is not None:
            self._trials += 1
        elif event.new_best is not None:
            self._best = event.new_best.score
        elif event.budget_used is not None:
            self._calls = event.budget_used.usage.llm_calls
            self._hits = event.budget_used.usage.cache_hits
        elif event.state_changed is not None:
            self._phase = event.state_changed.state.value
        self._render(force=event.phase_changed is not None or event.state_changed is not None)

    def _next_model(self, phase: str) -> None:
        """A phase naming another model starts that model's trial count and best score."""
        model = re.search(r"model \d+/\d+", phase)
        if model is not None and model.group() != self._model:
            if self._model:
                self._trials, self._best = 0, None
            self._model = model.group()

    def _render(self, force: bool) -> None:
        if not self._enabled:
            return
        now = time.monotonic()
        if not self._tty and not force and now - self._last_print < 5:
            return
        self._last_print = now
        total = f"/{self._max_trials}" if self._max_trials else ""
        best = "-" if self._best is None else f"{self._best:.3f}"
        text = (
            f"{self._job_id} [{self._phase:<10}] trials {self._trials}{total}  best {best}  "
            f"LLM calls {self._calls} (cache hits {self._hits})  {now - self._started:5.0f}s"
        )
        if self._tty:
            self._stream.write("\r" + text.ljust(100))
        else:
            self._stream.write(text + "\n")
        self._stream.flush()

    def close(self) -> None:
        if self._enabled and self._tty:
            self._stream.write("\n")
            self._stream.flush()
