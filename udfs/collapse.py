"""Model-collapse lab (issue #12): sample from an n-gram language model and measure what is lost
when each generation is trained on the previous generation's samples (pure numpy, no Spark, no MLflow).

* :func:`sample_sequences`: ancestral sampling with temperature from an :class:`~udfs.ngram_lm.NGramLM`,
  starting from the begin-of-sequence context the model scores with.
* Metrics of a generation against the human reference: :func:`perplexity` (of held-out human text
  under a generation's model), :func:`tail_coverage` of the reference's rare n-grams
  (:func:`tail_ngrams`), :func:`distinct_n`, :func:`vocabulary_size` and :func:`unigram_kl`.

All measures work on token ids (sentencepiece pieces), not words: ``udfs.diversity.distinct_n`` is the
word-level measure on texts. Nothing here decides anything; the loop that retrains and the job that
logs live in ``jobs``.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from udfs.ngram_lm import NGramLM


class CollapseLabError(ValueError):
    """A sampler or metric argument is out of range or the inputs do not fit the model."""


def sample_sequences(lm: NGramLM, n: int, length: int, temperature: float, seed: int,
                     eos_id: int | None = None, excluded_ids: Iterable[int] = ()) -> list[np.ndarray]:
    """``n`` token-id sequences of up to ``length`` ids drawn token by token from ``lm``.

    Each sequence starts from the context the model scores a document's first token with (``order - 1``
    copies of ``lm.begin_id``), so samples open the way training documents do. Each next id is drawn from
    ``p(w | context) ** (1 / temperature)``, renormalised over the ids that may be emitted: all of
    ``0 .. lm.vocab_size - 1`` except ``excluded_ids``. ``lm.begin_id`` lies outside that range and is
    never drawn. Pass the tokenizer's non-text ids as ``excluded_ids`` (``Tokenizer.control_ids``: 0
    ``<unk>``, 1 ``<s>``, 2 ``</s>`` for a model from ``train_tokenizer``); the model's smoothing gives them
    a little mass although no training document contains them.

    With ``eos_id``, a sequence ends when that id is drawn; the returned sequence stops before it (as
    ``Tokenizer.encode_ids`` output has no end id). Sequences are int32 arrays, like ``encode_ids``.

    Deterministic for a seed: sequence i is drawn with row i of ``np.random.default_rng(seed).random((n,
    length))``, so it does not depend on ``n`` or on the other sequences, and with ``eos_id`` it is the
    prefix of what the same call without ``eos_id`` draws. Per step, the predictive distribution is computed
    once per distinct context (200 x 150 ids over 2,000 pieces at order 3: 2-3 s on one core).
    """
    if n < 0 or length < 0:
        raise CollapseLabError(f"n and length must be >= 0, got n={n}, length={length}")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise CollapseLabError(f"temperature must be a finite number > 0, got {temperature}")
    allowed = np.ones(lm.vocab_size, dtype=bool)
    excluded = np.array(sorted({int(i) for i in excluded_ids}), dtype=np.int64)
    if excluded.size and (excluded[0] < 0 or excluded[-1] >= lm.vocab_size):
        raise CollapseLabError(f"excluded_ids must lie in [0, {lm.vocab_size}), got {excluded.tolist()}")
    allowed[excluded] = False
    if eos_id is not None and not (0 <= eos_id < lm.vocab_size and allowed[eos_id]):
        raise CollapseLabError(f"eos_id {eos_id} must be an id in [0, {lm.vocab_size}) that is not excluded")
    if not allowed.any():
        raise CollapseLabError("excluded_ids exclude the whole vocabulary: nothing can be sampled")

    uniforms = np.random.default_rng(seed).random((n, length))
    tokens = np.zeros((n, length), dtype=np.int32)
    lengths = np.full(n, length, dtype=np.int64)
    active = np.ones(n, dtype=bool)
    context_width = lm.order - 1
    for step in range(length):
        if not active.any():
            break
        rows = np.flatnonzero(active)
        contexts = tokens[rows, max(0, step - context_width):step]
        distinct_contexts, row_context = np.unique(contexts, axis=0, return_inverse=True)
        row_context = row_context.ravel()
        probs = lm.next_token_probs_batch(distinct_contexts)
        cumulative = np.cumsum(_tempered(probs, temperature, allowed), axis=1)
        # inverse CDF: the first id whose cumulative mass exceeds u * total; excluded ids add no mass
        targets = uniforms[rows, step] * cumulative[row_context, -1]
        drawn = np.count_nonzero(cumulative[row_context] <= targets[:, None], axis=1)
        tokens[rows, step] = drawn
        if eos_id is not None:
            ended = rows[drawn == eos_id]
            lengths[ended] = step
            active[ended] = False
    return [tokens[i, :lengths[i]].copy() for i in range(n)]


def _tempered(probs: np.ndarray, temperature: float, allowed: np.ndarray) -> np.ndarray:
    """Rows of ``probs ** (1 / temperature)`` with disallowed ids zeroed (unnormalised: the sampler
    scales its uniforms by each row's total). Computed in log space, shifted by each row's maximum, so
    that a low temperature does not underflow every entry to zero."""
    if temperature == 1.0:
        return np.where(allowed, probs, 0.0)
    log_probs = np.where(allowed, np.log(probs) / temperature, -np.inf)
    return np.exp(log_probs - log_probs.max(axis=1, keepdims=True))


def perplexity(lm: NGramLM, id_sequences: Sequence[np.ndarray]) -> float:
    """Corpus perplexity ``exp(-sum of log p(token | context) / number of tokens)`` over every token of
    every sequence (natural logs, contexts padded with ``lm.begin_id`` as in ``lm.token_scores``).

    Token-weighted: a long document counts in proportion to its tokens, unlike the mean of per-document
    perplexities (or of ``mean_log_likelihood``). Only the ids in the sequences are scored: no end-of-
    sequence event is added. Raises :class:`CollapseLabError` when there is no token.
    """
    log_probs, _, lengths = lm.token_scores(id_sequences)
    if lengths.sum() == 0:
        raise CollapseLabError("perplexity of no tokens is undefined: every sequence is empty")
    return float(np.exp(-log_probs.astype(np.float64).sum() / lengths.sum()))


def ngram_counts(id_sequences: Iterable[Sequence[int]], n: int) -> Counter:
    """How often each n-gram (a tuple of ``n`` int ids) occurs; n-grams never cross sequences."""
    if n < 1:
        raise CollapseLabError(f"n must be >= 1, got {n}")
    counts: Counter = Counter()
    for ids in id_sequences:
        ids = [int(i) for i in ids]
        counts.update(zip(*(ids[i:] for i in range(n)), strict=False))
    return counts


def tail_ngrams(reference_sequences: Iterable[Sequence[int]], n: int = 2, quantile: float = 0.1) -> set:
    """The reference's rare n-grams: the distinct n-grams whose reference count is at most ``c``, where
    ``c`` is the ``quantile``-quantile of the counts of the distinct n-grams (one count per distinct
    n-gram; numpy's ``"lower"`` method, so ``c`` is a count that occurs).

    The tail holds *at least* a ``quantile`` share of the distinct n-grams, and every n-gram tied at
    ``c``: on Zipfian text more than ``quantile`` of the distinct n-grams are singletons, so ``c`` = 1
    and the tail is every n-gram seen once (typically 60-80 % of distinct bigrams of a small corpus),
    not a tenth of them. An empty reference gives an empty set.
    """
    if not 0.0 <= quantile <= 1.0:
        raise CollapseLabError(f"quantile must lie in [0, 1], got {quantile}")
    counts = ngram_counts(reference_sequences, n)
    if not counts:
        return set()
    cutoff = np.quantile(np.fromiter(counts.values(), dtype=np.int64, count=len(counts)), quantile,
                         method="lower")
    return {ngram for ngram, count in counts.items() if count <= cutoff}


def tail_coverage(reference_tail: set, sample_sequences: Iterable[Sequence[int]], n: int = 2) -> float:
    """Share of ``reference_tail`` (from :func:`tail_ngrams` with the same ``n``) that occurs at least once
    in ``sample_sequences``: |tail ∩ sample n-grams| / |tail|. Raises :class:`CollapseLabError` for an
    empty tail, which has nothing to cover."""
    if not reference_tail:
        raise CollapseLabError("tail coverage of an empty tail is undefined: the reference has no n-grams")
    return len(reference_tail & ngram_counts(sample_sequences, n).keys()) / len(reference_tail)


def distinct_n(id_sequences: Iterable[Sequence[int]], n: int) -> float:
    """Distinct n-grams / total n-grams over all sequences together (n-grams do not cross sequences);
    0.0 when there is no n-gram."""
    counts = ngram_counts(id_sequences, n)
    total = sum(counts.values())
    return len(counts) / total if total else 0.0


def vocabulary_size(id_sequences: Iterable[Sequence[int]]) -> int:
    """Number of distinct token ids used in all sequences together."""
    used: set[int] = set()
    for ids in id_sequences:
        used.update(np.unique(np.asarray(ids, dtype=np.int64)).tolist())
    return len(used)


def unigram_kl(reference_sequences: Iterable[Sequence[int]], sample_sequences: Iterable[Sequence[int]],
               vocab_size: int, alpha: float = 1.0) -> float:
    """KL(P_reference || P_sample) = sum_w P_ref(w) log(P_ref(w) / P_sample(w)) in nats, over ids
    ``0 .. vocab_size - 1``, with add-``alpha`` smoothing: ``P(w) = (count(w) + alpha) / (tokens + alpha
    * vocab_size)``.

    Reference first because collapse loses the tails: a token frequent in human text and rare in the
    samples weighs by its reference probability, while a token the samples over-use but the reference
    barely has weighs little. ``alpha`` > 0 keeps the divergence finite. 0.0 for identical counts.
    """
    if not alpha > 0:
        raise CollapseLabError(f"alpha must be > 0 to keep the divergence finite, got {alpha}")
    reference = _smoothed_unigram(reference_sequences, vocab_size, alpha)
    sample = _smoothed_unigram(sample_sequences, vocab_size, alpha)
    return float(np.sum(reference * (np.log(reference) - np.log(sample))))


def _smoothed_unigram(id_sequences: Iterable[Sequence[int]], vocab_size: int, alpha: float) -> np.ndarray:
    counts = np.zeros(vocab_size, dtype=np.float64)
    for ids in id_sequences:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
            raise CollapseLabError(f"token ids must lie in [0, {vocab_size}), got {ids.min()}..{ids.max()}")
        counts += np.bincount(ids, minlength=vocab_size)
    return (counts + alpha) / (counts.sum() + alpha * vocab_size)
