"""Default hashed TF-IDF embeddings (udfs.embeddings) on the M4 sample."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from udfs.embeddings import (
    EmbeddingBackendError,
    EmbeddingModel,
    SentenceTransformerEmbedder,
)

M4 = Path(__file__).parents[1] / "data" / "m4"


@pytest.fixture(scope="module")
def human_texts() -> list[str]:
    return [json.loads(line)["human_text"].strip()
            for path in sorted(M4.glob("*.jsonl")) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def fitted(human_texts: list[str]) -> EmbeddingModel:
    return EmbeddingModel().fit(human_texts)


def _near_duplicate(text: str) -> str:
    """The same page re-crawled: a changed date, an added banner line, different spacing."""
    return "Updated 12 March 2024.\n" + text.replace("\n\n", "\n").replace(" the ", " The ", 3)


def test_embeddings_are_unit_float32_rows_of_fixed_dimension(fitted: EmbeddingModel, human_texts: list[str]):
    vectors = fitted.transform(human_texts[:50])
    assert vectors.shape == (50, 256) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_same_sample_and_seed_give_identical_embeddings(human_texts: list[str]):
    first = EmbeddingModel(seed=3).fit(human_texts).transform(human_texts[:20])
    second = EmbeddingModel(seed=3).fit(list(reversed(human_texts))).transform(human_texts[:20])
    other_seed = EmbeddingModel(seed=4).fit(human_texts).transform(human_texts[:20])
    assert np.array_equal(first, second)
    assert not np.allclose(first, other_seed)


def test_batch_size_does_not_change_embeddings(fitted: EmbeddingModel, human_texts: list[str]):
    small_batches = EmbeddingModel.from_bytes(fitted.to_bytes())
    small_batches.batch_size = 7
    np.testing.assert_array_equal(small_batches.transform(human_texts[:30]), fitted.transform(human_texts[:30]))


def test_bytes_round_trip_reproduces_embeddings(fitted: EmbeddingModel, human_texts: list[str]):
    restored = EmbeddingModel.from_bytes(fitted.to_bytes())
    assert restored.n_fit_documents == len(human_texts)
    np.testing.assert_array_equal(restored.transform(human_texts[:40]), fitted.transform(human_texts[:40]))
    assert len(fitted.to_bytes()) < 1_000_000  # small enough to broadcast


def test_near_duplicates_are_closer_than_any_unrelated_document(fitted: EmbeddingModel, human_texts: list[str]):
    originals = fitted.transform(human_texts)
    copies = fitted.transform([_near_duplicate(text) for text in human_texts])
    similarity = copies @ originals.T
    own = np.diag(similarity).copy()
    np.fill_diagonal(similarity, -1.0)
    assert own.min() > 0.9
    assert (own > similarity.max(axis=1)).all()
    assert np.median(similarity.max(axis=1)) < 0.5


def test_text_without_words_or_missing_embeds_as_zero_row(fitted: EmbeddingModel):
    vectors = fitted.transform(["", "!!! ... ?", None])
    assert not vectors.any()


def test_unfitted_model_and_foreign_bytes_are_errors():
    with pytest.raises(EmbeddingBackendError, match="not fitted"):
        EmbeddingModel().transform(["text"])
    with pytest.raises(EmbeddingBackendError, match="not a serialised EmbeddingModel"):
        EmbeddingModel.from_bytes(b"not a model")
    with pytest.raises(EmbeddingBackendError, match="zero texts"):
        EmbeddingModel().fit([])


def test_sentence_transformers_backend_never_downloads_a_missing_model(tmp_path: Path):
    with pytest.raises(EmbeddingBackendError, match="does not exist; cleanwell never downloads"):
        SentenceTransformerEmbedder(tmp_path / "all-MiniLM-L6-v2")


@pytest.mark.skipif(importlib.util.find_spec("sentence_transformers") is not None,
                    reason="sentence-transformers is installed")
def test_sentence_transformers_backend_says_how_to_install_it(tmp_path: Path):
    with pytest.raises(EmbeddingBackendError, match=r"pip install 'cleanwell\[embeddings\]'"):
        SentenceTransformerEmbedder(tmp_path)
