"""Green-list watermark of Kirchenbauer et al. (2023, "A Watermark for Large Language Models").

A generator that holds a secret key splits the vocabulary before every token: the previous token
id and the key seed a pseudo-random permutation of the vocabulary, and its first
``gamma * vocab_size`` ids are the *green list*. Sampling adds ``delta`` to the logits of green
ids, so watermarked text holds more green tokens than the fraction ``gamma`` expected by chance.
Detection needs only the key: count green tokens and compute the one-proportion z-score
``z = (green - gamma T) / sqrt(T gamma (1 - gamma))`` over the ``T`` scored tokens (those with a
previous token; by default each distinct (previous, token) pair once).

The permutation is a keyed Feistel network over the id space with cycle-walking, evaluated with
numpy for whole arrays of (previous id, id) pairs, so detection is vectorised and the green list
has exactly ``round(gamma * vocab_size)`` ids, as in the paper.

This module scores (z) and, for tests and experiments, embeds; it never decides provenance.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import xxhash

from udfs.arrays import distinct_sorted
from udfs.ngram_lm import per_sequence_sum

_FEISTEL_ROUNDS = 4
_GOLDEN = 0x9E3779B97F4A7C15
_UINT64 = 1 << 64


class WatermarkParameterError(ValueError):
    """Watermark parameters out of range."""


def _mix64(values: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a cheap, well-distributed bijection of uint64 (wrapping arithmetic)."""
    values = values ^ (values >> np.uint64(30))
    values = values * np.uint64(0xBF58476D1CE4E5B9)
    values = values ^ (values >> np.uint64(27))
    values = values * np.uint64(0x94D049BB133111EB)
    return values ^ (values >> np.uint64(31))


def key_to_seed(key: str | bytes | int) -> int:
    """64-bit seed of a secret key (xxh64 of its UTF-8 bytes or decimal digits)."""
    if isinstance(key, int):
        key = str(key)
    if isinstance(key, str):
        key = key.encode("utf-8")
    return xxhash.xxh64_intdigest(key)


def _check(gamma: float, vocab_size: int) -> int:
    if not 0.0 < gamma < 1.0:
        raise WatermarkParameterError(f"gamma must lie strictly between 0 and 1, got {gamma}")
    if vocab_size < 2:
        raise WatermarkParameterError(f"vocab_size must be at least 2, got {vocab_size}")
    green_size = round(gamma * vocab_size)
    if not 0 < green_size < vocab_size:
        raise WatermarkParameterError(f"gamma {gamma} x vocab_size {vocab_size} leaves an empty green or red list")
    return green_size


def permuted_position(previous_ids: np.ndarray, token_ids: np.ndarray, key: str | bytes | int,
                      vocab_size: int) -> np.ndarray:
    """Position of each ``token_id`` in the vocabulary permutation seeded by (key, previous id).

    For a fixed previous id this is a bijection of ``[0, vocab_size)``: a balanced Feistel network
    over the smallest even number of bits covering the vocabulary, re-applied to any value that
    lands outside it (cycle-walking), which keeps the bijection on the vocabulary itself.
    """
    half_bits = max(1, math.ceil(math.log2(vocab_size) / 2))
    half_mask = np.uint64((1 << half_bits) - 1)
    shift = np.uint64(half_bits)
    previous = np.asarray(previous_ids, dtype=np.int64).astype(np.uint64)
    seeds = _mix64(previous * np.uint64(_GOLDEN) ^ np.uint64(key_to_seed(key)))
    round_seeds = [_mix64(seeds + np.uint64((r + 1) * _GOLDEN % _UINT64)) for r in range(_FEISTEL_ROUNDS)]
    position = np.asarray(token_ids, dtype=np.int64).astype(np.uint64)
    pending = np.arange(position.size)
    while pending.size:
        left, right = position[pending] >> shift, position[pending] & half_mask
        for round_seed in round_seeds:
            left, right = right, left ^ (_mix64(right ^ round_seed[pending]) & half_mask)
        position[pending] = (left << shift) | right
        pending = pending[position[pending] >= np.uint64(vocab_size)]
    return position.astype(np.int64)


def is_green(previous_ids: np.ndarray, token_ids: np.ndarray, key: str | bytes | int, gamma: float,
             vocab_size: int) -> np.ndarray:
    """Whether each ``token_id`` is on the green list chosen by its ``previous_id`` and ``key``."""
    green_size = _check(gamma, vocab_size)
    return permuted_position(previous_ids, token_ids, key, vocab_size) < green_size


def green_list(previous_id: int, key: str | bytes | int, gamma: float, vocab_size: int) -> np.ndarray:
    """The sorted green token ids after ``previous_id`` (exactly ``round(gamma * vocab_size)``)."""
    candidates = np.arange(vocab_size)
    return candidates[is_green(np.full(vocab_size, previous_id), candidates, key, gamma, vocab_size)]


def watermark_z_score(token_id_sequences: Sequence[Sequence[int]], key: str | bytes | int, gamma: float,
                      vocab_size: int, ignore_repeated_pairs: bool = True) -> np.ndarray:
    """One-proportion z-score of green tokens for each sequence (NaN when nothing can be scored).

    Every token after the first is scored against the green list of its predecessor; under the
    null hypothesis (text written without this key) each is green with probability ``gamma``, and
    ``z = (green - gamma T) / sqrt(T gamma (1 - gamma))``. Kirchenbauer et al. flag text at z > 4.

    ``ignore_repeated_pairs`` scores each distinct (previous, token) pair once per sequence, as
    recommended by Kirchenbauer et al. (2024, "On the reliability of watermarks for large language
    models"): a pair repeated k times is green or red k times together, which inflates the
    variance of z on ordinary human text (formulaic phrases, tables) beyond the formula's.
    """
    _check(gamma, vocab_size)
    sequences = [np.asarray(ids, dtype=np.int64).ravel() for ids in token_id_sequences]
    n = len(sequences)
    scored = np.fromiter((max(ids.size - 1, 0) for ids in sequences), dtype=np.int64, count=n)
    previous = np.concatenate([ids[:-1] for ids in sequences] or [np.zeros(0, np.int64)])
    token = np.concatenate([ids[1:] for ids in sequences] or [np.zeros(0, np.int64)])
    if token.size and (min(previous.min(), token.min()) < 0 or max(previous.max(), token.max()) >= vocab_size):
        raise WatermarkParameterError(f"a token id lies outside the vocabulary of {vocab_size}")
    if ignore_repeated_pairs:
        # One key per (sequence, previous, token) and one unique for the batch: sorted by sequence,
        # so each sequence's distinct pairs stay contiguous. np.unique(axis=0) per sequence made the
        # whole z-score 1.7x slower (docs/performance.md).
        if n * vocab_size * vocab_size >= 2**63:
            raise WatermarkParameterError(f"{n} sequences of a {vocab_size}-token vocabulary overflow 64-bit keys")
        sequence = np.repeat(np.arange(n, dtype=np.int64), scored)
        # distinct_sorted, not np.unique: its hash table took 2.0 of the 2.9 s of a 10,000-document batch.
        keys = distinct_sorted((sequence * vocab_size + previous) * vocab_size + token)
        previous, token = (keys // vocab_size) % vocab_size, keys % vocab_size
        scored = np.bincount(keys // (vocab_size * vocab_size), minlength=n)
    green = is_green(previous, token, key, gamma, vocab_size).astype(np.float64)
    green_counts = per_sequence_sum(green, scored)
    has_tokens = scored > 0
    z = np.full(n, np.nan)
    expected = gamma * scored[has_tokens]
    z[has_tokens] = (green_counts[has_tokens] - expected) / np.sqrt(expected * (1.0 - gamma))
    return z


def generate_watermarked(next_token_probs: Callable[[np.ndarray], np.ndarray], length: int,
                         key: str | bytes | int, gamma: float, delta: float, vocab_size: int,
                         prompt_ids: Sequence[int] = (), seed: int = 0) -> np.ndarray:
    """Sample ``length`` token ids from a generator, biased toward green tokens ("soft" watermark).

    ``next_token_probs(prefix_ids)`` returns the generator's distribution over the vocabulary
    after ``prefix_ids`` (prompt + tokens so far), e.g. :meth:`udfs.ngram_lm.NGramLM.next_token_probs`.
    Each step adds ``delta`` to the log-probability of the green list of the previous token
    (the last prompt token, or id ``vocab_size`` when there is no prompt) and samples.
    ``delta`` = 0 samples the unwatermarked generator with the same random stream.
    """
    green_size = _check(gamma, vocab_size)
    rng = np.random.default_rng(seed)
    prefix = [int(i) for i in prompt_ids]
    generated: list[int] = []
    candidates = np.arange(vocab_size)
    for _ in range(length):
        previous = prefix[-1] if prefix else vocab_size
        probs = np.asarray(next_token_probs(np.asarray(prefix, dtype=np.int64)), dtype=np.float64)
        green = permuted_position(np.full(vocab_size, previous), candidates, key, vocab_size) < green_size
        weights = probs * np.where(green, math.exp(delta), 1.0)
        token = int(rng.choice(vocab_size, p=weights / weights.sum()))
        prefix.append(token)
        generated.append(token)
    return np.asarray(generated, dtype=np.int64)
