"""MinHash signatures of documents, for near-duplicate detection: numpy in, numpy out.

This module only *measures*: it turns texts into shingle sets and shingle sets into MinHash signatures,
and estimates Jaccard similarity. It knows nothing of Spark (``udfs/spark.py`` wraps it) and decides
nothing: clustering lives in ``udfs/lsh.py`` and thresholds in ``conf/``.

Every signature equals, bit for bit, the ``hashvalues`` of ``datasketch.MinHash(num_perm, seed=seed,
hashfunc=datasketch_hashfunc(scheme), scheme=scheme)`` after ``update`` with the bytes of :func:`shingles`;
the tests check that on real text. The batch path never makes a Python object per word or shingle: the
normalised bytes of a whole batch go into one numpy array, every shingle is a byte range of it, hashed with
a polynomial whose prefix sums give any range's hash in O(1) (:func:`shingle_hash` is the same function on
one shingle), and the permutations run over the whole batch's shingle hashes in cache-sized blocks.

Matching normalisation (applied on top of ``udfs.text.normalize_text``, and only for matching):
the text is lowercased with ``str.lower`` and split into *tokens*, the maximal runs of letters, marks and
numbers. Whitespace, punctuation, symbols, control and format characters (Unicode Z*, P*, S*, Cc, Cf) only
separate tokens, so ``"Hello, World!"`` and ``"hello world"`` have the same shingles,
and so do texts that differ only in quote style or dashes.

Shingles:

- ``"word"``: every run of ``ngram`` consecutive tokens. A document with fewer than ``ngram`` tokens
  (but at least one) has exactly one shingle made of all its tokens, so short documents still get a
  signature and match only documents with the same few tokens.
- ``"char"``: every run of ``ngram`` consecutive characters (code points) of the tokens joined by one
  space; fewer than ``ngram`` characters give one shingle of them all.

A text with no token (empty, or only punctuation) has no shingle. Its signature is datasketch's empty
MinHash: every value is the scheme's maximum hash (``2**32 - 1`` for ``"affine32"`` and ``"legacy"``,
``2**64 - 1`` for ``"affine64"``). Two such signatures are equal, so :mod:`udfs.lsh` leaves empty
documents out of near-duplicate clustering (:func:`is_empty_signature`).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Literal

import numpy as np

Scheme = Literal["affine32", "affine64", "legacy"]
ShingleKind = Literal["word", "char"]
SCHEMES: tuple[Scheme, ...] = ("affine32", "affine64", "legacy")
SHINGLE_KINDS: tuple[ShingleKind, ...] = ("word", "char")

_MASK32 = (1 << 32) - 1
_MASK64 = (1 << 64) - 1
_MERSENNE_PRIME = (1 << 61) - 1
# Base of the polynomial shingle hash: odd, so invertible mod 2**64 (range hashes need its inverse), with well
# spread bits (the 64-bit golden ratio).
_POLYNOMIAL_BASE = 0x9E3779B97F4A7C15
_POLYNOMIAL_BASE_INVERSE = pow(_POLYNOMIAL_BASE, -1, 1 << 64)
# Powers of the base are cached for this many byte positions (2 x 8 MiB): 4 bytes for every character of a
# chunk (_TEXT_CHARS_PER_CHUNK), the UTF-8 maximum. Only a longer single text computes its own (~3 ns a byte).
_CACHED_POWERS = 1 << 20

# The empty-signature value and the storage dtype of each datasketch permutation scheme.
_MAX_HASH: dict[str, int] = {"affine32": _MASK32, "affine64": _MASK64, "legacy": _MASK32}
_SIGNATURE_DTYPE: dict[str, type[np.unsignedinteger]] = {
    "affine32": np.uint32,
    "affine64": np.uint64,
    "legacy": np.uint64,
}
# Bytes of permuted values held at once (num_perm x shingles). Measured on ~180-word documents (AMD EPYC,
# 32 MiB L3): 4-8 MiB blocks were fastest; 1 MiB blocks ~2x slower (numpy's per-call overhead, paid for only
# ~20 documents a block) and 32 MiB blocks ~2.5x slower (out of cache for the several passes).
_BLOCK_BYTES = 1 << 22
# Characters of text turned into shingle hashes at once (a single longer text is a chunk of its own): with
# ~50 bytes of arrays per character, ~15 MB whatever the batch size, and ~250 typical documents per chunk,
# enough that numpy's per-call overhead is small.
_TEXT_CHARS_PER_CHUNK = 1 << 18
# Separator between documents in a batch's byte array; spaces separate tokens (see _normalised_bytes).
_DOCUMENT_SEPARATOR = b"\n"

# One bytes.translate table does the ASCII part of the normalisation: A-Z to a-z, and every other ASCII
# character that is not a letter or digit to a space.
_ASCII_NORMALISATION = bytes.maketrans(
    bytes(range(128)),
    bytes(ord(chr(c).lower()) if chr(c).isalnum() else 0x20 for c in range(128)),
)


def _check_choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


# Unicode categories that separate tokens: punctuation, symbols, separators, control and format characters.
# Unassigned, private-use and surrogate code points (Cn, Co, Cs) stay inside tokens.
_SEPARATOR_CATEGORIES = frozenset(
    {"Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So", "Zs", "Zl", "Zp", "Cc", "Cf"}
)
_NON_ASCII_CHAR = re.compile("[^\x00-\x7f]")


@lru_cache(maxsize=65536)
def _is_separator(char: str) -> bool:
    return unicodedata.category(char) in _SEPARATOR_CATEGORIES


def _normalised_bytes(text: str) -> bytes:
    """UTF-8 of the lowercased text in which every separator character is a space (0x20), so tokens are the
    runs of other bytes, all of them above 0x20.

    ASCII texts need one ``bytes.translate`` (also the lowercasing: ~2x faster than ``str.lower`` first).
    Other texts are lowercased with ``str.lower`` and their non-ASCII separators (curly quotes, dashes, ...)
    replaced one distinct character at a time; a regex class of all Unicode separators measured ~30x slower."""
    if text.isascii():
        return text.encode("ascii").translate(_ASCII_NORMALISATION)
    lowered = text.lower()
    for char in set(_NON_ASCII_CHAR.findall(lowered)):
        if _is_separator(char):
            lowered = lowered.replace(char, " ")
    return lowered.encode("utf-8").translate(_ASCII_NORMALISATION)


def matching_tokens(text: str) -> list[bytes]:
    """Lowercased tokens (UTF-8) of ``text``: maximal runs of characters that are not punctuation,
    symbols, whitespace, control or format characters (Unicode P*, S*, Z*, Cc, Cf)."""
    return _normalised_bytes(text).split()


def shingles(text: str, ngram: int = 5, shingle: ShingleKind = "word") -> list[bytes]:
    """The shingles of ``text`` as UTF-8 bytes, in order and with repeats (see the module docstring).

    Word shingles are tokens joined by one space; char shingles are ``ngram`` characters of the tokens
    joined by one space. These are the bytes to give datasketch, and the set for exact Jaccard."""
    _check_ngram(ngram)
    _check_choice("shingle", shingle, SHINGLE_KINDS)
    tokens = matching_tokens(text)
    if shingle == "word":
        if len(tokens) < ngram:
            return [b" ".join(tokens)] if tokens else []
        return [b" ".join(tokens[i : i + ngram]) for i in range(len(tokens) - ngram + 1)]
    joined = b" ".join(tokens).decode("utf-8")
    if len(joined) < ngram:
        return [joined.encode("utf-8")] if joined else []
    return [joined[i : i + ngram].encode("utf-8") for i in range(len(joined) - ngram + 1)]


def _check_ngram(ngram: int) -> None:
    if ngram < 1:
        raise ValueError(f"ngram must be at least 1; got {ngram}")


def _fmix64_int(value: int) -> int:
    """MurmurHash3's 64-bit finalizer on a Python int: a bijection whose every output bit depends on
    every input bit, so any slice of the shingle hash (datasketch's 32-bit schemes take the low half)
    is well spread."""
    value ^= value >> 33
    value = (value * 0xFF51AFD7ED558CCD) & _MASK64
    value ^= value >> 33
    value = (value * 0xC4CEB9FE1A85EC53) & _MASK64
    return value ^ (value >> 33)


def fmix64(values: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer, element-wise on uint64 (a new array): the vectorised
    :func:`_fmix64_int`."""
    values = values ^ (values >> np.uint64(33))
    values *= np.uint64(0xFF51AFD7ED558CCD)
    values ^= values >> np.uint64(33)
    values *= np.uint64(0xC4CEB9FE1A85EC53)
    values ^= values >> np.uint64(33)
    return values


def _fmix32(values: np.ndarray) -> np.ndarray:
    values = values ^ (values >> np.uint32(16))
    values *= np.uint32(0x85EBCA6B)
    values ^= values >> np.uint32(13)
    values *= np.uint32(0xC2B2AE35)
    values ^= values >> np.uint32(16)
    return values


def shingle_hash(shingle_bytes: bytes) -> int:
    """64-bit hash of one shingle (word or char), the value :func:`minhash_signatures` computes in bulk:
    the polynomial ``sum(byte[j] * base**(len - 1 - j)) mod 2**64`` over its bytes, then the MurmurHash3
    finalizer. Slow in Python (a loop over bytes): it is for datasketch and the tests.

    A polynomial rather than xxh3 because the hash of any byte range follows from two prefix sums, so a
    batch is hashed without a Python object per shingle or word: 1.7x faster end to end (~190-word texts,
    affine32) than xxh3 per word combined in numpy. Not collision-resistant against crafted input; on text,
    the 280K distinct 5-word shingles of the M4 sample get 280K distinct hashes (a test checks it)."""
    combined = 0
    for byte in shingle_bytes:
        combined = (combined * _POLYNOMIAL_BASE + byte) & _MASK64
    return _fmix64_int(combined)


def datasketch_hashfunc(scheme: Scheme = "affine32") -> Callable[[bytes], int]:
    """The ``hashfunc`` to give ``datasketch.MinHash`` so that it reproduces :func:`minhash_signatures`.

    ``"affine32"`` takes 32-bit input hashes: the low half of the 64-bit shingle hash."""
    _check_choice("scheme", scheme, SCHEMES)
    if scheme != "affine32":
        return shingle_hash
    return lambda shingle_bytes: shingle_hash(shingle_bytes) & _MASK32


@lru_cache(maxsize=32)
def permutations(num_perm: int, seed: int, scheme: Scheme) -> tuple[np.ndarray, np.ndarray]:
    """The ``(a, b)`` parameters datasketch draws for ``MinHash(num_perm, seed=seed, scheme=scheme)``,
    in the scheme's dtype. Read-only: they are cached and shared."""
    _check_choice("scheme", scheme, SCHEMES)
    if num_perm < 1:
        raise ValueError(f"num_perm must be at least 1; got {num_perm}")
    gen = np.random.RandomState(seed)
    if scheme == "legacy":
        # datasketch draws a and b alternately, one permutation at a time; the order fixes the values.
        pairs = [
            (gen.randint(1, _MERSENNE_PRIME, dtype=np.uint64), gen.randint(0, _MERSENNE_PRIME, dtype=np.uint64))
            for _ in range(num_perm)
        ]
        a, b = np.array(pairs, dtype=np.uint64).T.copy()
    else:
        width = 32 if scheme == "affine32" else 64
        dtype = _SIGNATURE_DTYPE[scheme]
        a = gen.randint(0, 1 << (width - 1), num_perm, dtype=dtype) * dtype(2) + dtype(1)
        b = gen.randint(0, 1 << width, num_perm, dtype=dtype)
    a.flags.writeable = False
    b.flags.writeable = False
    return a, b


def _powers(base: int, count: int) -> np.ndarray:
    """``base**0 .. base**(count - 1)`` mod 2**64 (uint64; the cumulative product wraps as intended)."""
    factors = np.full(count, base, dtype=np.uint64)
    factors[:1] = 1
    return np.cumprod(factors, dtype=np.uint64)


@lru_cache(maxsize=1)
def _cached_powers() -> tuple[np.ndarray, np.ndarray]:
    powers = (_powers(_POLYNOMIAL_BASE, _CACHED_POWERS), _powers(_POLYNOMIAL_BASE_INVERSE, _CACHED_POWERS))
    for array in powers:
        array.flags.writeable = False
    return powers


def _base_powers(count: int) -> tuple[np.ndarray, np.ndarray]:
    """Powers of the base and of its inverse, at least ``count`` of each."""
    if count <= _CACHED_POWERS:
        return _cached_powers()
    return _powers(_POLYNOMIAL_BASE, count), _powers(_POLYNOMIAL_BASE_INVERSE, count)


def _shingle_ranges(
    starts: np.ndarray, ends: np.ndarray, units_per_doc: np.ndarray, first_unit: np.ndarray, ngram: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Byte ranges ``[begin, end)`` of every shingle of the batch, document after document, and the shingle
    count of each document, given the byte range of every unit (token or character) and where each
    document's units begin. Shingle ``j`` of a document spans units ``j .. j + ngram - 1``; a document with
    fewer than ``ngram`` units has one shingle of all of them; one without units has none."""
    shingle_counts = np.where(units_per_doc >= ngram, units_per_doc - ngram + 1, np.minimum(units_per_doc, 1))
    first_shingle = np.cumsum(shingle_counts) - shingle_counts
    total = int(shingle_counts.sum())
    first_of_shingle = np.arange(total, dtype=np.int64)
    first_of_shingle += np.repeat(first_unit - first_shingle, shingle_counts)
    if np.all(units_per_doc[shingle_counts > 0] >= ngram):
        last_of_shingle = first_of_shingle + (ngram - 1)
    else:
        last_of_shingle = first_of_shingle + np.repeat(np.minimum(units_per_doc, ngram) - 1, shingle_counts)
    return starts[first_of_shingle], ends[last_of_shingle], shingle_counts


def shingle_hashes(
    texts: Sequence[str], ngram: int = 5, shingle: ShingleKind = "word"
) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of every shingle of every text (uint64, document after document, with repeats) and the
    shingle count of each text: ``shingle_hashes([t], n, kind)[0][i] == shingle_hash(shingles(t, n, kind)[i])``.

    The batch becomes one byte array in which a space separates tokens and a newline documents; runs of
    spaces are squeezed to one (the bytes of ``b" ".join(tokens)``). Every shingle is then a byte range, and
    with prefix sums ``P[k] = sum(byte[j] * inverse**j for j < k)`` its polynomial hash is
    ``base**(end - 1) * (P[end] - P[begin])``, all mod 2**64."""
    _check_ngram(ngram)
    _check_choice("shingle", shingle, SHINGLE_KINDS)
    if not texts:
        return np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.int64)
    raw = np.frombuffer(
        _DOCUMENT_SEPARATOR.join([_normalised_bytes(text) for text in texts]) + _DOCUMENT_SEPARATOR, dtype=np.uint8
    )
    # Keep token bytes, document separators, and the first space after each token.
    in_token = raw > 0x20
    keep = raw != 0x20
    keep[1:] |= in_token[:-1]
    squeezed = raw[keep]
    in_token = squeezed > 0x20
    token_starts = np.flatnonzero(in_token & ~np.r_[False, in_token[:-1]])
    token_ends = np.flatnonzero(in_token & ~np.r_[in_token[1:], False]) + 1
    if len(token_starts) == 0:
        return np.empty(0, dtype=np.uint64), np.zeros(len(texts), dtype=np.int64)
    doc_starts = np.r_[0, np.flatnonzero(squeezed == _DOCUMENT_SEPARATOR[0])[:-1] + 1]
    first_token = np.searchsorted(token_starts, doc_starts)
    tokens_per_doc = np.diff(np.r_[first_token, len(token_starts)])
    if shingle == "word":
        begins, ends, shingle_counts = _shingle_ranges(token_starts, token_ends, tokens_per_doc, first_token, ngram)
    else:
        # A character's bytes end where the next character's start; a document's characters end with its
        # last token (the space or separator after it starts the next character).
        char_starts = np.flatnonzero((squeezed & 0xC0) != 0x80)  # every byte but UTF-8 continuation bytes
        char_ends = np.r_[char_starts[1:], len(squeezed)]
        has_tokens = tokens_per_doc > 0
        last_token = np.maximum(first_token + tokens_per_doc - 1, 0)
        first_char = np.searchsorted(char_starts, token_starts[np.where(has_tokens, first_token, 0)])
        chars_per_doc = np.where(has_tokens, np.searchsorted(char_starts, token_ends[last_token]) - first_char, 0)
        begins, ends, shingle_counts = _shingle_ranges(char_starts, char_ends, chars_per_doc, first_char, ngram)
    powers, inverse_powers = _base_powers(len(squeezed) + 1)
    prefix = np.zeros(len(squeezed) + 1, dtype=np.uint64)
    np.cumsum(squeezed * inverse_powers[: len(squeezed)], out=prefix[1:])
    return fmix64(powers[ends - 1] * (prefix[ends] - prefix[begins])), shingle_counts


def _permutation_input(shingle_hashes: np.ndarray, scheme: Scheme) -> np.ndarray:
    """What datasketch does to a hashfunc value before permuting: the 32-bit schemes' hashfunc returns
    the low half (``datasketch_hashfunc``); the affine schemes pre-mix with the MurmurHash3 finalizer."""
    if scheme == "affine32":
        return _fmix32(shingle_hashes.astype(np.uint32))
    if scheme == "affine64":
        return fmix64(shingle_hashes)
    return shingle_hashes


def _permute_block(
    hashes: np.ndarray, a: np.ndarray, b: np.ndarray, scheme: Scheme, out: np.ndarray, scratch: np.ndarray
) -> None:
    """``out[k, i]`` = permutation ``k`` of ``hashes[i]``, exactly as datasketch computes it.

    Permutations along rows and shingles along columns: the per-document minimum is then a reduceat along
    contiguous memory, ~5x faster than reducing across rows."""
    np.multiply(a[:, None], hashes[None, :], out=out)
    out += b[:, None]
    if scheme != "legacy":
        return  # affine: wraparound of the scheme's dtype is the modulo 2**width
    # legacy: (a*h + b) % (2**61 - 1), with a*h + b already wrapped mod 2**64 as in datasketch, then the low
    # 32 bits. x mod (2**61 - 1) by folding instead of dividing (64-bit division is ~10x slower):
    # y = (x & P) + (x >> 61) is congruent to x and at most P + 7; subtract P once when y >= P, i.e. when
    # y + 1 reaches 2**61, which adding (y + 1) >> 61 and masking with P does.
    np.right_shift(out, np.uint64(61), out=scratch)
    out &= np.uint64(_MERSENNE_PRIME)
    out += scratch
    np.add(out, np.uint64(1), out=scratch)
    scratch >>= np.uint64(61)
    out += scratch
    out &= np.uint64(_MASK32)  # & P is implied: P's low 32 bits are all ones


def _min_over_documents(
    permutation_input: np.ndarray, shingle_counts: np.ndarray, a: np.ndarray, b: np.ndarray, scheme: Scheme
) -> np.ndarray:
    """Per-document minimum of every permutation, computed over blocks of shingles that may cut documents;
    a document split over blocks takes the minimum of its pieces."""
    num_perm = len(a)
    dtype = _SIGNATURE_DTYPE[scheme]
    signatures = np.full((len(shingle_counts), num_perm), _MAX_HASH[scheme], dtype=dtype)
    nonempty_docs = np.flatnonzero(shingle_counts)
    doc_starts = (np.cumsum(shingle_counts) - shingle_counts)[nonempty_docs]
    total_shingles = len(permutation_input)
    shingles_per_block = max(1, _BLOCK_BYTES // (num_perm * np.dtype(dtype).itemsize))
    buffer = np.empty((num_perm, min(shingles_per_block, total_shingles)), dtype=dtype)
    scratch = np.empty_like(buffer) if scheme == "legacy" else buffer
    for block_start in range(0, total_shingles, shingles_per_block):
        block_end = min(block_start + shingles_per_block, total_shingles)
        width = block_end - block_start
        first = np.searchsorted(doc_starts, block_start, side="right") - 1
        last = np.searchsorted(doc_starts, block_end, side="left")
        segment_starts = np.maximum(doc_starts[first:last] - block_start, 0)
        block = buffer[:, :width]
        _permute_block(permutation_input[block_start:block_end], a, b, scheme, block, scratch[:, :width])
        block_minima = np.minimum.reduceat(block, segment_starts, axis=1).T
        docs = nonempty_docs[first:last]
        signatures[docs] = np.minimum(signatures[docs], block_minima)
    return signatures


def minhash_signatures(
    texts: Sequence[str],
    num_perm: int = 128,
    seed: int = 1,
    ngram: int = 5,
    shingle: ShingleKind = "word",
    scheme: Scheme = "affine32",
) -> np.ndarray:
    """MinHash signatures of a batch of texts, shape ``(len(texts), num_perm)``.

    Equal to datasketch's ``MinHash(num_perm, seed=seed, hashfunc=datasketch_hashfunc(shingle, scheme),
    scheme=scheme).hashvalues`` after updating with ``shingles(text, ngram, shingle)``. Dtype: uint32 for
    ``"affine32"``, uint64 for ``"affine64"`` and ``"legacy"`` (whose values fit 32 bits).

    ``"affine32"``, datasketch 2's default, is the default here too: it is unbiased, half the storage of
    the 64-bit schemes, and the fastest. ``"legacy"`` reproduces datasketch < 2.0 signatures (Mersenne
    prime permutations); ``"affine64"`` is for sets of ~10**8 shingles, far beyond one document.
    Texts are processed in chunks of ~256K characters, so memory stays ~50 MB beyond the signatures."""
    _check_choice("scheme", scheme, SCHEMES)
    a, b = permutations(num_perm, seed, scheme)
    chunks = []
    for chunk_start, chunk_end in _text_chunks(texts):
        hashes, shingle_counts = shingle_hashes(texts[chunk_start:chunk_end], ngram, shingle)
        chunks.append(_min_over_documents(_permutation_input(hashes, scheme), shingle_counts, a, b, scheme))
    if not chunks:
        return np.empty((0, num_perm), dtype=_SIGNATURE_DTYPE[scheme])
    return np.concatenate(chunks)


def _text_chunks(texts: Sequence[str]) -> list[tuple[int, int]]:
    """``(start, end)`` ranges of consecutive texts with about ``_TEXT_CHARS_PER_CHUNK`` characters each
    (a longer text is a chunk on its own)."""
    ranges = []
    start = 0
    chars = 0
    for position, text in enumerate(texts):
        chars += len(text)
        if chars >= _TEXT_CHARS_PER_CHUNK:
            ranges.append((start, position + 1))
            start, chars = position + 1, 0
    if start < len(texts):
        ranges.append((start, len(texts)))
    return ranges


def is_empty_signature(signatures: np.ndarray, scheme: Scheme = "affine32") -> np.ndarray:
    """True for each signature row of a text without shingles (all values at the scheme's maximum)."""
    return np.all(signatures == _MAX_HASH[scheme], axis=-1)


def estimated_jaccard(signature_a: np.ndarray, signature_b: np.ndarray) -> np.ndarray | float:
    """Fraction of equal positions, as datasketch's ``MinHash.jaccard``. Accepts single signatures or
    equally shaped stacks of them (one estimate per row). Two empty signatures estimate 1.0."""
    if signature_a.shape != signature_b.shape:
        raise ValueError(f"signatures differ in shape: {signature_a.shape} vs {signature_b.shape}")
    estimate = np.mean(signature_a == signature_b, axis=-1)
    return float(estimate) if estimate.ndim == 0 else estimate


def exact_jaccard(shingles_a: set[bytes], shingles_b: set[bytes]) -> float:
    """|A & B| / |A | B| of two shingle sets; 0.0 when both are empty (empty texts are not duplicates)."""
    union = len(shingles_a | shingles_b)
    return len(shingles_a & shingles_b) / union if union else 0.0
