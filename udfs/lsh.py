"""Locality-sensitive hashing over MinHash signatures, and a single-process reference for near-duplicate
clusters: numpy in, numpy out, no Spark.

The Spark job shards the same steps (band hashes -> buckets -> candidate pairs -> verified pairs ->
connected components); this module is the local reference it is checked against, on the same signatures.
Two interchangeable candidate indexes give identical clusters (a test checks it): datasketch's
``MinHashLSH`` and :func:`candidate_pairs` over :func:`band_hashes`, which is what the Spark job mirrors.

Why two thresholds. Banding tuned at the verification threshold itself misses many pairs just above it:
at 0.8 with 128 permutations it picks 9 bands x 13 rows, which catches a pair of Jaccard 0.8 with probability
only 1 - (1 - 0.8**13)**9 = 0.40. So ``candidate_threshold`` (lower) picks bands and rows, and only the
verification uses ``threshold``. Measured on ``bench.minhash_core.near_duplicate_corpus(4000, seed=0)``
(~190-word M4 documents, 30% planted variants with 1-6% of words edited; 705 pairs at exact Jaccard >= 0.8
of 5-word shingles, found by brute force), candidates verified by exact Jaccard: recall 0.79 when banding at
0.8 (9 x 13), 0.97 at 0.7 (14 x 9), 0.99 at 0.65 (16 x 8, the default), 0.999 at 0.6 (18 x 7); precision 1.0
throughout, for 1.9x as many candidate pairs at 0.65 as at 0.8 (0.31 per document). Verifying by the
signatures' estimate instead holds precision and recall near 0.90-0.91 whatever the banding: with 128
permutations the estimate's standard error at 0.8 is 0.035, and in this corpus a third of the true pairs lie
in [0.80, 0.85) and another 221 pairs in [0.75, 0.80).

Empty signatures (texts without a shingle) are left out of banding: all of them are equal, and would
otherwise form one giant "duplicate" cluster. Each is its own cluster.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from functools import lru_cache
from typing import Any, Literal

import numpy as np
from datasketch import MinHash, MinHashLSH
from scipy.integrate import quad
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from udfs.arrays import distinct_sorted
from udfs.minhash import Scheme, exact_jaccard, fmix64, is_empty_signature, permutations

CandidateIndex = Literal["numpy", "datasketch"]
Verification = Literal["signature", "shingles"]

# Odd 64-bit multiplier of the polynomial that folds a band's rows into one value (see band_hashes).
_BAND_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)
# Pairs verified at once: bounds the (pairs x num_perm) comparison matrix to ~32 MB.
_VERIFY_CHUNK_PAIRS = 1 << 18


def _false_positive_area(threshold: float, bands: int, rows: int) -> float:
    area, _error = quad(lambda s: 1 - (1 - s ** float(rows)) ** float(bands), 0.0, threshold)
    return area


def _false_negative_area(threshold: float, bands: int, rows: int) -> float:
    area, _error = quad(lambda s: 1 - (1 - (1 - s ** float(rows)) ** float(bands)), threshold, 1.0)
    return area


@lru_cache(maxsize=64)
def optimal_bands_rows(
    threshold: float, num_perm: int, false_positive_weight: float = 0.5, false_negative_weight: float = 0.5
) -> tuple[int, int]:
    """``(bands, rows)`` with ``bands * rows <= num_perm`` that minimise the weighted areas under the
    false-positive (similarity below ``threshold``) and false-negative (above it) probability curves.

    Same grid, same integrals, same tie-breaking (first minimum, bands ascending, then rows) as datasketch's
    ``lsh._optimal_param``, so ``MinHashLSH(threshold, num_perm)`` picks the same parameters."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1]; got {threshold}")
    if num_perm < 2:
        raise ValueError(f"num_perm must be at least 2 (LSH needs two bands); got {num_perm}")
    min_error = float("inf")
    best = (0, 0)
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            error = (
                _false_positive_area(threshold, bands, rows) * false_positive_weight
                + _false_negative_area(threshold, bands, rows) * false_negative_weight
            )
            if error < min_error:
                min_error = error
                best = (bands, rows)
    return best


def _check_bands_rows(signatures: np.ndarray, bands: int, rows: int) -> None:
    if signatures.ndim != 2:
        raise ValueError(f"signatures must be 2-D (documents x num_perm); got shape {signatures.shape}")
    if bands < 1 or rows < 1 or bands * rows > signatures.shape[1]:
        raise ValueError(
            f"bands x rows must be positive and at most num_perm={signatures.shape[1]}; got {bands} x {rows}"
        )


def band_hashes(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per (document, band), shape ``(n_docs, bands)``, uint64.

    Band ``k`` covers signature columns ``k*rows .. (k+1)*rows - 1`` (datasketch's ranges; columns past
    ``bands*rows`` are unused). The key is a polynomial mod 2**64 seeded with the band index, then the
    MurmurHash3 finalizer: equal rows give equal keys; the same rows in two different bands give different
    keys (the seeds differ by ``(k1 - k2) * multiplier**rows``, never 0 mod 2**64 for an odd multiplier),
    so all bands can share one bucket space; other collisions have probability ~2**-64 per pair."""
    _check_bands_rows(signatures, bands, rows)
    banded = signatures[:, : bands * rows].reshape(len(signatures), bands, rows).astype(np.uint64)
    keys = np.broadcast_to(np.arange(bands, dtype=np.uint64), (len(signatures), bands)).copy()
    for row in range(rows):
        keys *= _BAND_MULTIPLIER
        keys += banded[:, :, row]
    return fmix64(keys)


def candidate_pairs(
    band_keys: np.ndarray, max_bucket_size: int | None = None, include: np.ndarray | None = None
) -> np.ndarray:
    """Pairs of documents that share at least one band key: int64 ``(n_pairs, 2)``, ``i < j``, sorted, unique.

    ``include`` (bool per document) leaves documents out of every bucket. A bucket of ``s`` documents gives
    ``s*(s-1)/2`` pairs; one larger than ``max_bucket_size`` (templated pages, empty-ish texts) gives only
    ``s-1`` pairs, each member with the bucket's first (lowest-index) document, so the work stays linear.
    Such members still join one cluster if they verify against that first document; the pairs among
    themselves are not checked. ``None`` means no cap (what datasketch does)."""
    n_docs, bands = band_keys.shape
    doc_of_key = np.repeat(np.arange(n_docs, dtype=np.int64), bands)
    keys = band_keys.ravel()
    if include is not None:
        kept = np.repeat(include, bands)
        doc_of_key, keys = doc_of_key[kept], keys[kept]
    # Stable sort by key: within a bucket, documents stay in ascending index order.
    order = np.argsort(keys, kind="stable")
    keys, docs = keys[order], doc_of_key[order]
    bucket_starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    bucket_sizes = np.diff(np.r_[bucket_starts, len(keys)])
    pair_blocks = [np.empty((0, 2), dtype=np.int64)]
    for size in np.unique(bucket_sizes[bucket_sizes > 1]).tolist():
        starts = bucket_starts[bucket_sizes == size]
        members = docs[starts[:, None] + np.arange(size)]  # (buckets of this size, size)
        if max_bucket_size is not None and size > max_bucket_size:
            first = np.repeat(members[:, 0], size - 1)
            pair_blocks.append(np.column_stack([first, members[:, 1:].ravel()]))
        else:
            left, right = np.triu_indices(size, k=1)
            pair_blocks.append(np.column_stack([members[:, left].ravel(), members[:, right].ravel()]))
    return _unique_pairs(np.concatenate(pair_blocks), n_docs)


def _unique_pairs(pairs: np.ndarray, n_docs: int) -> np.ndarray:
    low, high = np.minimum(pairs[:, 0], pairs[:, 1]), np.maximum(pairs[:, 0], pairs[:, 1])
    codes = distinct_sorted(low * n_docs + high)
    return np.column_stack([codes // n_docs, codes % n_docs]).astype(np.int64)


def datasketch_candidate_pairs(
    signatures: np.ndarray, bands: int, rows: int, scheme: Scheme, seed: int, include: np.ndarray | None = None
) -> np.ndarray:
    """The same contract as :func:`candidate_pairs` (no bucket cap), from datasketch's ``MinHashLSH`` fed
    with ``MinHash`` objects that hold our signatures. Slow (Python per document): a reference only."""
    _check_bands_rows(signatures, bands, rows)
    n_docs, num_perm = signatures.shape
    perms = permutations(num_perm, seed, scheme)
    docs = np.flatnonzero(include) if include is not None else np.arange(n_docs)
    index = MinHashLSH(num_perm=num_perm, params=(bands, rows))
    sketches = {}
    for doc in docs.tolist():
        sketches[doc] = MinHash(seed=seed, hashvalues=signatures[doc], permutations=perms, scheme=scheme)
        index.insert(doc, sketches[doc], check_duplication=False)
    pairs = [(doc, other) for doc, sketch in sketches.items() for other in index.query(sketch) if doc < other]
    return _unique_pairs(np.array(pairs, dtype=np.int64).reshape(-1, 2), n_docs)


def estimated_jaccard_of_pairs(signatures: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Estimated Jaccard (fraction of equal signature values) of each pair, float64."""
    estimates = np.empty(len(pairs), dtype=np.float64)
    for start in range(0, len(pairs), _VERIFY_CHUNK_PAIRS):
        chunk = pairs[start : start + _VERIFY_CHUNK_PAIRS]
        estimates[start : start + len(chunk)] = np.mean(signatures[chunk[:, 0]] == signatures[chunk[:, 1]], axis=1)
    return estimates


def exact_jaccard_of_pairs(shingle_sets: Sequence[set[bytes]], pairs: np.ndarray) -> np.ndarray:
    """Exact Jaccard of each pair's shingle sets (0.0 for two empty sets), float64."""
    return np.array([exact_jaccard(shingle_sets[left], shingle_sets[right]) for left, right in pairs.tolist()])


def connected_component_ids(ids: Sequence[Hashable], pairs: np.ndarray) -> dict[Hashable, Hashable]:
    """``id -> component id`` of the graph whose edges are ``pairs`` (row indices into ``ids``), where a
    component's id is its smallest member id; a document without an edge is its own component."""
    n_docs = len(ids)
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n_docs, n_docs))
    _count, labels = connected_components(graph, directed=False)
    smallest_id_of_label: dict[int, Hashable] = {}
    for doc_id, label in sorted(zip(ids, labels.tolist(), strict=True), key=lambda item: item[0]):
        smallest_id_of_label.setdefault(label, doc_id)
    return {doc_id: smallest_id_of_label[label] for doc_id, label in zip(ids, labels.tolist(), strict=True)}


def near_duplicate_pairs(
    signatures: np.ndarray,
    threshold: float = 0.8,
    candidate_threshold: float | None = 0.65,
    *,
    scheme: Scheme = "affine32",
    seed: int = 1,
    candidate_index: CandidateIndex = "numpy",
    verification: Verification = "signature",
    shingle_sets: Sequence[set[bytes]] | None = None,
    max_bucket_size: int | None = None,
) -> np.ndarray:
    """Verified near-duplicate pairs (row indices, int64 ``(n_pairs, 2)``, ``i < j``, sorted).

    Bands and rows are :func:`optimal_bands_rows` at ``candidate_threshold`` (``None``: at ``threshold``);
    candidate pairs come from ``candidate_index``; a pair is kept when its Jaccard is at least ``threshold``,
    estimated from the signatures (``verification="signature"``, what the Spark job does) or exact over
    ``shingle_sets`` (``"shingles"``). ``scheme`` and ``seed`` must be those of the signatures: they
    identify the empty signature and rebuild datasketch sketches. See the module docstring for why the
    default candidate threshold is below the verification threshold."""
    if verification == "shingles" and (shingle_sets is None or len(shingle_sets) != len(signatures)):
        raise ValueError('verification="shingles" needs shingle_sets, one set per signature row')
    candidate = threshold if candidate_threshold is None else candidate_threshold
    bands, rows = optimal_bands_rows(candidate, signatures.shape[1])
    nonempty = ~is_empty_signature(signatures, scheme)
    if candidate_index == "numpy":
        pairs = candidate_pairs(band_hashes(signatures, bands, rows), max_bucket_size, include=nonempty)
    elif candidate_index == "datasketch":
        pairs = datasketch_candidate_pairs(signatures, bands, rows, scheme, seed, include=nonempty)
    else:
        raise ValueError(f'candidate_index must be "numpy" or "datasketch"; got {candidate_index!r}')
    if verification == "signature":
        similarities = estimated_jaccard_of_pairs(signatures, pairs)
    elif verification == "shingles":
        similarities = exact_jaccard_of_pairs(shingle_sets, pairs)
    else:
        raise ValueError(f'verification must be "signature" or "shingles"; got {verification!r}')
    return pairs[similarities >= threshold]


def near_duplicate_clusters(
    ids: Sequence[Hashable],
    signatures: np.ndarray,
    threshold: float = 0.8,
    candidate_threshold: float | None = 0.65,
    **pair_options: Any,
) -> dict[Hashable, Hashable]:
    """Near-duplicate clusters, ``id -> component id`` (the smallest id of the component), computed in one
    process: the reference the Spark job must reproduce on the same signatures. ``pair_options`` are the
    keyword options of :func:`near_duplicate_pairs`."""
    if len(ids) != len(signatures):
        raise ValueError(f"{len(ids)} ids but {len(signatures)} signatures")
    if len(set(ids)) != len(ids):
        raise ValueError("ids must be unique")
    pairs = near_duplicate_pairs(signatures, threshold, candidate_threshold, **pair_options)
    return connected_component_ids(ids, pairs)
