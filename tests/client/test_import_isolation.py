"""Importing the SDK must not pull in the server, the engine or heavy ML packages."""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = (
    "optuna",
    "torch",
    "openai",
    "sentence_transformers",
    "numpy",
    "prompttune.search",
    "prompttune.server",
)

SCRIPT = f"""
import sys
import prompttune.client
loaded = [name for name in {FORBIDDEN!r} if name in sys.modules]
print(",".join(loaded))
"""


def test_client_import_pulls_in_no_engine_or_ml_packages() -> None:
    completed = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True
    )

    assert completed.stdout.strip() == ""
