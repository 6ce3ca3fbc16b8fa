"""The report draws the confusion matrices of baseline and best as a PNG."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime

from prompttune.contract import (
    ConfusionMatrix,
    Job,
    JobResult,
    JobState,
    ModelSpec,
    Progress,
    Prompt,
    PromptScores,
    Score,
    SearchSpec,
    TaskSpec,
    Usage,
)
from prompttune.server._report import confusion_panels, confusion_png, report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def scores(confusion: ConfusionMatrix | None, test: bool = True) -> PromptScores:
    score = Score(0.5, 0.4, 0.6, 6, confusion=confusion)
    return PromptScores(Prompt("Classify."), score, score if test else None)


def job(baseline: PromptScores, best: PromptScores) -> Job:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    result = JobResult(baseline, best, True, "better", Usage(), 3, 0, 1.0, "max_trials")
    task = TaskSpec("Classify.", labels=("a", "b"))
    return Job("job-1", JobState.SUCCEEDED, now, now, task, ModelSpec(), SearchSpec(), Progress(),
               result)  # fmt: skip


BASELINE = ConfusionMatrix(("a", "b", "(none)"), (3, 1, 0, 2, 0, 1, 0, 0, 0))
BEST = ConfusionMatrix(("a", "b"), (4, 0, 1, 2))


def test_confusion_png_is_a_png_with_both_panels() -> None:
    panels = confusion_panels(job(scores(BASELINE), scores(BEST)))
    assert [title for title, _ in panels] == ["baseline on test", "best on test"]
    assert panels[1][1] == BEST
    png = confusion_png(panels)
    assert png.startswith(PNG_MAGIC) and len(png) > 2000


def test_panels_fall_back_to_validation_and_skip_scores_without_labels() -> None:
    panels = confusion_panels(job(scores(None), scores(BEST, test=False)))
    assert [title for title, _ in panels] == ["best on validation"]


def test_reports_embed_the_confusion_png_only_for_label_tasks() -> None:
    for fmt in ("html", "md"):
        text = report(job(scores(BASELINE), scores(BEST)), [], fmt)
        found = re.search(r"confusion matrices[^,]*,?[^;]*;base64,([A-Za-z0-9+/=]+)", text)
        assert found is not None
        assert base64.b64decode(found.group(1)).startswith(PNG_MAGIC)
        assert "confusion matrices" not in report(job(scores(None), scores(None)), [], fmt)
