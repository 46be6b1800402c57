"""The pure half of the near-duplicate job (:mod:`jobs.neardup`): its settings and the functions that run
in Spark's Python workers over Arrow batches (numpy per batch, no Python per document, no Spark import).

They live here rather than in the job module so that a worker unpickling them imports numpy, pyarrow and
:mod:`udfs.minhash` / :mod:`udfs.lsh` only, not the job's driver-side dependencies (config, gates, MLflow):
that import costs every fresh worker ~0.6 s, measured on the 100k-document benchmark (docs/dedup.md).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from udfs.lsh import band_hashes, optimal_bands_rows
from udfs.lsh import candidate_pairs as lsh_candidate_pairs
from udfs.minhash import estimated_jaccard, is_empty_signature, minhash_signatures, shingle_hashes

# Bumped when the shingle hash, the band key or the index layout changes: old indexes are then rebuilt.
INDEX_FORMAT = 1
PROPERTY_PREFIX = "cleanwell.neardup."
# Characters of text (both sides of the pairs) hashed at once during verification: the size at which
# udfs.minhash measured its batch path fastest (arrays stay in cache).
_VERIFY_CHARS_PER_CHUNK = 1 << 18
_PAIRS_PER_BATCH = 1 << 16


# Settings that act only when candidate pairs are verified: changing them leaves every band hash valid.
VERIFICATION_SETTINGS = ("threshold", "verification")


@dataclass(frozen=True)
class LshSettings:
    """Everything that determines which pairs are near duplicates. Two runs are comparable only when
    their settings are equal; ``settings_hash`` identifies them in table properties. The band hashes
    depend on all but :data:`VERIFICATION_SETTINGS`: ``index_settings_hash`` identifies those, so that a
    changed threshold re-verifies the pairs of the band index instead of signing every text again."""

    shingle: str
    ngram: int
    num_perm: int
    seed: int
    scheme: str
    bands: int
    rows: int
    threshold: float
    candidate_threshold: float
    verification: str
    max_bucket_size: int

    @classmethod
    def from_config(cls, nd: Any) -> LshSettings:
        """From the ``neardup`` config section (:class:`jobs.common.config.NearDupConfig`)."""
        bands, rows = optimal_bands_rows(nd.candidate_threshold, nd.num_perm, nd.false_positive_weight,
                                         1.0 - nd.false_positive_weight)
        return cls(shingle=nd.shingle, ngram=nd.ngram, num_perm=nd.num_perm, seed=nd.seed, scheme=nd.scheme,
                   bands=bands, rows=rows, threshold=nd.threshold, candidate_threshold=nd.candidate_threshold,
                   verification=nd.verification, max_bucket_size=nd.max_bucket_size)

    @property
    def signature_bits(self) -> int:
        return 64 if self.scheme == "affine64" else 32

    def describe(self) -> dict[str, Any]:
        return {**asdict(self), "signature_bits": self.signature_bits, "index_format": INDEX_FORMAT}

    @property
    def settings_hash(self) -> str:
        return _hash(self.describe())

    @property
    def index_settings_hash(self) -> str:
        """Hash of the settings the band hashes and candidate pairs depend on (not the verification)."""
        return _hash({k: v for k, v in self.describe().items() if k not in VERIFICATION_SETTINGS})

    def table_properties(self) -> dict[str, str]:
        hashes = {"settings_hash": self.settings_hash, "index_settings_hash": self.index_settings_hash}
        return {f"{PROPERTY_PREFIX}{key}": str(value) for key, value in {**self.describe(), **hashes}.items()}


def _hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def band_hash_batches(batches: Iterable[pa.RecordBatch], settings: LshSettings) -> Iterator[pa.RecordBatch]:
    """``(doc_id, text)`` batches -> ``(doc_id, band_hashes)``: one 64-bit key per band (the uint64 keys of
    :func:`udfs.lsh.band_hashes` as int64); every key null for a text without a shingle."""
    for batch in batches:
        texts = batch.column("text").fill_null("").to_pylist()
        signatures = minhash_signatures(texts, settings.num_perm, settings.seed, settings.ngram, settings.shingle,
                                        settings.scheme)
        keys = band_hashes(signatures, settings.bands, settings.rows).view(np.int64).ravel()
        empty = np.repeat(is_empty_signature(signatures, settings.scheme), settings.bands)
        offsets = np.arange(0, len(texts) * settings.bands + 1, settings.bands, dtype=np.int32)
        lists = pa.ListArray.from_arrays(pa.array(offsets), pa.array(keys, type=pa.int64(), mask=empty))
        yield pa.RecordBatch.from_arrays([batch.column("doc_id"), lists], names=["doc_id", "band_hashes"])


def exact_jaccard_of_text_pairs(texts_a: Sequence[str], texts_b: Sequence[str], ngram: int = 5,
                                shingle: str = "word") -> np.ndarray:
    """Exact Jaccard of the shingle sets of ``texts_a[i]`` and ``texts_b[i]`` (0.0 when both have none),
    over the 64-bit shingle hashes of :func:`udfs.minhash.shingle_hashes`: equal to
    :func:`udfs.minhash.exact_jaccard` of the byte shingles unless two distinct shingles of a pair share
    a 64-bit hash.

    Both sides' hashes are sorted by (pair, hash) at once; each run of equal (pair, hash) is one distinct
    shingle, in A, in B or in both. The sort is a fast unstable sort by hash followed by a stable radix
    sort by the 16-bit pair number (chunks hold a few hundred pairs): 2x faster than ``np.lexsort``."""
    n_pairs = len(texts_a)
    similarities = np.zeros(n_pairs, dtype=np.float64)
    if n_pairs == 0:
        return similarities
    chars = np.cumsum([len(a) + len(b) for a, b in zip(texts_a, texts_b, strict=True)])
    starts = np.r_[0, np.flatnonzero(np.diff(chars // _VERIFY_CHARS_PER_CHUNK)) + 1]
    for start, end in zip(starts.tolist(), np.r_[starts[1:], n_pairs].tolist(), strict=True):
        size = end - start
        hashes_a, counts_a = shingle_hashes(texts_a[start:end], ngram, shingle)
        hashes_b, counts_b = shingle_hashes(texts_b[start:end], ngram, shingle)
        if len(hashes_a) + len(hashes_b) == 0:
            continue
        pair_numbers = np.arange(size, dtype=np.uint16 if size <= 1 << 16 else np.int64)
        pairs = np.concatenate([np.repeat(pair_numbers, counts_a), np.repeat(pair_numbers, counts_b)])
        hashes = np.concatenate([hashes_a, hashes_b])
        in_b = np.r_[np.zeros(len(hashes_a), dtype=bool), np.ones(len(hashes_b), dtype=bool)]
        order = np.argsort(hashes)
        order = order[np.argsort(pairs[order], kind="stable")]
        pairs, hashes, in_b = pairs[order], hashes[order], in_b[order]
        runs = np.flatnonzero(np.r_[True, (pairs[1:] != pairs[:-1]) | (hashes[1:] != hashes[:-1])])
        run_in_a, run_in_b = ~np.logical_and.reduceat(in_b, runs), np.logical_or.reduceat(in_b, runs)
        run_pairs = pairs[runs]
        intersection = np.bincount(run_pairs[run_in_a & run_in_b], minlength=size)
        union = (np.bincount(run_pairs[run_in_a], minlength=size) + np.bincount(run_pairs[run_in_b], minlength=size)
                 - intersection)
        np.divide(intersection, union, out=similarities[start:end], where=union > 0)
    return similarities


def pair_similarities(texts_a: Sequence[str], texts_b: Sequence[str], settings: LshSettings) -> np.ndarray:
    """The Jaccard similarity verification compares with the threshold: exact, or the MinHash estimate
    (signatures recomputed from the texts, bit for bit those of the banding)."""
    if settings.verification == "exact":
        return exact_jaccard_of_text_pairs(texts_a, texts_b, settings.ngram, settings.shingle)
    signatures = [minhash_signatures(texts, settings.num_perm, settings.seed, settings.ngram, settings.shingle,
                                     settings.scheme) for texts in (texts_a, texts_b)]
    return np.asarray(estimated_jaccard(*signatures), dtype=np.float64).reshape(-1)


def paired_text_similarity_batches(batches: Iterable[pa.RecordBatch],
                                   settings: LshSettings) -> Iterator[pa.RecordBatch]:
    """``(doc_a, doc_b, side, text)`` rows -> ``(doc_a, doc_b, similarity)``, one row per pair.

    Each candidate pair arrives as two rows, ``side`` 0 with doc_a's text and ``side`` 1 with doc_b's, both
    in the same partition, which is sorted by ``(doc_a, doc_b, side)``: a pair's texts are adjacent. A pair
    split across two batches is completed by carrying the trailing side-0 row over to the next batch. A
    pair missing either row (a document not among the texts) gives no row."""
    carry: pa.RecordBatch | None = None
    for batch in batches:
        if carry is not None:
            batch, carry = pa.concat_batches([carry, batch]), None
        n_rows = batch.num_rows
        if n_rows == 0:
            continue
        side = batch.column("side").to_numpy(zero_copy_only=False)
        doc_a, doc_b = batch.column("doc_a"), batch.column("doc_b")
        next_is_same_pair = np.zeros(n_rows, dtype=bool)
        next_is_same_pair[:-1] = np.logical_and(
            pc.equal(doc_a.slice(0, n_rows - 1), doc_a.slice(1)).to_numpy(zero_copy_only=False),
            pc.equal(doc_b.slice(0, n_rows - 1), doc_b.slice(1)).to_numpy(zero_copy_only=False))
        firsts = np.flatnonzero((side == 0) & np.r_[side[1:] == 1, False] & next_is_same_pair)
        if side[-1] == 0:
            carry = batch.slice(n_rows - 1)
        if len(firsts) == 0:
            continue
        texts = batch.column("text")
        texts_a = texts.take(firsts).fill_null("").to_pylist()
        texts_b = texts.take(firsts + 1).fill_null("").to_pylist()
        similarity = pa.array(pair_similarities(texts_a, texts_b, settings), type=pa.float64())
        yield pa.RecordBatch.from_arrays([doc_a.take(firsts), doc_b.take(firsts), similarity],
                                         names=["doc_a", "doc_b", "similarity"])


def bucket_pair_batches(batches: Iterable[pa.RecordBatch], max_bucket_size: int) -> Iterator[pa.RecordBatch]:
    """All ``(doc_id, hash, is_new)`` rows of one partition (every row of a bucket is in the same partition)
    -> ``(doc_a, doc_b)`` pairs that share a hash, by :func:`udfs.lsh.candidate_pairs` itself: rows are
    sorted by doc_id so that a giant bucket's first member is its smallest doc_id, as in the reference.
    Band keys are seeded with the band index, so equal hashes mean equal (band, hash)."""
    batches = [batch for batch in batches if batch.num_rows]
    if not batches:
        return
    table = pa.Table.from_batches(batches)
    table = table.take(pc.sort_indices(table, sort_keys=[("doc_id", "ascending")]))
    keys = table.column("hash").to_numpy().view(np.uint64).reshape(-1, 1)
    pairs = lsh_candidate_pairs(keys, max_bucket_size)
    is_new = table.column("is_new").to_numpy(zero_copy_only=False)
    pairs = pairs[is_new[pairs[:, 0]] | is_new[pairs[:, 1]]]
    doc_ids = table.column("doc_id").combine_chunks()
    for start in range(0, len(pairs), _PAIRS_PER_BATCH):
        chunk = pairs[start : start + _PAIRS_PER_BATCH]
        yield pa.RecordBatch.from_arrays([doc_ids.take(chunk[:, 0]), doc_ids.take(chunk[:, 1])],
                                         names=["doc_a", "doc_b"])
