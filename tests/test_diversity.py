"""Set-level diversity measures (udfs.diversity) on constructed and M4 sets."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from udfs.diversity import cluster_entropy, distinct_n, top_source_share, vendi_score
from udfs.embeddings import EmbeddingModel

M4 = Path(__file__).parents[1] / "data" / "m4"


@pytest.fixture(scope="module")
def wikipedia_texts() -> list[str]:
    return [json.loads(line)["human_text"].strip()
            for line in (M4 / "wikipedia_llama2.jsonl").read_text(encoding="utf-8").splitlines()]


def test_identical_texts_have_small_distinct_n():
    scores = distinct_n(["The cat sat on the mat today"] * 50)
    # 6 distinct unigrams (the twice) over 350; 6 distinct bigrams over 300; and so on.
    assert scores == pytest.approx({1: 6 / 350, 2: 6 / 300, 3: 5 / 250, 4: 4 / 200})


def test_texts_without_repeats_have_distinct_n_one():
    assert distinct_n(["alpha beta gamma delta", "epsilon zeta eta theta"]) == {1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0}


def test_distinct_n_is_nan_where_no_ngram_exists():
    scores = distinct_n(["two words", ""], max_n=3)
    assert scores[1] == 1.0 and scores[2] == 1.0 and math.isnan(scores[3])


def test_real_human_text_is_more_diverse_than_its_repetition(wikipedia_texts: list[str]):
    varied = distinct_n(wikipedia_texts[:40])
    repeated = distinct_n(wikipedia_texts[:4] * 10)
    assert all(varied[n] > 2 * repeated[n] for n in range(1, 5))
    assert varied[1] < varied[2] < varied[3] < varied[4] <= 1.0


def test_cluster_entropy_is_one_when_even_and_zero_when_collapsed():
    assert cluster_entropy([0, 1, 2, 3] * 25) == pytest.approx(1.0)
    assert cluster_entropy([7] * 100) == 0.0
    # Two of four clusters used evenly: log 2 / log 4.
    assert cluster_entropy([0, 1] * 50, n_clusters=4) == pytest.approx(0.5)
    assert cluster_entropy({0: 50, 1: 50}, n_clusters=4) == pytest.approx(0.5)  # counts, as embed passes them
    assert math.isnan(cluster_entropy([]))
    with pytest.raises(ValueError, match="distinct cluster ids"):
        cluster_entropy([0, 1, 2], n_clusters=2)


def test_top_source_share():
    assert top_source_share(["wiki"] * 6 + ["news"] * 3 + ["forum"]) == pytest.approx(0.6)
    assert top_source_share({"wiki": 6, "news": 3, "forum": 1}) == pytest.approx(0.6)
    assert math.isnan(top_source_share([]))


def test_vendi_score_is_one_for_identical_and_n_for_orthogonal_embeddings():
    identical = np.tile(np.array([[0.6, 0.8, 0.0]]), (40, 1))
    assert vendi_score(identical) == pytest.approx(1.0)
    assert vendi_score(np.eye(25)) == pytest.approx(25.0)
    # Two orthogonal groups of equal size: two effective documents.
    two_groups = np.repeat(np.eye(2), 30, axis=0)
    assert vendi_score(two_groups) == pytest.approx(2.0)


def test_vendi_score_uses_a_seeded_sample():
    vectors = np.random.default_rng(1).normal(size=(3000, 16))
    first = vendi_score(vectors, sample_size=500, seed=2)
    assert first == vendi_score(vectors, sample_size=500, seed=2)
    assert 1.0 < first <= 16.0


def test_vendi_score_falls_when_a_corpus_repeats_itself(wikipedia_texts: list[str]):
    model = EmbeddingModel().fit(wikipedia_texts)
    varied = vendi_score(model.transform(wikipedia_texts[:80]))
    collapsed = vendi_score(model.transform(wikipedia_texts[:8] * 10))
    assert collapsed == pytest.approx(8.0, rel=0.25)
    assert varied > 4 * collapsed
