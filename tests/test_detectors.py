import json
import random
from pathlib import Path

import numpy as np
import pytest

from udfs.detectors import (
    STYLOMETRIC_FEATURE_NAMES,
    ZERO_SHOT_SIGNALS,
    compression_ratio,
    lm_binoculars,
    lm_log_likelihood,
    ngram_repetition,
    prepare_texts,
    stylometric_features,
    type_token_ratio,
    words,
    zero_shot_signals,
)
from udfs.ngram_lm import NGramLM, NGramModelError, lm_signals, train_ngram_lm
from udfs.tokenizer import Tokenizer, train_tokenizer

M4 = Path(__file__).resolve().parents[1] / "data" / "m4"


def _texts(domain: str, field: str) -> list[str]:
    with open(M4 / f"{domain}_llama2.jsonl", encoding="utf-8") as lines:
        return [json.loads(line)[field] for line in lines]


@pytest.fixture(scope="module")
def wikipedia_human() -> list[str]:
    return prepare_texts(_texts("wikipedia", "human_text"))


@pytest.fixture(scope="module")
def reference(wikipedia_human: list[str]) -> tuple[Tokenizer, NGramLM]:
    """Tokenizer and trigram LM trained on the first 60 human Wikipedia articles."""
    tokenizer = Tokenizer(train_tokenizer(wikipedia_human[:60], vocab_size=4000))
    return tokenizer, train_ngram_lm(tokenizer.encode_ids(wikipedia_human[:60]), tokenizer.vocab_size, order=3)


ARTICLE = ("Cheryl McWatters is a professor of business history at the University of Ottawa. She previously "
           "taught at McGill University and the University of Alberta, and she earned her degrees at Queen's "
           "University in Kingston. Her research covers accounting history, logistics and the French Atlantic "
           "trade of the eighteenth century; she has edited two journals and written three books.")


# ---- compression, repetition, type-token ratio ---------------------------------------------------

def test_repeated_text_compresses_more_than_the_original() -> None:
    original, looped = compression_ratio([ARTICLE, " ".join([ARTICLE[:120]] * 6)])
    assert looped < 0.5 * original
    assert 0.4 < original < 0.8


def test_compression_ratio_of_empty_text_is_nan() -> None:
    assert np.isnan(compression_ratio([""])[0])


def test_looping_text_has_more_repeated_trigrams_than_prose() -> None:
    prose, looped = ngram_repetition([ARTICLE, "she went to the market and " * 20])
    assert prose == pytest.approx(1 / 56)             # "the university of" twice among 56 trigrams
    assert looped == pytest.approx(1 - 6 / 118)       # 6 distinct trigrams among 118
    assert np.isnan(ngram_repetition(["two words"])[0])


def _brute_force_mattr(tokens: list[str], window: int) -> float:
    return float(np.mean([len(set(tokens[s:s + window])) / window for s in range(len(tokens) - window + 1)]))


def test_mattr_equals_the_mean_ttr_of_every_window(wikipedia_human: list[str]) -> None:
    text = wikipedia_human[3]
    expected = _brute_force_mattr(words(text), 50)
    assert type_token_ratio([text])[0] == pytest.approx(expected, rel=1e-12)


def test_mattr_of_a_batch_equals_each_text_alone(wikipedia_human: list[str]) -> None:
    """The batch is one array (issue #16): words must not be matched across documents."""
    texts = [*wikipedia_human[:30], "", "word", "the the the", "a b " * 40, wikipedia_human[0]]
    batch = type_token_ratio(texts)
    expected = [_brute_force_mattr(words(t), 50) if len(words(t)) > 50
                else (len(set(words(t))) / len(words(t)) if words(t) else np.nan) for t in texts]
    np.testing.assert_allclose(batch, expected, rtol=1e-12)
    assert np.isnan(batch[30]) and batch[31] == 1.0 and batch[32] == pytest.approx(1 / 3)


def test_mattr_does_not_fall_with_length_as_plain_ttr_does(wikipedia_human: list[str]) -> None:
    long_text = max(wikipedia_human, key=len)
    tokens = words(long_text)
    first_half = " ".join(tokens[: len(tokens) // 2])
    mattr_half, mattr_full = type_token_ratio([first_half, long_text])
    plain_half = len(set(tokens[: len(tokens) // 2])) / (len(tokens) // 2)
    plain_full = len(set(tokens)) / len(tokens)
    assert plain_full < plain_half - 0.03            # measured 0.350 -> 0.303
    assert mattr_full == pytest.approx(mattr_half, abs=0.02)   # measured 0.760 -> 0.769


def test_text_reusing_few_words_has_lower_type_token_ratio() -> None:
    varied, repetitive = type_token_ratio([ARTICLE, "the cat saw the dog and the dog saw the cat " * 8])
    assert repetitive < 0.3 < 0.6 < varied


# ---- n-gram language model ----------------------------------------------------------------------------

def test_lm_gives_held_out_in_domain_text_higher_likelihood_than_other_domains(
        wikipedia_human: list[str], reference: tuple[Tokenizer, NGramLM]) -> None:
    tokenizer, lm = reference
    wikihow_human = prepare_texts(_texts("wikihow", "human_text"))[:40]
    held_out = lm_log_likelihood(wikipedia_human[60:], tokenizer, lm)
    other_domain = lm_log_likelihood(wikihow_human, tokenizer, lm)
    # share of (held-out, other-domain) pairs ranked the right way: measured 0.76 for this small LM
    assert np.mean(held_out[:, None] > other_domain[None, :]) > 0.65


def test_lm_gives_text_higher_likelihood_than_its_words_shuffled(
        wikipedia_human: list[str], reference: tuple[Tokenizer, NGramLM]) -> None:
    tokenizer, lm = reference
    texts = wikipedia_human[60:80]
    shuffled = []
    for i, text in enumerate(texts):
        tokens = text.split()
        random.Random(i).shuffle(tokens)
        shuffled.append(" ".join(tokens))
    assert np.all(lm_log_likelihood(texts, tokenizer, lm) > lm_log_likelihood(shuffled, tokenizer, lm))
    # Binoculars-like ratio: shuffled text is more surprising than the model expects
    assert np.all(lm_binoculars(shuffled, tokenizer, lm) > lm_binoculars(texts, tokenizer, lm))


def test_lm_predictive_distributions_sum_to_one_and_match_token_scores(
        reference: tuple[Tokenizer, NGramLM]) -> None:
    tokenizer, lm = reference
    ids = tokenizer.encode_ids(["She was appointed professor at the University of Ottawa in 2004."])[0]
    log_probs, entropies, _ = lm.token_scores([ids])
    for t in range(len(ids)):
        distribution = lm.next_token_probs(ids[:t])
        assert distribution.sum() == pytest.approx(1.0, abs=1e-9)
        assert np.log(distribution[ids[t]]) == pytest.approx(log_probs[t], abs=1e-9)
        assert -(distribution * np.log(distribution)).sum() == pytest.approx(entropies[t], abs=1e-9)


def test_lm_round_trips_through_bytes_with_identical_scores(
        wikipedia_human: list[str], reference: tuple[Tokenizer, NGramLM]) -> None:
    tokenizer, lm = reference
    ids = tokenizer.encode_ids(wikipedia_human[60:70])
    reloaded = NGramLM.from_bytes(lm.to_bytes())
    for expected, actual in zip(lm_signals(ids, lm), lm_signals(ids, reloaded), strict=True):
        assert np.array_equal(expected, actual)


def test_lm_rejects_ids_outside_its_vocabulary(reference: tuple[Tokenizer, NGramLM]) -> None:
    _, lm = reference
    with pytest.raises(NGramModelError, match="do not match"):
        lm.token_scores([np.array([1, lm.vocab_size + 5])])


def test_lm_signals_of_an_empty_text_are_nan(reference: tuple[Tokenizer, NGramLM]) -> None:
    tokenizer, lm = reference
    log_likelihood, binoculars = lm_signals(tokenizer.encode_ids(["", "One sentence."]), lm)
    assert np.isnan(log_likelihood[0]) and np.isnan(binoculars[0])
    assert np.isfinite(log_likelihood[1]) and np.isfinite(binoculars[1])


# ---- shared behaviour --------------------------------------------------------------------------------

def test_leading_space_and_surrounding_whitespace_cannot_change_any_signal(
        reference: tuple[Tokenizer, NGramLM]) -> None:
    tokenizer, lm = reference
    variants = [ARTICLE, " " + ARTICLE, "\n " + ARTICLE + "  \n"]
    signals = zero_shot_signals(variants, tokenizer, lm)
    for name in ZERO_SHOT_SIGNALS:
        assert signals[name][1] == signals[name][0] == signals[name][2], name
    style = stylometric_features(variants)
    assert np.array_equal(style[0], style[1]) and np.array_equal(style[0], style[2])


def test_zero_shot_signals_equal_the_single_signal_functions(
        wikipedia_human: list[str], reference: tuple[Tokenizer, NGramLM]) -> None:
    tokenizer, lm = reference
    texts = wikipedia_human[60:65]
    together = zero_shot_signals(texts, tokenizer, lm)
    assert np.array_equal(together["compression_ratio"], compression_ratio(texts))
    assert np.array_equal(together["ngram_repetition"], ngram_repetition(texts))
    assert np.array_equal(together["type_token_ratio"], type_token_ratio(texts))
    assert np.array_equal(together["lm_log_likelihood"], lm_log_likelihood(texts, tokenizer, lm))
    assert np.array_equal(together["lm_binoculars"], lm_binoculars(texts, tokenizer, lm))


# ---- stylometry -------------------------------------------------------------------------------------

def _column(rows: np.ndarray, name: str) -> np.ndarray:
    return rows[:, STYLOMETRIC_FEATURE_NAMES.index(name)]


def test_stylometric_features_measure_sentences_punctuation_and_word_classes() -> None:
    text = "I like tea. You like coffee, milk, and sugar! We all like water and the sea."
    rows = stylometric_features([text, ""])
    assert rows.shape == (2, len(STYLOMETRIC_FEATURE_NAMES))
    assert np.all(np.isnan(rows[1]))
    sentence_lengths = np.array([3, 6, 7])
    assert _column(rows, "sentence_length_mean")[0] == pytest.approx(sentence_lengths.mean())
    assert _column(rows, "sentence_length_std")[0] == pytest.approx(sentence_lengths.std())
    assert _column(rows, "comma_rate")[0] == pytest.approx(2 / 16)
    assert _column(rows, "question_exclamation_rate")[0] == pytest.approx(1 / 16)
    assert _column(rows, "first_person_rate")[0] == pytest.approx(2 / 16)     # I, We
    assert _column(rows, "second_person_rate")[0] == pytest.approx(1 / 16)    # You
    assert _column(rows, "function_word_rate")[0] == pytest.approx(7 / 16)    # i you and we all and the


def test_llm_marker_and_list_features_rise_on_chat_style_text() -> None:
    plain = "The bridge opened in 1932. It carries two lanes of traffic over the river."
    chatty = ("Additionally, this comprehensive guide will delve into crucial steps:\n"
              "1. Choose a pivotal tool.\n2. Foster a seamless workflow.\nOverall, it is a testament to care.")
    rows = stylometric_features([plain, chatty])
    for name in ("llm_marker_rate", "list_line_share", "discourse_opener_rate"):
        assert _column(rows, name)[1] > _column(rows, name)[0] == 0.0, name
