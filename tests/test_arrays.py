"""udfs.arrays against numpy."""
import numpy as np
import pytest

from udfs.arrays import distinct_sorted


@pytest.mark.parametrize("values", [
    np.array([], dtype=np.int64), np.array([5]), np.array([3, 3, 3]), np.array([-2, 7, -2, 0, 7, 9]),
    np.random.default_rng(0).integers(0, 50, 1000), np.random.default_rng(1).integers(0, 2**62, 5000),
    np.array([[4, 1], [1, 2]]),
])
def test_distinct_sorted_equals_np_unique(values):
    result = distinct_sorted(values)
    expected = np.unique(values)
    assert result.dtype == expected.dtype and result.tolist() == expected.tolist()
