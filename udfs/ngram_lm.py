"""Interpolated Kneser–Ney n-gram language model over token ids (numpy only, no Spark, no weights).

Used as the *human reference* model of the zero-shot detectors: it is trained on human text only
and scores how probable a document's tokens are (mean log-likelihood) and how that compares with
the model's own expected surprisal (a Binoculars-like ratio).

Design, for speed on the hot path: every n-gram is packed into one int64 key (``bits`` bits per
token id), the tables are sorted key arrays with a hash index beside them, so scoring a whole
batch is a handful of array lookups over the concatenated token stream, not a Python loop per token. The
entropy of the predictive distribution at every stored context is computed once at training time
(in closed form, without summing over the vocabulary per context), so the Binoculars-like score
costs one extra lookup per token.

The model only scores; it never decides whether a document is synthetic.
"""
from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_FORMAT_VERSION = 1


class NGramModelError(ValueError):
    """An n-gram model cannot be trained or loaded with the given arguments."""


@dataclass(frozen=True)
class _OrderTable:
    """Interpolation terms of one order k >= 2.

    For a stored context ``h`` (k-1 ids) and next id ``w``:
    ``p_k(w|h) = alpha[h, w] + backoff_weight[h] * p_{k-1}(w|h')`` where ``h'`` drops the oldest id.
    """

    ngram_keys: np.ndarray       # sorted int64 keys of the k-grams seen
    alpha: np.ndarray            # discounted own mass of each k-gram
    context_keys: np.ndarray     # sorted int64 keys of the (k-1)-id contexts seen
    backoff_weight: np.ndarray   # interpolation weight given to the lower order, per context
    neg_entropy: np.ndarray      # sum_w p log p of the full predictive distribution, per context


def _lookup(sorted_keys: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if sorted_keys.size == 0:
        return np.zeros(queries.shape, dtype=np.int64), np.zeros(queries.shape, dtype=bool)
    index = np.minimum(np.searchsorted(sorted_keys, queries), sorted_keys.size - 1)
    return index, sorted_keys[index] == queries


_MIX_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)


class _KeyIndex:
    """Open-addressing hash index over unique int64 keys, queried for a whole array at once.

    Lookups are the hot path of scoring: a binary search costs ~log2(n) dependent memory reads per
    query, linear probing at load factor <= 0.5 about 1.5, which makes batch scoring ~2x faster.
    Built from the sorted key arrays when a model is loaded; never serialised.
    """

    def __init__(self, keys: np.ndarray) -> None:
        self.keys = keys
        self.mask = (1 << max(1, math.ceil(math.log2(max(2 * keys.size, 2))))) - 1
        self.slots = np.full(self.mask + 1, -1, dtype=np.int64)
        pending = np.arange(keys.size, dtype=np.int64)
        slot = self._home(keys)
        while pending.size:
            free = self.slots[slot] == -1
            # several pending keys may want the same free slot: the first of each claims it
            _, first = np.unique(slot[free], return_index=True)
            claimed = np.flatnonzero(free)[first]
            self.slots[slot[claimed]] = pending[claimed]
            still_pending = np.ones(pending.size, dtype=bool)
            still_pending[claimed] = False
            pending = pending[still_pending]
            slot = (slot[still_pending] + 1) & self.mask

    def _home(self, keys: np.ndarray) -> np.ndarray:
        mixed = keys.astype(np.uint64) * _MIX_MULTIPLIER
        return ((mixed ^ (mixed >> np.uint64(31))) & np.uint64(self.mask)).astype(np.int64)

    def lookup(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(index into ``keys``, found) for each query; index is 0 where not found."""
        index = np.zeros(queries.shape, dtype=np.int64)
        found = np.zeros(queries.shape, dtype=bool)
        active = np.arange(queries.size if self.keys.size else 0, dtype=np.int64)
        slot = self._home(queries[active])
        while active.size:
            candidate = self.slots[slot]
            occupied = candidate >= 0
            hit = occupied & (self.keys[np.where(occupied, candidate, 0)] == queries[active])
            index[active[hit]] = candidate[hit]
            found[active[hit]] = True
            probe_on = occupied & ~hit
            active = active[probe_on]
            slot = (slot[probe_on] + 1) & self.mask
        return index, found


def _discount(counts: np.ndarray) -> float:
    """Kneser–Ney absolute discount D = n1 / (n1 + 2 n2) (Ney et al. 1994), kept inside
    [0.05, 0.95] so that a tiny corpus with no count-of-count statistics still smooths."""
    n1 = float(np.count_nonzero(counts == 1))
    n2 = float(np.count_nonzero(counts == 2))
    if n1 + 2 * n2 == 0:
        return 0.5
    return min(max(n1 / (n1 + 2 * n2), 0.05), 0.95)


def _group_sums(values: np.ndarray, group_starts: np.ndarray, total: int) -> np.ndarray:
    """Sums of ``values`` over contiguous groups starting at ``group_starts`` (all non-empty)."""
    cumulative = np.concatenate(([0.0], np.cumsum(values, dtype=np.float64)))
    ends = np.append(group_starts[1:], total)
    return cumulative[ends] - cumulative[group_starts]


def _xlogx(p: np.ndarray) -> np.ndarray:
    return np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)


class NGramLM:
    """Interpolated Kneser–Ney language model of order 1–4 over ids ``0 .. vocab_size-1``.

    Train with :func:`train_ngram_lm`; serialise with :meth:`to_bytes` / :meth:`from_bytes`.
    Probabilities are natural-log; every id of the vocabulary has non-zero probability.
    """

    def __init__(self, order: int, vocab_size: int, unigram_probs: np.ndarray,
                 tables: Sequence[_OrderTable]) -> None:
        self.order = order
        self.vocab_size = vocab_size
        self.bits = _bits_per_id(vocab_size)
        self.begin_id = vocab_size   # padding id before each document; never predicted
        self.unigram_probs = unigram_probs
        self.unigram_neg_entropy = float(_xlogx(unigram_probs).sum())
        self.tables = list(tables)   # tables[i] is order i + 2
        self._indexes: dict[int, tuple[_KeyIndex, _KeyIndex]] = {}

    def _index(self, table_number: int) -> tuple[_KeyIndex, _KeyIndex]:
        """(context index, n-gram index) of ``tables[table_number]``, built on first use."""
        if table_number not in self._indexes:
            table = self.tables[table_number]
            self._indexes[table_number] = (_KeyIndex(table.context_keys), _KeyIndex(table.ngram_keys))
        return self._indexes[table_number]

    # ---- scoring -------------------------------------------------------------------------
    def _padded_stream(self, id_sequences: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Concatenated ids with ``order - 1`` begin ids before each sequence; the positions of
        the real tokens in that stream; and each sequence's token count."""
        pad = self.order - 1
        lengths = np.fromiter((len(s) for s in id_sequences), dtype=np.int64, count=len(id_sequences))
        if lengths.size == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), lengths
        tokens = np.concatenate([np.asarray(ids, dtype=np.int64).ravel() for ids in id_sequences])
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise NGramModelError(f"token ids must lie in [0, {self.vocab_size}); the tokenizer and the "
                                  "language model do not match")
        # Token i of the concatenation lands after its own document's padding and all earlier ones.
        document = np.repeat(np.arange(lengths.size), lengths)
        positions = np.arange(tokens.size, dtype=np.int64) + pad * (document + 1)
        stream = np.full(tokens.size + pad * lengths.size, self.begin_id, dtype=np.int64)
        stream[positions] = tokens
        return stream, positions, lengths

    def token_scores(self, id_sequences: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-token log-probability and predictive entropy (nats), flattened over all sequences,
        plus each sequence's token count (to split the flat arrays)."""
        stream, positions, lengths = self._padded_stream(id_sequences)
        targets = stream[positions]
        probs = self.unigram_probs[targets]
        neg_entropy = np.full(targets.shape, self.unigram_neg_entropy)
        context_key = np.zeros(targets.shape, dtype=np.int64)
        for offset, table in enumerate(self.tables, start=1):
            # context of order k = offset + 1: the ``offset`` ids before each target
            context_key = context_key | (stream[positions - offset] << (self.bits * (offset - 1)))
            context_lookup, ngram_lookup = self._index(offset - 1)
            context_index, context_found = context_lookup.lookup(context_key)
            ngram_index, ngram_found = ngram_lookup.lookup((context_key << self.bits) | targets)
            weight = np.where(context_found, table.backoff_weight[context_index], 1.0)
            own = np.where(ngram_found, table.alpha[ngram_index], 0.0)
            probs = own + weight * probs
            neg_entropy = np.where(context_found, table.neg_entropy[context_index], neg_entropy)
        return np.log(probs), -neg_entropy, lengths

    def next_token_probs(self, context_ids: Sequence[int]) -> np.ndarray:
        """The full predictive distribution over the vocabulary after ``context_ids``."""
        history = [self.begin_id] * (self.order - 1) + [int(i) for i in context_ids]
        probs = self.unigram_probs.copy()
        context_key = 0
        for offset, table in enumerate(self.tables, start=1):
            context_key |= history[-offset] << (self.bits * (offset - 1))
            context_index, found = _lookup(table.context_keys, np.array([context_key], dtype=np.int64))
            if not found[0]:
                continue
            probs *= table.backoff_weight[context_index[0]]
            low = np.searchsorted(table.ngram_keys, context_key << self.bits)
            high = np.searchsorted(table.ngram_keys, (context_key + 1) << self.bits)
            next_ids = table.ngram_keys[low:high] & ((1 << self.bits) - 1)
            probs[next_ids] += table.alpha[low:high]
        return probs

    def next_token_probs_batch(self, contexts: np.ndarray) -> np.ndarray:
        """:meth:`next_token_probs` of many contexts at once: ``contexts`` is an int array ``(m, k)`` of
        equal-length contexts (``k`` may be below ``order - 1``: begin ids are put before them); returns
        ``(m, vocab_size)``. One vectorised lookup per order instead of a Python call per context."""
        contexts = np.asarray(contexts, dtype=np.int64).reshape(len(contexts), -1)
        m, width = contexts.shape
        pad = max(0, self.order - 1 - width)
        kept = contexts[:, width - (self.order - 1 - pad):] if self.order > 1 else contexts[:, :0]
        history = np.hstack([np.full((m, pad), self.begin_id, dtype=np.int64), kept])
        probs = np.tile(self.unigram_probs, (m, 1))
        context_key = np.zeros(m, dtype=np.int64)
        mask = (1 << self.bits) - 1
        for offset, table in enumerate(self.tables, start=1):
            context_key = context_key | (history[:, -offset] << (self.bits * (offset - 1)))
            context_index, found = _lookup(table.context_keys, context_key)
            rows = np.flatnonzero(found)
            if rows.size == 0:
                continue
            probs[rows] *= table.backoff_weight[context_index[rows]][:, None]
            low = np.searchsorted(table.ngram_keys, context_key[rows] << self.bits)
            high = np.searchsorted(table.ngram_keys, (context_key[rows] + 1) << self.bits)
            counts = high - low
            owner = np.repeat(rows, counts)
            starts = np.repeat(low - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
            position = starts + np.arange(owner.size)
            probs[owner, table.ngram_keys[position] & mask] += table.alpha[position]
        return probs

    # ---- serialisation -----------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        arrays: dict[str, np.ndarray] = {
            "meta": np.array([_FORMAT_VERSION, self.order, self.vocab_size], dtype=np.int64),
            "unigram_probs": self.unigram_probs,
        }
        for k, table in enumerate(self.tables, start=2):
            for field in ("ngram_keys", "alpha", "context_keys", "backoff_weight", "neg_entropy"):
                arrays[f"{field}_{k}"] = getattr(table, field)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> NGramLM:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            version, order, vocab_size = (int(v) for v in arrays["meta"])
            if version != _FORMAT_VERSION:
                raise NGramModelError(f"n-gram model format {version} is not supported (expected {_FORMAT_VERSION})")
            tables = [
                _OrderTable(*(arrays[f"{field}_{k}"] for field in
                              ("ngram_keys", "alpha", "context_keys", "backoff_weight", "neg_entropy")))
                for k in range(2, order + 1)
            ]
            return cls(order, vocab_size, arrays["unigram_probs"], tables)

    def __getstate__(self) -> bytes:
        return self.to_bytes()

    def __setstate__(self, state: bytes) -> None:
        self.__dict__.update(NGramLM.from_bytes(state).__dict__)


def _bits_per_id(vocab_size: int) -> int:
    return max(1, math.ceil(math.log2(vocab_size + 1)))   # + 1: the begin id


def train_ngram_lm(id_sequences: Sequence[np.ndarray], vocab_size: int, order: int = 3) -> NGramLM:
    """Train an interpolated Kneser–Ney model (Chen & Goodman 1999, one discount per order).

    The highest order uses raw counts, lower orders continuation counts (number of distinct
    left contexts), and the unigram level interpolates with the uniform distribution so that every
    id has non-zero probability. ``order`` 3 is the default: on ~10^5 training tokens, 4-grams are
    almost all singletons and add nothing but memory.
    """
    if not 1 <= order <= 4:
        raise NGramModelError(f"order must be 1..4, got {order}")
    bits = _bits_per_id(vocab_size)
    if bits * order > 63:
        raise NGramModelError(f"vocab_size {vocab_size} needs {bits} bits per id: order {order} does not fit a "
                              "64-bit key; lower the order or the vocabulary")
    if not any(len(s) for s in id_sequences):
        raise NGramModelError("cannot train an n-gram model: every training sequence is empty")
    skeleton = NGramLM(order, vocab_size, np.full(vocab_size, 1.0 / vocab_size), [])
    stream, positions, _ = skeleton._padded_stream(id_sequences)

    # counts[k] for k = order .. 1: (sorted unique keys, count) — raw at the top order,
    # continuation counts (distinct left extensions) below it.
    key = np.zeros(positions.shape, dtype=np.int64)
    for offset in range(order):
        key = key | (stream[positions - offset] << (bits * offset))
    counts: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    keys, raw = np.unique(key, return_counts=True)
    counts[order] = (keys, raw.astype(np.float64))
    for k in range(order - 1, 0, -1):
        suffixes = counts[k + 1][0] & ((1 << (bits * k)) - 1)
        keys, continuation = np.unique(suffixes, return_counts=True)
        counts[k] = (keys, continuation.astype(np.float64))

    unigram_keys, unigram_counts = counts[1]
    discount = _discount(unigram_counts)
    total = unigram_counts.sum()
    unigram_probs = np.full(vocab_size, discount * unigram_keys.size / total / vocab_size)
    unigram_probs[unigram_keys] += np.maximum(unigram_counts - discount, 0.0) / total

    model = NGramLM(order, vocab_size, unigram_probs, [])
    for k in range(2, order + 1):
        ngram_keys, ngram_counts = counts[k]
        discount = _discount(ngram_counts)
        contexts = ngram_keys >> bits
        context_keys, group_starts, types = np.unique(contexts, return_index=True, return_counts=True)
        context_totals = _group_sums(ngram_counts, group_starts, ngram_keys.size)
        backoff_weight = discount * types / context_totals
        context_of_ngram = np.repeat(np.arange(context_keys.size), types)
        alpha = np.maximum(ngram_counts - discount, 0.0) / context_totals[context_of_ngram]

        # Lower-order probability of each seen (context, next) pair, and the lower order's
        # neg-entropy at each context's suffix: the closed form below needs only these.
        lower_probs = _lower_order_probs(model, ngram_keys, bits)
        suffix_keys = context_keys & ((1 << (bits * (k - 2))) - 1)
        if k == 2:
            lower_neg_entropy = np.full(context_keys.size, model.unigram_neg_entropy)
        else:
            lower_table = model.tables[-1]
            suffix_index, _ = _lookup(lower_table.context_keys, suffix_keys)
            lower_neg_entropy = lower_table.neg_entropy[suffix_index]
        probs = alpha + backoff_weight[context_of_ngram] * lower_probs
        seen_xlogx = _group_sums(_xlogx(probs), group_starts, ngram_keys.size)
        lower_mass_seen = _group_sums(lower_probs, group_starts, ngram_keys.size)
        lower_xlogx_seen = _group_sums(_xlogx(lower_probs), group_starts, ngram_keys.size)
        # Unseen next ids w get backoff_weight * p_lower(w); their sum of p log p is
        # backoff_weight * [(1 - lower mass seen) log backoff_weight + (lower neg-entropy - seen part)].
        unseen_xlogx = backoff_weight * (np.maximum(1.0 - lower_mass_seen, 0.0) * np.log(backoff_weight)
                                         + lower_neg_entropy - lower_xlogx_seen)
        neg_entropy = seen_xlogx + unseen_xlogx
        model.tables.append(_OrderTable(ngram_keys, alpha, context_keys, backoff_weight, neg_entropy))
    return model


def _lower_order_probs(model: NGramLM, ngram_keys: np.ndarray, bits: int) -> np.ndarray:
    """p_{k-1}(w | h') for each k-gram key (h, w) under ``model``, which holds orders 1 .. k-1."""
    targets = ngram_keys & ((1 << bits) - 1)
    probs = model.unigram_probs[targets]
    for offset, table in enumerate(model.tables, start=1):
        context_key = (ngram_keys >> bits) & ((1 << (bits * offset)) - 1)
        context_index, context_found = _lookup(table.context_keys, context_key)
        ngram_index, ngram_found = _lookup(table.ngram_keys, (context_key << bits) | targets)
        weight = np.where(context_found, table.backoff_weight[context_index], 1.0)
        own = np.where(ngram_found, table.alpha[ngram_index], 0.0)
        probs = own + weight * probs
    return probs


def mean_log_likelihood(id_sequences: Sequence[np.ndarray], lm: NGramLM) -> np.ndarray:
    """Mean natural-log probability per token of each sequence (NaN for an empty sequence)."""
    return lm_signals(id_sequences, lm)[0]


def binoculars_ratio(id_sequences: Sequence[np.ndarray], lm: NGramLM) -> np.ndarray:
    """Observed surprisal over expected surprisal: sum_t -log p(x_t|h_t) / sum_t H(p(.|h_t)).

    The n-gram analogue of Binoculars (Hans et al., 2024), which divides a text's log-perplexity
    by a cross-perplexity so that text that is hard for *any* model (rare topic, many names) is
    not mistaken for human text. Here the normaliser is the model's own entropy at each context:
    ~1 for text as surprising as the model expects, below 1 for text more predictable than that.
    NaN for an empty sequence.
    """
    return lm_signals(id_sequences, lm)[1]


def lm_signals(id_sequences: Sequence[np.ndarray], lm: NGramLM) -> tuple[np.ndarray, np.ndarray]:
    """(:func:`mean_log_likelihood`, :func:`binoculars_ratio`) from one pass over the tokens."""
    log_probs, entropies, lengths = lm.token_scores(id_sequences)
    surprisal = -per_sequence_sum(log_probs, lengths)
    expected_surprisal = per_sequence_sum(entropies, lengths)
    mean_log_probability = np.full(lengths.size, np.nan)
    ratio = np.full(lengths.size, np.nan)
    scored = lengths > 0
    mean_log_probability[scored] = -surprisal[scored] / lengths[scored]
    ratio[scored] = surprisal[scored] / expected_surprisal[scored]
    return mean_log_probability, ratio


def per_sequence_sum(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Sum of each sequence's slice of the flat ``values``. ``np.add.reduceat`` adds each slice on
    its own, so a document's score does not depend (even in the last bit) on its batch neighbours."""
    sums = np.zeros(lengths.size)
    non_empty = lengths > 0
    if non_empty.any():
        starts = (np.cumsum(lengths) - lengths)[non_empty]
        sums[non_empty] = np.add.reduceat(values.astype(np.float64), starts)
    return sums
