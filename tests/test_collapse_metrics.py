"""The model-collapse lab's pure core (udfs/collapse.py): the sampler and the metrics, on tiny inputs
with answers computed by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from udfs.collapse import (
    CollapseLabError,
    distinct_n,
    ngram_counts,
    perplexity,
    sample_sequences,
    tail_coverage,
    tail_ngrams,
    unigram_kl,
    vocabulary_size,
)
from udfs.ngram_lm import NGramLM, train_ngram_lm

VOCAB = 8
# Reserved like sentencepiece's <unk>, <s>, </s>: in the vocabulary, never in training text.
RESERVED = (0, 1, 2)


def _markov_sequences(count: int, length: int, seed: int) -> list[np.ndarray]:
    """Sequences over ids 3..7 that all open with 3 and then mostly step to the next id (7 wraps to 3)."""
    rng = np.random.default_rng(seed)
    sequences = []
    for _ in range(count):
        ids = [3]
        for _ in range(length - 1):
            ids.append(3 + (ids[-1] - 2) % 5 if rng.random() < 0.8 else int(rng.integers(3, 8)))
        sequences.append(np.array(ids, dtype=np.int32))
    return sequences


@pytest.fixture(scope="module")
def lm() -> NGramLM:
    return train_ngram_lm(_markov_sequences(60, 20, seed=0), VOCAB, order=3)


# ---- metrics --------------------------------------------------------------------------------------


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size() -> None:
    # every id seen equally often: the smoothed unigram is exactly uniform
    uniform = train_ngram_lm([np.arange(4)] * 3, vocab_size=4, order=1)
    assert np.allclose(uniform.unigram_probs, 0.25)
    assert perplexity(uniform, [np.array([0, 3, 3]), np.array([1, 2])]) == pytest.approx(4.0)


def test_perplexity_weighs_every_token_not_every_document() -> None:
    lm = NGramLM(1, 2, np.array([0.75, 0.25]), [])
    documents = [np.array([0]), np.array([1, 1, 1])]
    expected = math.exp(-(math.log(0.75) + 3 * math.log(0.25)) / 4)   # 3.04
    mean_of_documents = (1 / 0.75 + 4) / 2                               # 2.67: not what is measured
    assert perplexity(lm, documents) == pytest.approx(expected)
    assert perplexity(lm, documents) != pytest.approx(mean_of_documents, abs=1e-2)


def test_perplexity_of_no_tokens_raises() -> None:
    with pytest.raises(CollapseLabError, match="empty"):
        perplexity(NGramLM(1, 2, np.array([0.5, 0.5]), []), [np.array([], dtype=np.int32)])


def test_ngram_counts_do_not_cross_sequences() -> None:
    assert ngram_counts([[1, 2, 1], [2, 1]], 2) == {(1, 2): 1, (2, 1): 2}
    assert ngram_counts([[1]], 2) == {}


def test_distinct_n_counts_distinct_over_total_ngrams() -> None:
    assert distinct_n([[1, 2, 1, 2]], 1) == pytest.approx(2 / 4)
    assert distinct_n([[1, 2, 1, 2]], 2) == pytest.approx(2 / 3)    # (1,2) (2,1) (1,2)
    assert distinct_n([[1, 2, 1, 2]], 3) == pytest.approx(2 / 2)    # (1,2,1) (2,1,2)
    assert distinct_n([[1, 2, 1, 2], [1, 2]], 2) == pytest.approx(2 / 4)
    assert distinct_n([[1, 2]], 3) == 0.0
    assert distinct_n([], 1) == 0.0


def test_vocabulary_size_counts_distinct_ids_over_all_sequences() -> None:
    assert vocabulary_size([np.array([5, 5, 7]), [7, 9], []]) == 3
    assert vocabulary_size([]) == 0


def test_tail_ngrams_are_those_at_or_below_the_count_quantile() -> None:
    # bigram counts: (1,2) x4, (2,3) x3, (3,4) x2, (4,5) x1, (5,6) x1
    reference = [[1, 2]] * 4 + [[2, 3]] * 3 + [[3, 4]] * 2 + [[4, 5], [5, 6]]
    # counts sorted [1, 1, 2, 3, 4]: the 0.1-quantile (lower) is 1, the 0.5-quantile is 2
    assert tail_ngrams(reference, n=2, quantile=0.1) == {(4, 5), (5, 6)}
    assert tail_ngrams(reference, n=2, quantile=0.5) == {(4, 5), (5, 6), (3, 4)}
    assert tail_ngrams(reference, n=2, quantile=1.0) == set(ngram_counts(reference, 2))
    assert tail_ngrams([[1]], n=2) == set()


def test_tail_coverage_is_the_share_of_tail_ngrams_seen_in_the_samples() -> None:
    tail = {(4, 5), (5, 6), (3, 4), (9, 9)}
    assert tail_coverage(tail, [[1, 2, 1, 2]]) == 0.0
    assert tail_coverage(tail, [[3, 4, 5], [4, 5]]) == pytest.approx(2 / 4)
    assert tail_coverage(tail, [[3, 4, 5, 6], [9, 9]]) == 1.0
    with pytest.raises(CollapseLabError, match="empty tail"):
        tail_coverage(set(), [[1, 2]])


def test_unigram_kl_is_zero_for_identical_counts() -> None:
    assert unigram_kl([[0, 1, 1], [2]], [[2, 1], [1, 0]], vocab_size=5) == pytest.approx(0.0, abs=1e-12)


def test_unigram_kl_matches_the_hand_computed_two_token_value() -> None:
    # reference counts (3, 1), sample counts (1, 1), add-one: P = (4/6, 2/6), Q = (2/4, 2/4)
    by_hand = 2 / 3 * math.log((2 / 3) / 0.5) + 1 / 3 * math.log((1 / 3) / 0.5)   # 0.0566 nats
    kl = unigram_kl([[0, 0, 0, 1]], [[0, 1]], vocab_size=2, alpha=1.0)
    assert kl == pytest.approx(by_hand)
    assert kl == pytest.approx(stats.entropy([4 / 6, 2 / 6], [2 / 4, 2 / 4]))


def test_unigram_kl_weighs_tokens_the_samples_lost_by_their_reference_share() -> None:
    reference = [[0] * 50 + [1] * 50]
    lost_a_frequent_token = unigram_kl(reference, [[0] * 100], vocab_size=3)
    gained_a_token = unigram_kl(reference, [[0] * 50 + [1] * 49 + [2]], vocab_size=3)
    assert lost_a_frequent_token > 10 * gained_a_token


def test_unigram_kl_rejects_ids_outside_the_vocabulary_and_zero_alpha() -> None:
    with pytest.raises(CollapseLabError, match="must lie in"):
        unigram_kl([[0, 3]], [[0]], vocab_size=3)
    with pytest.raises(CollapseLabError, match="alpha"):
        unigram_kl([[0]], [[0]], vocab_size=3, alpha=0.0)


# ---- sampler --------------------------------------------------------------------------------------


def test_sampling_is_deterministic_for_a_seed(lm: NGramLM) -> None:
    first = sample_sequences(lm, 20, 15, temperature=1.0, seed=7, excluded_ids=RESERVED)
    again = sample_sequences(lm, 20, 15, temperature=1.0, seed=7, excluded_ids=RESERVED)
    other = sample_sequences(lm, 20, 15, temperature=1.0, seed=8, excluded_ids=RESERVED)
    assert [s.tolist() for s in first] == [s.tolist() for s in again]
    assert [s.tolist() for s in first] != [s.tolist() for s in other]
    assert all(s.dtype == np.int32 and s.size == 15 for s in first)


def test_a_sequence_depends_on_its_index_and_seed_not_on_how_many_are_drawn(lm: NGramLM) -> None:
    few = sample_sequences(lm, 3, 10, temperature=1.0, seed=3)
    many = sample_sequences(lm, 30, 10, temperature=1.0, seed=3)
    assert [s.tolist() for s in few] == [s.tolist() for s in many[:3]]


def test_sampled_ids_are_vocabulary_ids_and_never_excluded_or_begin(lm: NGramLM) -> None:
    # a high temperature flattens the distribution, so reserved ids would show up if they could
    samples = np.concatenate(sample_sequences(lm, 100, 20, temperature=5.0, seed=0, excluded_ids=RESERVED))
    assert samples.min() >= 0 and samples.max() < VOCAB
    assert set(samples.tolist()) == {3, 4, 5, 6, 7}
    unrestricted = np.concatenate(sample_sequences(lm, 100, 20, temperature=5.0, seed=0))
    assert set(unrestricted.tolist()) & set(RESERVED)   # the smoothing mass is real: exclusion is needed
    assert lm.begin_id not in unrestricted


def test_samples_open_like_the_training_sequences(lm: NGramLM) -> None:
    openings = [s[0] for s in sample_sequences(lm, 50, 3, temperature=0.3, seed=0, excluded_ids=RESERVED)]
    assert openings == [3] * 50


def test_a_low_temperature_samples_near_greedily(lm: NGramLM) -> None:
    greedy = sample_sequences(lm, 50, 20, temperature=0.05, seed=0, excluded_ids=RESERVED)
    free = sample_sequences(lm, 50, 20, temperature=1.0, seed=0, excluded_ids=RESERVED)
    cycle = [3 + i % 5 for i in range(20)]   # the training chain's most likely path
    assert sum(s.tolist() == cycle for s in greedy) >= 45
    assert distinct_n(greedy, 2) < distinct_n(free, 2) / 3


def test_next_token_frequencies_at_temperature_one_match_the_model(lm: NGramLM) -> None:
    samples = sample_sequences(lm, 20000, 2, temperature=1.0, seed=0, excluded_ids=RESERVED)
    first = np.array([s[0] for s in samples])
    seconds = np.array([s[1] for s in samples if s[0] == 3])
    for drawn, context in ((first, []), (seconds, [3])):
        probs = lm.next_token_probs(context)[3:]
        expected = probs / probs.sum() * drawn.size
        observed = np.bincount(drawn - 3, minlength=5)
        assert stats.chisquare(observed, expected).pvalue > 1e-3


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_next_token_frequencies_follow_the_tempered_distribution(lm: NGramLM, temperature: float) -> None:
    samples = sample_sequences(lm, 20000, 2, temperature=temperature, seed=1)
    seconds = np.array([s[1] for s in samples if s[0] == 3])
    tempered = lm.next_token_probs([3]) ** (1 / temperature)
    expected = tempered / tempered.sum() * seconds.size
    observed = np.bincount(seconds, minlength=VOCAB)
    if (expected < 5).any():   # chi-square needs enough expected counts per bin: pool the small ones
        small = expected < 5
        observed = np.append(observed[~small], observed[small].sum())
        expected = np.append(expected[~small], expected[small].sum())
    assert seconds.size > 500
    assert stats.chisquare(observed, expected).pvalue > 1e-3


def test_sampling_stops_before_the_end_id_and_keeps_the_draws_before_it(lm: NGramLM) -> None:
    ended = sample_sequences(lm, 200, 20, temperature=1.0, seed=0, eos_id=7, excluded_ids=RESERVED)
    unended = sample_sequences(lm, 200, 20, temperature=1.0, seed=0, excluded_ids=RESERVED)
    for short, full in zip(ended, unended, strict=True):
        stop = full.tolist().index(7) if 7 in full else full.size
        assert short.tolist() == full[:stop].tolist()
    assert len({s.size for s in ended}) > 5


def test_sampler_rejects_bad_arguments(lm: NGramLM) -> None:
    with pytest.raises(CollapseLabError, match="temperature"):
        sample_sequences(lm, 1, 1, temperature=0.0, seed=0)
    with pytest.raises(CollapseLabError, match="eos_id"):
        sample_sequences(lm, 1, 1, temperature=1.0, seed=0, eos_id=2, excluded_ids=RESERVED)
    with pytest.raises(CollapseLabError, match="excluded_ids"):
        sample_sequences(lm, 1, 1, temperature=1.0, seed=0, excluded_ids=[VOCAB])


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_batched_next_token_probs_equal_one_context_at_a_time(order: int) -> None:
    """The sampler's batched distribution (udfs.ngram_lm.NGramLM.next_token_probs_batch) is the model's
    own next_token_probs, for contexts shorter than, equal to and longer than order - 1."""
    rng = np.random.default_rng(order)
    sequences = [rng.integers(0, 50, size=rng.integers(5, 40)) for _ in range(200)]
    lm = train_ngram_lm(sequences, 60, order)
    for width in range(order + 1):
        contexts = np.vstack([rng.integers(0, 60, size=(20, width)), *(s[:width][None] for s in sequences[:20]
                                                                       if s.size >= width)])
        batch = lm.next_token_probs_batch(contexts)
        single = np.stack([lm.next_token_probs(context) for context in contexts])
        np.testing.assert_allclose(batch, single, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(batch.sum(axis=1), 1.0, rtol=1e-9)
