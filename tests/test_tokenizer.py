import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from udfs.tokenizer import Tokenizer, TokenizerTrainingError, count_tokens, encode_ids, train_tokenizer

M4 = Path(__file__).resolve().parents[1] / "data" / "m4"


def _human_texts(domain: str, n: int) -> list[str]:
    with open(M4 / f"{domain}_llama2.jsonl", encoding="utf-8") as lines:
        return [json.loads(line)["human_text"].strip() for line in lines][:n]


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return _human_texts("wikipedia", 40)


@pytest.fixture(scope="module")
def model_bytes(corpus: list[str]) -> bytes:
    return train_tokenizer(corpus, vocab_size=2000)


def test_same_texts_and_seed_give_byte_identical_models(corpus: list[str], model_bytes: bytes) -> None:
    assert train_tokenizer(corpus, vocab_size=2000) == model_bytes


def test_encoding_then_decoding_gives_back_the_text(model_bytes: bytes) -> None:
    tokenizer = Tokenizer(model_bytes)
    texts = ["The museum opened in 1887 and was rebuilt after the fire.", "Ünïcödé and 日本語 fall back to bytes."]
    assert tokenizer.decode_ids(tokenizer.encode_ids(texts)) == texts


def test_model_loaded_from_bytes_or_pickle_encodes_like_the_original(model_bytes: bytes) -> None:
    tokenizer = Tokenizer(model_bytes)
    text = ["She was appointed professor of economics at the University of Groningen."]
    reloaded = Tokenizer.from_bytes(tokenizer.to_bytes())
    unpickled = pickle.loads(pickle.dumps(tokenizer))
    expected = tokenizer.encode_ids(text)[0]
    assert np.array_equal(reloaded.encode_ids(text)[0], expected)
    assert np.array_equal(unpickled.encode_ids(text)[0], expected)
    assert np.array_equal(encode_ids(text, model_bytes)[0], expected)


def test_small_corpus_yields_fewer_pieces_than_requested_instead_of_failing() -> None:
    tiny = ["a small corpus of two lines", "is enough to train a tokenizer"]
    tokenizer = Tokenizer(train_tokenizer(tiny, vocab_size=8000))
    assert 256 < tokenizer.vocab_size < 8000   # byte-fallback pieces plus what the corpus supports


def test_count_tokens_equals_encoded_lengths_and_zero_for_empty_text(model_bytes: bytes) -> None:
    texts = ["Heleen Mees is a Dutch economist.", "", "He played for Porto and Manchester United."]
    counts = count_tokens(texts, model_bytes)
    assert counts.dtype == np.int64
    assert counts.tolist() == [len(ids) for ids in encode_ids(texts, model_bytes)]
    assert counts[1] == 0 and counts[0] > 5


def test_training_on_blank_texts_raises_a_clear_error() -> None:
    with pytest.raises(TokenizerTrainingError, match="no non-blank line"):
        train_tokenizer(["", "   \n  "])
