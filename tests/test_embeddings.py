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
    hashed_word_ngram_counts,
    murmurhash3_32,
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


def test_murmurhash_of_byte_ranges_equals_scikit_learns() -> None:
    """issue #16: every range at once, short ones in numpy and long ones one by one; each equals
    sklearn.utils.murmurhash3_32 of its bytes, tails of 0 to 3 bytes and empty ranges included."""
    from sklearn.utils import murmurhash3_32 as reference

    rng = np.random.default_rng(7)
    keys = [bytes(rng.integers(0, 256, size, dtype=np.uint8)) for size in rng.integers(0, 80, 3000)]
    keys += [b"", b"a", b"ab", b"abc", b"abcd", b"abcde", b"\xff" * 64, b"\xff" * 65, b"x" * 1000]
    data = np.frombuffer(b"".join(keys), dtype=np.uint8)
    lengths = np.array([len(k) for k in keys])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    expected = np.array([reference(key, seed=0) for key in keys], dtype=np.int32)
    np.testing.assert_array_equal(murmurhash3_32(data, starts, lengths), expected)
    short = lengths <= 64
    np.testing.assert_array_equal(murmurhash3_32(data, starts[short], lengths[short]), expected[short])


HOSTILE_TEXTS = ["", "a", "  \n\t ", "İstanbul ǅemal ÀÉ ß STRASSE", "under_score x_y 42 4 émoji 🙂🙂 日本語のテキスト",
                 "a\nb\ncc dd\n\nee", "x" * 5000 + " yy", "tab\tsep\u00a0nbsp\u2028line zz", "ﬁne ﬂow ΣΊΣΥΦΟΣ",
                 "١٢٣ arabic-indic ²³ superscripts Ⅻ numerals", "combining e\u0301 marks o\u0308"]


@pytest.mark.parametrize(("ngram_range", "n_features"), [((1, 2), 2**18), ((1, 1), 1000), ((2, 3), 2**20)])
def test_hashed_word_ngram_counts_equal_scikit_learns_hashing_vectorizer(
        human_texts: list[str], ngram_range: tuple[int, int], n_features: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """issue #16: the embedding's counts, computed over a whole batch in numpy, are scikit-learn's
    HashingVectorizer's (unsigned, unnormalised) entry for entry: same tokens (lowercased, the default token
    pattern), same n-grams, same MurmurHash3 buckets."""
    from sklearn.feature_extraction.text import HashingVectorizer

    rng = np.random.default_rng(11)
    # random code points from every plane that re's \w may or may not match (no surrogates: not UTF-8)
    points = rng.integers(0x20, 0x30000, size=(40, 60))
    points[(points >= 0xD800) & (points < 0xE000)] = 0x20
    random_texts = ["".join(map(chr, row)) for row in points]
    texts = human_texts + HOSTILE_TEXTS + random_texts
    expected = HashingVectorizer(n_features=n_features, ngram_range=ngram_range, alternate_sign=False, norm=None,
                                 dtype=np.float32).transform(texts)
    expected.sort_indices()
    counts = hashed_word_ngram_counts(texts, n_features, ngram_range)
    assert counts.dtype == np.float32 and counts.shape == expected.shape
    assert (counts != expected).nnz == 0
    # the same in chunks of a few characters (a chunk boundary must not join or split tokens)
    monkeypatch.setattr("udfs.embeddings._CHUNK_CHARS", 500)
    assert (hashed_word_ngram_counts(texts, n_features, ngram_range) != expected).nnz == 0
