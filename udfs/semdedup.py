"""SemDeDup within one embedding cluster (Abbas et al., 2023, "SemDeDup: Data-efficient learning at
web-scale through semantic deduplication"), pure numpy/scipy.

The job clusters the embeddings (k-means) and calls :func:`semantic_duplicate_of` once per cluster.
For each document it returns the id of the document kept in its place, or None if it is itself kept.
It marks; the sampling job removes.

Grouping rule: documents are linked when their cosine similarity is at least the threshold, and
each connected component of that graph keeps one document, the one with the lowest priority key
(ties: the smallest id as a string). The paper instead removes every document that has any more-similar-than-threshold
neighbour earlier in its order, kept or not; that can keep several documents of one chain
(a~b~c with a and c dissimilar keeps a and c when b comes first) and leaves no single
representative to point a removed document to. Components give every removed document one kept
representative, a result independent of input order, and remove at least as much as the paper's
rule (each component keeps exactly one document, the paper's rule keeps at least one). The price
is chaining at low thresholds: a long chain of pairwise-similar documents collapses to one even if
its ends are dissimilar, so keep the threshold high (cosine 0.9 or more).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

# Rows compared per block: a 1,024 x 20,000 float32 similarity block is 80 MB, so a cluster of
# ~20k documents never holds its full 1.6 GB similarity matrix.
DEFAULT_CHUNK_ROWS = 1024
_NORM_TOLERANCE = 1e-3


def semantic_duplicate_of(
    embeddings: np.ndarray,
    ids: Sequence[object],
    priority: Sequence[float] | np.ndarray,
    threshold: float,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> np.ndarray:
    """For each document, the id of the kept document of its group, or None when it is kept.

    ``embeddings`` are L2-normalised rows (zero rows allowed: they match nothing); ``priority`` is
    lower-is-kept-first (e.g. minus a quality score, or a provenance rank); ``threshold`` is the
    cosine similarity at or above which two documents are duplicates. Returns an object array.
    """
    vectors, id_array, order = _validated(embeddings, ids, priority, threshold)
    n_documents = len(id_array)
    if n_documents == 0:
        return np.empty(0, dtype=object)
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
    sources: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    for start in range(0, n_documents, chunk_rows):
        stop = min(start + chunk_rows, n_documents)
        # Only the upper triangle (columns > row) is needed: similarity is symmetric.
        block = vectors[start:stop] @ vectors[start:].T
        rows, columns = np.nonzero(block >= threshold)
        columns += start
        rows += start
        upper = columns > rows
        sources.append(rows[upper])
        targets.append(columns[upper])
    source = np.concatenate(sources)
    target = np.concatenate(targets)
    graph = sp.coo_matrix((np.ones(len(source), dtype=np.int8), (source, target)),
                          shape=(n_documents, n_documents))
    _, component = connected_components(graph, directed=False)
    return _representatives(component, id_array, order)


def semantic_duplicate_of_brute_force(
    embeddings: np.ndarray,
    ids: Sequence[object],
    priority: Sequence[float] | np.ndarray,
    threshold: float,
) -> np.ndarray:
    """Reference for tests and audits: every pair in plain Python, union-find, same result as
    :func:`semantic_duplicate_of`. Quadratic in Python; use only on small sets."""
    vectors, id_array, order = _validated(embeddings, ids, priority, threshold)
    n_documents = len(id_array)
    parent = list(range(n_documents))

    def root(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    rows = vectors.tolist()
    for i in range(n_documents):
        for j in range(i + 1, n_documents):
            if sum(a * b for a, b in zip(rows[i], rows[j], strict=True)) >= threshold:
                parent[root(i)] = root(j)
    component = np.array([root(node) for node in range(n_documents)], dtype=np.int64)
    return _representatives(component, id_array, order)


def _validated(
    embeddings: np.ndarray, ids: Sequence[object], priority: Sequence[float] | np.ndarray, threshold: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float32 vectors, ids as an object array, and the keep order (priority, then id)."""
    vectors = np.asarray(embeddings, dtype=np.float32)
    id_array = np.empty(len(ids), dtype=object)
    id_array[:] = list(ids)
    priorities = np.asarray(priority, dtype=np.float64)
    if vectors.ndim != 2 or not (len(vectors) == len(id_array) == len(priorities)):
        raise ValueError(f"need a 2-D embeddings array and one id and priority per row; got embeddings "
                         f"{vectors.shape}, {len(id_array)} ids, {len(priorities)} priorities")
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {threshold}")
    if np.isnan(priorities).any():
        raise ValueError("priority contains NaN; give every document a comparable priority")
    if len(id_array) != len(set(id_array.tolist())):
        raise ValueError("ids must be unique within a cluster")
    norms = np.linalg.norm(vectors, axis=1)
    bad = ~((np.abs(norms - 1.0) <= _NORM_TOLERANCE) | (norms == 0.0))
    if bad.any():
        raise ValueError(f"embeddings must be L2-normalised (or zero); row {int(np.flatnonzero(bad)[0])} "
                         f"has norm {norms[bad][0]:.4f}")
    # Ids (compared as strings) break priority ties so the kept document does not depend on input order.
    id_rank = np.unique(np.array([str(value) for value in id_array]), return_inverse=True)[1]
    order = np.lexsort((id_rank, priorities))
    return vectors, id_array, order


def _representatives(component: np.ndarray, id_array: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Per document: the id of its component's first document in ``order``, None for that one."""
    first_in_component: dict[int, int] = {}
    for position in order.tolist():
        first_in_component.setdefault(int(component[position]), position)
    result = np.empty(len(id_array), dtype=object)
    for position, label in enumerate(component.tolist()):
        kept = first_in_component[label]
        result[position] = None if kept == position else id_array[kept]
    return result
