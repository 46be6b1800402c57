"""udfs.sparse_counts against scipy.sparse, the library it stands in for on the scoring path (issue #16)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from udfs.sparse_counts import count_matrix, document_frequency, select


@pytest.mark.parametrize("shape", [(1, 1), (7, 50), (300, 2**20), (5000, 2**20)])  # the last: 64-bit keys
def test_count_matrix_equals_scipy_summing_duplicates(shape):
    rng = np.random.default_rng(shape[1])
    size = 20 * shape[0]
    rows = rng.integers(0, shape[0], size)
    columns = rng.zipf(1.5, size) % shape[1]  # many repeated pairs
    ours = count_matrix(rows, columns, shape)
    reference = sparse.csr_matrix((np.ones(size), (rows, columns)), shape=shape)
    reference.sum_duplicates()
    assert ours.has_sorted_indices and ours.shape == shape and ours.dtype == np.float64
    assert np.array_equal(ours.indptr, reference.indptr) and np.array_equal(ours.indices, reference.indices)
    assert np.array_equal(ours.data, reference.data)


def test_count_matrix_of_nothing_and_rows_without_entries():
    empty = count_matrix(np.zeros(0, np.int64), np.zeros(0, np.int64), (3, 5), dtype=np.float32)
    assert empty.shape == (3, 5) and empty.nnz == 0 and empty.dtype == np.float32
    gaps = count_matrix(np.array([2, 0, 2]), np.array([4, 1, 4]), (4, 5))
    assert gaps.toarray().tolist() == [[0, 1, 0, 0, 0], [0] * 5, [0, 0, 0, 0, 2], [0] * 5]
    with pytest.raises(ValueError, match="outside the shape"):
        count_matrix(np.array([3]), np.array([0]), (3, 5))


def test_select_equals_scipy_row_and_column_indexing():
    rng = np.random.default_rng(3)
    matrix = sparse.random(40, 1000, density=0.05, format="csr", random_state=4)
    columns = np.flatnonzero(rng.random(1000) < 0.3)
    ours, reference = select(matrix, columns), matrix[:, columns]
    assert ours.shape == reference.shape and (ours != reference).nnz == 0
    # rows with no entries, or none in the selected columns, at the start, inside and at the end
    matrix = matrix.tolil()
    matrix[[0, 7, 39], :] = 0
    matrix[[3, 20]] = 0
    matrix[3, 1] = matrix[20, 2] = 1.0
    matrix = matrix.tocsr()
    columns = np.setdiff1d(columns, [1, 2])
    ours, reference = select(matrix, columns), matrix[:, columns]
    assert (ours != reference).nnz == 0 and np.array_equal(ours.indptr, reference.indptr)
    assert [ours[r].nnz for r in (0, 3, 7, 20, 39)] == [0] * 5
    assert select(matrix, np.zeros(0, np.int64)).shape == (40, 0)
    # rows in any order, repeated, none; float32 counts to float64 features
    for rows in (rng.permutation(40)[:25], np.array([39, 3, 3, 0, 20]), np.zeros(0, np.int64)):
        ours, reference = select(matrix.astype(np.float32), columns, rows, np.float64), matrix[rows][:, columns]
        assert ours.dtype == np.float64 and ours.shape == reference.shape
        assert (ours != reference.astype(np.float32).astype(np.float64)).nnz == 0
        assert np.array_equal(ours.indptr, reference.indptr) and ours.has_sorted_indices
    with pytest.raises(ValueError, match="increasing"):
        select(matrix, np.array([5, 2]))


def test_select_and_document_frequency_across_row_slices(monkeypatch):
    """More rows than one pass takes: the slices join up as one selection."""
    import udfs.sparse_counts as sparse_counts

    monkeypatch.setattr(sparse_counts, "_ROW_CHUNK", 7)
    matrix = sparse.random(60, 300, density=0.1, format="csr", random_state=5)
    rows = np.random.default_rng(6).permutation(60)[:45]
    columns = np.arange(0, 300, 3)
    reference = matrix[rows][:, columns]
    ours = select(matrix, columns, rows)
    assert (ours != reference).nnz == 0 and np.array_equal(ours.indptr, reference.indptr)
    assert np.array_equal(document_frequency(matrix, rows), (matrix[rows] != 0).sum(axis=0).A1)
    assert np.array_equal(document_frequency(matrix), (matrix != 0).sum(axis=0).A1)
