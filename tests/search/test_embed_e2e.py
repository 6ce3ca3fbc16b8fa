from __future__ import annotations

import numpy as np
import pytest

from prompttune.search import SentenceTransformerEmbedder, minilm_model_dir


@pytest.mark.e2e
def test_minilm_embeddings_place_similar_sentences_closer() -> None:
    assert (minilm_model_dir() / "modules.json").is_file()
    embedder = SentenceTransformerEmbedder()
    texts = [
        "The film was a wonderful, moving experience.",
        "I loved this movie; it was beautiful and touching.",
        "The invoice must be paid by the end of the month.",
    ]
    vectors = embedder.embed(texts)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert float(vectors[0] @ vectors[1]) > float(vectors[0] @ vectors[2]) + 0.2
    again = embedder.embed([texts[2], texts[0]])
    assert np.array_equal(again, vectors[[2, 0]])  # served from the per-text cache
