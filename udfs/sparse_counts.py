"""Sparse count matrices built fast: what the language identifier and the detector's character n-grams
need from scipy.sparse, without its general-purpose paths (issue #16).

``scipy.sparse.csr_matrix((ones, (rows, columns)))`` sums repeated (row, column) pairs by sorting each
row's entries as (index, value) pairs: ~90 ns per entry, a fifth of the detector's scoring time. Sorting
one integer key per entry and counting runs gives the same matrix (sorted indices, duplicates summed)
about 5x faster. ``matrix[:, columns]`` likewise goes through scipy's general column indexing where a
lookup array does. tests/test_sparse_counts.py checks both against scipy.
"""
from __future__ import annotations

import numpy as np
from scipy import sparse


def count_matrix(rows: np.ndarray, columns: np.ndarray, shape: tuple[int, int],
                 dtype: type = np.float64) -> sparse.csr_matrix:
    """CSR matrix whose (r, c) entry counts the pairs (r, c) among ``rows`` and ``columns``: equal to
    ``csr_matrix((ones, (rows, columns)), shape)``, indices sorted within each row."""
    n_rows, n_columns = shape
    if rows.size and (rows.min() < 0 or rows.max() >= n_rows or columns.min() < 0 or columns.max() >= n_columns):
        raise ValueError(f"a (row, column) pair lies outside the shape {shape}")
    if n_rows * n_columns >= 2**63:
        raise ValueError(f"shape {shape} is too large for one 64-bit key per entry")
    keys = np.sort(rows.astype(np.uint64) * np.uint64(n_columns) + columns.astype(np.uint64))
    first = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]])) if keys.size else np.zeros(0, np.int64)
    counts = np.diff(np.append(first, keys.size)).astype(dtype)
    distinct = keys[first]
    row_of = (distinct // np.uint64(n_columns)).astype(np.int64)
    indptr = np.searchsorted(row_of, np.arange(n_rows + 1), side="left")
    return sparse.csr_matrix((counts, (distinct % np.uint64(n_columns)).astype(np.int64), indptr), shape=shape)


def column_lookup(columns: np.ndarray, n_columns: int) -> np.ndarray:
    """Array of ``n_columns`` entries: the position of each column in the strictly increasing ``columns``,
    -1 for a column not among them."""
    columns = np.asarray(columns)
    if columns.size > 1 and not (np.diff(columns) > 0).all():
        raise ValueError("column selection needs strictly increasing column indices")
    lookup = np.full(n_columns, -1, dtype=np.int64)
    lookup[columns] = np.arange(columns.size)
    return lookup


def select_columns(matrix: sparse.csr_matrix, columns: np.ndarray) -> sparse.csr_matrix:
    """``matrix[:, columns]`` for strictly increasing ``columns``: the kept entries keep their order."""
    columns = np.asarray(columns)
    new_index = column_lookup(columns, matrix.shape[1])[matrix.indices]
    kept = np.flatnonzero(new_index >= 0)
    # A row's kept entries are those of its entry range: one binary search per row boundary, where a
    # running count over every entry took 3x as long (18,000 documents of detector training: 2.3 -> 0.6 s).
    indptr = np.searchsorted(kept, matrix.indptr)
    return sparse.csr_matrix((matrix.data[kept], new_index[kept], indptr), shape=(matrix.shape[0], columns.size))
