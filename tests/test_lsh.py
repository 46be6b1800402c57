"""udfs.lsh: band/row choice, banding, and the single-process near-duplicate reference (no Spark)."""

from __future__ import annotations

import numpy as np
import pytest
from datasketch.lsh import _optimal_param

from bench.minhash_core import exact_jaccard_pairs, near_duplicate_corpus, precision_recall
from udfs.lsh import (
    band_hashes,
    candidate_pairs,
    connected_component_ids,
    datasketch_candidate_pairs,
    near_duplicate_clusters,
    near_duplicate_pairs,
    optimal_bands_rows,
)
from udfs.minhash import minhash_signatures, shingles

THRESHOLD = 0.8
RECOMMENDED_CANDIDATE_THRESHOLD = 0.65


@pytest.fixture(scope="module")
def corpus():
    return near_duplicate_corpus(1000, seed=11)


@pytest.fixture(scope="module")
def signatures(corpus):
    return minhash_signatures(corpus.texts)


@pytest.fixture(scope="module")
def shingle_sets(corpus):
    return [set(shingles(text)) for text in corpus.texts]


@pytest.fixture(scope="module")
def exact_pairs(shingle_sets):
    pairs, similarities = exact_jaccard_pairs(shingle_sets, 0.0)
    return pairs, similarities


@pytest.mark.parametrize(
    ("threshold", "num_perm", "weights"),
    [
        (0.5, 128, (0.5, 0.5)),
        (0.65, 128, (0.5, 0.5)),
        (0.8, 128, (0.5, 0.5)),
        (0.9, 64, (0.5, 0.5)),
        (0.8, 256, (0.3, 0.7)),
        (0.7, 100, (0.6, 0.4)),
    ],
)
def test_optimal_bands_rows_equals_datasketch_choice(threshold, num_perm, weights):
    assert optimal_bands_rows(threshold, num_perm, *weights) == _optimal_param(threshold, num_perm, *weights)


def test_optimal_bands_rows_at_lower_threshold_uses_more_shorter_bands():
    assert optimal_bands_rows(0.8, 128) == (9, 13)
    assert optimal_bands_rows(0.65, 128) == (16, 8)


def test_band_hashes_are_equal_exactly_when_band_rows_are_equal():
    signatures = np.array([[1, 2, 3, 4, 9], [1, 2, 3, 5, 9], [7, 2, 3, 4, 9]], dtype=np.uint32)
    keys = band_hashes(signatures, bands=2, rows=2)
    assert keys.shape == (3, 2) and keys.dtype == np.uint64
    assert keys[0, 0] == keys[1, 0] and keys[0, 1] != keys[1, 1]
    assert keys[0, 0] != keys[2, 0] and keys[0, 1] == keys[2, 1]


def test_band_hashes_differ_between_bands_holding_the_same_values():
    keys = band_hashes(np.full((1, 12), 42, dtype=np.uint64), bands=4, rows=3)
    assert len(set(keys[0].tolist())) == 4


def test_band_hashes_reject_more_rows_than_the_signature_has():
    with pytest.raises(ValueError, match="bands x rows must be positive and at most num_perm=8; got 3 x 3"):
        band_hashes(np.zeros((2, 8), dtype=np.uint32), bands=3, rows=3)


def test_candidate_pairs_are_all_pairs_of_each_bucket():
    keys = np.array([[5, 1], [5, 2], [6, 1], [5, 3]], dtype=np.uint64)
    assert candidate_pairs(keys).tolist() == [[0, 1], [0, 2], [0, 3], [1, 3]]


def test_capped_bucket_links_every_member_to_its_first_member_only():
    keys = np.array([[7], [7], [7], [7], [8]], dtype=np.uint64)
    assert candidate_pairs(keys, max_bucket_size=3).tolist() == [[0, 1], [0, 2], [0, 3]]
    assert len(candidate_pairs(keys, max_bucket_size=4)) == 6


def test_capped_bucket_of_identical_texts_still_forms_one_cluster():
    texts = ["the same boilerplate page of a site, repeated on every url"] * 40 + ["something else entirely"]
    signatures = minhash_signatures(texts)
    pairs = near_duplicate_pairs(signatures, max_bucket_size=10)
    clusters = connected_component_ids(list(range(41)), pairs)
    assert len(pairs) == 39
    assert {clusters[i] for i in range(40)} == {0} and clusters[40] == 40


def test_component_id_is_the_smallest_member_id():
    pairs = np.array([[0, 2], [2, 3]])
    assert connected_component_ids(["d", "b", "c", "a"], pairs) == {"d": "a", "b": "b", "c": "a", "a": "a"}


def test_empty_texts_are_not_clustered_together():
    sentence = "a real sentence with enough words to shingle"
    texts = ["", "", "...", sentence, sentence]
    clusters = near_duplicate_clusters(["e1", "e2", "e3", "t1", "t2"], minhash_signatures(texts))
    assert clusters == {"e1": "e1", "e2": "e2", "e3": "e3", "t1": "t1", "t2": "t1"}


def test_numpy_banding_and_datasketch_lsh_give_identical_candidates_and_clusters(corpus, signatures):
    bands, rows = optimal_bands_rows(RECOMMENDED_CANDIDATE_THRESHOLD, 128)
    numpy_candidates = candidate_pairs(band_hashes(signatures, bands, rows))
    datasketch_candidates = datasketch_candidate_pairs(signatures, bands, rows, scheme="affine32", seed=1)
    assert len(numpy_candidates) > 100
    np.testing.assert_array_equal(numpy_candidates, datasketch_candidates)
    by_numpy = near_duplicate_clusters(corpus.ids, signatures, candidate_index="numpy")
    by_datasketch = near_duplicate_clusters(corpus.ids, signatures, candidate_index="datasketch")
    assert by_numpy == by_datasketch
    assert len(set(by_numpy.values())) < len(corpus.ids)


def test_reference_dedup_finds_planted_near_duplicates_and_keeps_unrelated_documents_apart():
    # Edit rates of 0.3-1% keep every planted pair's Jaccard well above 0.8, so the expected clusters are
    # exactly the planted families: one cluster per original.
    corpus = near_duplicate_corpus(400, seed=4, edit_rate_range=(0.003, 0.01))
    clusters = near_duplicate_clusters(corpus.ids, minhash_signatures(corpus.texts), THRESHOLD)
    family = np.arange(len(corpus.ids))
    while (corpus.source[family] >= 0).any():
        family = np.where(corpus.source[family] >= 0, corpus.source[family], family)
    for doc, origin in enumerate(family.tolist()):
        assert clusters[corpus.ids[doc]] == clusters[corpus.ids[origin]]
    assert len(set(clusters.values())) == (corpus.source < 0).sum() == 280


def test_exact_verification_at_recommended_candidate_threshold_has_precision_and_recall_above_095(
    corpus, signatures, shingle_sets, exact_pairs
):
    pairs, similarities = exact_pairs
    truth = pairs[similarities >= THRESHOLD]
    found = near_duplicate_pairs(
        signatures, THRESHOLD, RECOMMENDED_CANDIDATE_THRESHOLD, verification="shingles", shingle_sets=shingle_sets
    )
    precision, recall = precision_recall(found, truth)
    assert len(truth) > 100
    assert precision == 1.0 and recall >= 0.95


def test_banding_at_the_verification_threshold_loses_recall(signatures, shingle_sets, exact_pairs):
    pairs, similarities = exact_pairs
    truth = pairs[similarities >= THRESHOLD]
    found = near_duplicate_pairs(signatures, THRESHOLD, None, verification="shingles", shingle_sets=shingle_sets)
    _precision, recall = precision_recall(found, truth)
    assert recall < 0.9


def test_signature_verification_errs_only_near_the_threshold(signatures, exact_pairs):
    pairs, similarities = exact_pairs
    found = near_duplicate_pairs(signatures, THRESHOLD, RECOMMENDED_CANDIDATE_THRESHOLD)
    exact_of_found = dict(zip(map(tuple, pairs.tolist()), similarities.tolist(), strict=True))
    clear_duplicates = pairs[similarities >= 0.9]
    _precision, recall_of_clear = precision_recall(found, clear_duplicates)
    assert recall_of_clear == 1.0
    assert min(exact_of_found[pair] for pair in map(tuple, found.tolist())) >= 0.7


def test_corpus_generator_is_deterministic_and_plants_the_requested_share_of_variants():
    first = near_duplicate_corpus(50, seed=9)
    second = near_duplicate_corpus(50, seed=9)
    assert first.texts == second.texts and first.source.tolist() == second.source.tolist()
    assert (first.source >= 0).sum() == 15
    assert np.all((first.edit_rate[first.source >= 0] >= 0.01) & (first.edit_rate[first.source >= 0] <= 0.06))
    assert np.mean([len(text.split()) for text in first.texts]) == pytest.approx(190, abs=15)
