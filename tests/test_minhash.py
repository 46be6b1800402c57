"""udfs.minhash against datasketch, on real M4 text (no Spark)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from datasketch import MinHash

import udfs.minhash as minhash
from udfs.minhash import (
    SCHEMES,
    datasketch_hashfunc,
    estimated_jaccard,
    exact_jaccard,
    is_empty_signature,
    matching_tokens,
    minhash_signatures,
    permutations,
    shingle_hash,
    shingle_hashes,
    shingles,
)

M4_DIR = Path(__file__).resolve().parent.parent / "data" / "m4"


@pytest.fixture(scope="module")
def m4_texts() -> list[str]:
    """12 human and 12 machine texts from both M4 files (100-1500 words each), plus edge cases: empty, short,
    punctuation only, multi-byte characters, a combining accent, emoji (a separator), spacing."""
    texts = []
    for path in sorted(M4_DIR.glob("*.jsonl")):
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:6]]
        texts += [record["human_text"] for record in records] + [record["machine_text"] for record in records]
    return texts + [
        "",
        "Hi!",
        "three short words",
        "?!",
        "Ünïcödé “quotes” — and dashes",
        "x",
        "  leading, trailing   and\t\tinner   spaces  ",
        "日本語のテキストです。句読点も、あります。",
        "e\u0301te\u0301 😀 emoji 😀 stays out",
    ]


def datasketch_hashvalues(text: str, num_perm: int, seed: int, ngram: int, shingle: str, scheme: str) -> np.ndarray:
    sketch = MinHash(num_perm, seed=seed, hashfunc=datasketch_hashfunc(scheme), scheme=scheme)
    for shingle_bytes in shingles(text, ngram, shingle):
        sketch.update(shingle_bytes)
    return sketch.hashvalues


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("seed", [1, 42])
@pytest.mark.parametrize(("shingle", "ngram"), [("word", 5), ("char", 5)])
def test_signatures_equal_datasketch_minhash_on_m4_texts(m4_texts, scheme, seed, shingle, ngram):
    # Char shingles: every third M4 text and all edge cases, as datasketch's per-shingle
    # Python hash makes the reference slow.
    texts = m4_texts if shingle == "word" else m4_texts[:24:3] + m4_texts[24:]
    signatures = minhash_signatures(texts, num_perm=128, seed=seed, ngram=ngram, shingle=shingle, scheme=scheme)
    expected = np.stack([datasketch_hashvalues(text, 128, seed, ngram, shingle, scheme) for text in texts])
    assert signatures.dtype == expected.dtype
    np.testing.assert_array_equal(signatures, expected)


def test_signatures_equal_datasketch_update_batch_with_three_word_shingles(m4_texts):
    sketch = MinHash(64, seed=3, hashfunc=datasketch_hashfunc("affine32"))
    sketch.update_batch(shingles(m4_texts[0], ngram=3))
    np.testing.assert_array_equal(minhash_signatures(m4_texts[:1], num_perm=64, seed=3, ngram=3)[0], sketch.hashvalues)


def test_signatures_do_not_depend_on_batching_chunking_or_block_size(m4_texts, monkeypatch):
    whole_batch = minhash_signatures(m4_texts)
    one_by_one = np.concatenate([minhash_signatures([text]) for text in m4_texts])
    # Blocks of 7 shingles cut nearly every document into several blocks; chunks of ~3000 characters
    # group 1-3 texts.
    monkeypatch.setattr(minhash, "_BLOCK_BYTES", 7 * 128 * 4)
    monkeypatch.setattr(minhash, "_TEXT_CHARS_PER_CHUNK", 3000)
    small_blocks_and_chunks = minhash_signatures(m4_texts)
    assert len(minhash._text_chunks(m4_texts)) > 10
    np.testing.assert_array_equal(whole_batch, one_by_one)
    np.testing.assert_array_equal(whole_batch, small_blocks_and_chunks)
    assert minhash_signatures([]).shape == (0, 128)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_permutations_equal_datasketch_draws(scheme):
    a, b = permutations(128, 7, scheme)
    expected_a, expected_b = MinHash(128, seed=7, scheme=scheme).permutations
    np.testing.assert_array_equal(a, expected_a)
    np.testing.assert_array_equal(b, expected_b)


def test_signature_dtype_and_empty_value_follow_the_scheme():
    assert minhash_signatures([""], 16, scheme="affine32").dtype == np.uint32
    assert minhash_signatures([""], 16, scheme="affine64").dtype == np.uint64
    assert minhash_signatures([""], 16, scheme="legacy").dtype == np.uint64
    assert set(minhash_signatures([""], 16, scheme="affine32")[0].tolist()) == {2**32 - 1}
    assert set(minhash_signatures([""], 16, scheme="affine64")[0].tolist()) == {2**64 - 1}
    assert minhash_signatures(["some words"], 16, scheme="legacy").max() < 2**32


def test_empty_and_punctuation_only_texts_get_the_empty_signature():
    signatures = minhash_signatures(["", "  \n\t ", "?! -- ...", "ok"])
    assert shingles("?! -- ...") == []
    assert is_empty_signature(signatures).tolist() == [True, True, True, False]
    np.testing.assert_array_equal(signatures[0], MinHash(128, seed=1).hashvalues)


def test_text_shorter_than_ngram_has_one_shingle_of_all_its_words():
    assert shingles("Hello, world!", ngram=5) == [b"hello world"]
    assert shingles("abc", ngram=5, shingle="char") == [b"abc"]
    signatures = minhash_signatures(["Hello, world!", "hello   WORLD", "hello world again"])
    assert estimated_jaccard(signatures[0], signatures[1]) == 1.0
    assert estimated_jaccard(signatures[0], signatures[2]) == 0.0


def test_word_shingles_are_consecutive_token_runs():
    assert shingles("A b, c d.", ngram=3) == [b"a b c", b"b c d"]
    assert shingles("ab cd", ngram=3, shingle="char") == [b"ab ", b"b c", b" cd"]


def test_matching_ignores_case_punctuation_quote_style_and_spacing():
    variants = [
        'He said "don\'t stop" -- and left, quickly.',
        "he said “don’t stop” — and left quickly",
        "HE   SAID\n\ndon't stop; and LEFT (quickly)!",
    ]
    assert {tuple(matching_tokens(text)) for text in variants} == {
        (b"he", b"said", b"don", b"t", b"stop", b"and", b"left", b"quickly")
    }
    signatures = minhash_signatures(variants)
    assert (signatures == signatures[0]).all()


def test_tokens_keep_letters_with_accents_and_numbers():
    tokens = matching_tokens("Ünïcödé façade, 2024-05-01 ½")
    assert tokens == [token.encode() for token in ["ünïcödé", "façade", "2024", "05", "01", "½"]]


def test_ascii_fast_path_gives_the_same_tokens_as_the_unicode_path(m4_texts):
    for text in m4_texts:
        # A trailing non-ASCII letter sends the text down the Unicode path and adds one token.
        assert matching_tokens(text + " é")[:-1] == matching_tokens(text)


@pytest.mark.parametrize("shingle", ["word", "char"])
def test_batch_shingle_hashes_equal_the_per_shingle_function(m4_texts, shingle):
    hashes, counts = shingle_hashes(m4_texts, ngram=4, shingle=shingle)
    expected = [shingle_hash(s) for text in m4_texts for s in shingles(text, ngram=4, shingle=shingle)]
    assert counts.tolist() == [len(shingles(text, ngram=4, shingle=shingle)) for text in m4_texts]
    assert hashes.tolist() == expected


def test_distinct_shingles_of_m4_get_distinct_64_bit_hashes():
    texts = []
    for path in sorted(M4_DIR.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            texts += [record["human_text"], record["machine_text"]]
    hashes, _counts = shingle_hashes(texts)
    distinct_shingles = {s for text in texts for s in shingles(text)}
    assert len(distinct_shingles) > 200_000
    assert len(set(hashes.tolist())) == len(distinct_shingles)


def test_shingle_hash_depends_on_word_order_and_count():
    assert shingle_hash(b"a b c") != shingle_hash(b"c b a")
    assert shingle_hash(b"a a") != shingle_hash(b"a")
    assert shingle_hash(b"a b") == shingle_hash(b"a b")
    assert 0 <= shingle_hash(b"a b") < 2**64


def test_estimated_jaccard_is_close_to_exact_jaccard_on_edited_m4_text(m4_texts):
    words = m4_texts[0].split()[:300]
    rng = np.random.default_rng(5)
    edited_texts = []
    for edits in (3, 10, 25, 60):
        edited = list(words)
        for position in rng.choice(len(edited), size=edits, replace=False):
            edited[position] = "zzz"
        edited_texts.append(" ".join(edited))
    texts = [" ".join(words)] + edited_texts
    signatures = minhash_signatures(texts, num_perm=256)
    exact = [exact_jaccard(set(shingles(texts[0])), set(shingles(t))) for t in edited_texts]
    estimated = [estimated_jaccard(signatures[0], signature) for signature in signatures[1:]]
    assert exact[0] > 0.9 and exact[-1] < 0.5
    # 256 permutations: the standard error is at most 0.5 / 16 = 0.031; 0.1 is over 3 of them.
    assert np.abs(np.array(exact) - np.array(estimated)).max() < 0.1
    assert estimated == sorted(estimated, reverse=True)


def test_estimated_jaccard_equals_datasketch_jaccard(m4_texts):
    signatures = minhash_signatures(m4_texts[:2], num_perm=64, scheme="legacy")
    sketches = [MinHash(seed=1, hashvalues=signature, scheme="legacy") for signature in signatures]
    assert estimated_jaccard(signatures[0], signatures[1]) == sketches[0].jaccard(sketches[1])
    assert estimated_jaccard(signatures, signatures[::-1]).tolist() == [sketches[0].jaccard(sketches[1])] * 2


def test_exact_jaccard_of_sets():
    assert exact_jaccard({b"a", b"b"}, {b"b", b"c"}) == pytest.approx(1 / 3)
    assert exact_jaccard(set(), set()) == 0.0


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"scheme": "affine16"}, "scheme must be one of affine32, affine64, legacy"),
        ({"shingle": "sentence"}, "shingle must be one of word, char"),
        ({"ngram": 0}, "ngram must be at least 1"),
        ({"num_perm": 0}, "num_perm must be at least 1"),
    ],
)
def test_invalid_arguments_raise_value_errors_naming_the_argument(arguments, message):
    with pytest.raises(ValueError, match=message):
        minhash_signatures(["some text"], **arguments)
