import json
import math
from pathlib import Path

import numpy as np
import pytest

from udfs.detectors import prepare_texts
from udfs.ngram_lm import NGramLM, train_ngram_lm
from udfs.tokenizer import Tokenizer, train_tokenizer
from udfs.watermark import (
    WatermarkParameterError,
    generate_watermarked,
    green_list,
    is_green,
    permuted_position,
    watermark_z_score,
)

M4 = Path(__file__).resolve().parents[1] / "data" / "m4"
KEY = "cleanwell-test-key"
GAMMA = 0.25


@pytest.fixture(scope="module")
def human_texts() -> list[str]:
    with open(M4 / "wikipedia_llama2.jsonl", encoding="utf-8") as lines:
        return prepare_texts([json.loads(line)["human_text"] for line in lines])


@pytest.fixture(scope="module")
def generator(human_texts: list[str]) -> tuple[Tokenizer, NGramLM]:
    """A trigram LM trained on real human text, standing in for the generating LLM."""
    tokenizer = Tokenizer(train_tokenizer(human_texts[:60], vocab_size=4000))
    return tokenizer, train_ngram_lm(tokenizer.encode_ids(human_texts[:60]), tokenizer.vocab_size, order=3)


def test_green_list_has_exactly_gamma_of_the_vocabulary_and_depends_on_previous_token() -> None:
    vocab_size = 5003
    after_7, after_8 = green_list(7, KEY, GAMMA, vocab_size), green_list(8, KEY, GAMMA, vocab_size)
    assert after_7.size == after_8.size == round(GAMMA * vocab_size)
    overlap = np.intersect1d(after_7, after_8).size / after_7.size
    assert overlap == pytest.approx(GAMMA, abs=0.05)    # independent lists share ~gamma of their ids
    assert not np.array_equal(green_list(7, "another key", GAMMA, vocab_size), after_7)


def test_permutation_is_a_bijection_of_the_vocabulary_for_awkward_sizes() -> None:
    for vocab_size in (2, 3, 257, 4000):
        positions = permuted_position(np.full(vocab_size, 11), np.arange(vocab_size), KEY, vocab_size)
        assert np.array_equal(np.sort(positions), np.arange(vocab_size))


def test_z_score_follows_the_one_proportion_formula() -> None:
    vocab_size = 1000
    previous, candidates = 42, np.arange(vocab_size)
    green_after_previous = is_green(np.full(vocab_size, previous), candidates, KEY, GAMMA, vocab_size)
    tokens = [*candidates[green_after_previous][:6], *candidates[~green_after_previous][:4]]
    sequence = np.array([i for token in tokens for i in (previous, token)])   # previous, t1, previous, t2 ...
    greens = int(is_green(sequence[:-1], sequence[1:], KEY, GAMMA, vocab_size).sum())
    assert greens >= 6
    scored = sequence.size - 1
    expected = (greens - GAMMA * scored) / math.sqrt(scored * GAMMA * (1 - GAMMA))
    assert watermark_z_score([sequence], KEY, GAMMA, vocab_size)[0] == pytest.approx(expected)


def test_batch_scores_each_distinct_pair_once_per_sequence_as_one_sequence_alone_would() -> None:
    vocab_size = 50
    rng = np.random.default_rng(0)
    sequences = [rng.integers(0, 8 if i % 2 else vocab_size, size=rng.integers(0, 40)) for i in range(30)]
    batch = watermark_z_score(sequences, KEY, GAMMA, vocab_size)
    for ids, z in zip(sequences, batch, strict=True):
        pairs = sorted(set(zip(ids[:-1].tolist(), ids[1:].tolist(), strict=True)))   # small alphabet: repeats
        if not pairs:
            assert np.isnan(z)
            continue
        previous, token = np.array(pairs).T
        green = int(is_green(previous, token, KEY, GAMMA, vocab_size).sum())
        expected = (green - GAMMA * len(pairs)) / math.sqrt(len(pairs) * GAMMA * (1 - GAMMA))
        assert z == pytest.approx(expected, rel=1e-12)
        assert watermark_z_score([ids], KEY, GAMMA, vocab_size)[0] == z


def test_token_ids_outside_the_vocabulary_are_rejected() -> None:
    for ignore_repeated_pairs in (True, False):
        with pytest.raises(WatermarkParameterError, match="outside the vocabulary"):
            watermark_z_score([[1, 2, 100]], KEY, GAMMA, 100, ignore_repeated_pairs=ignore_repeated_pairs)


def test_sequences_too_short_to_score_get_nan() -> None:
    assert np.isnan(watermark_z_score([[], [5]], KEY, GAMMA, 100)).all()


def test_watermarked_generation_scores_far_above_four_and_wrong_key_does_not(
        generator: tuple[Tokenizer, NGramLM]) -> None:
    _, lm = generator
    samples = [generate_watermarked(lm.next_token_probs, 200, KEY, GAMMA, delta=2.0, vocab_size=lm.vocab_size,
                                    seed=seed) for seed in range(3)]
    z_right_key = watermark_z_score(samples, KEY, GAMMA, lm.vocab_size)
    z_wrong_key = watermark_z_score(samples, "not-the-key", GAMMA, lm.vocab_size)
    assert np.all(z_right_key > 8)          # measured 11-13 with delta 2 over 199 scored tokens
    assert np.all(np.abs(z_wrong_key) < 4)


def test_unwatermarked_generation_and_human_text_have_small_z(
        generator: tuple[Tokenizer, NGramLM], human_texts: list[str]) -> None:
    tokenizer, lm = generator
    plain = generate_watermarked(lm.next_token_probs, 200, KEY, GAMMA, delta=0.0, vocab_size=lm.vocab_size, seed=0)
    human_ids = tokenizer.encode_ids(human_texts[60:90])
    z_human = watermark_z_score(human_ids, KEY, GAMMA, lm.vocab_size)
    assert abs(watermark_z_score([plain], KEY, GAMMA, lm.vocab_size)[0]) < 4
    assert np.all(np.abs(z_human) < 4)      # measured max 2.1 over these 30 articles
    assert abs(np.mean(z_human)) < 1


def test_scoring_repeated_pairs_once_keeps_human_z_near_standard_normal(
        generator: tuple[Tokenizer, NGramLM], human_texts: list[str]) -> None:
    tokenizer, lm = generator
    human_ids = tokenizer.encode_ids(human_texts)
    keys = ("key-a", "key-b", "key-c")
    deduplicated = np.concatenate([watermark_z_score(human_ids, k, GAMMA, lm.vocab_size) for k in keys])
    every_token = np.concatenate([watermark_z_score(human_ids, k, GAMMA, lm.vocab_size, ignore_repeated_pairs=False)
                                  for k in keys])
    assert deduplicated.std() == pytest.approx(1.0, abs=0.2)      # measured 0.95
    assert np.all(np.abs(deduplicated) < 4)
    assert every_token.std() > 1.4                                # measured 1.7: repeated pairs move together


def test_gamma_outside_the_unit_interval_is_rejected() -> None:
    with pytest.raises(WatermarkParameterError, match="gamma"):
        watermark_z_score([[1, 2, 3]], KEY, 1.5, 100)
