"""udfs.kmeans against scikit-learn's KMeans."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import KMeans

from udfs.kmeans import fit_centroids, nearest_centroid


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 16)) * 4
    return np.concatenate([c + rng.normal(size=(60, 16)) for c in centres])


def test_centroids_do_not_depend_on_row_order(blobs):
    shuffled = blobs[np.random.default_rng(1).permutation(len(blobs))]
    assert np.array_equal(fit_centroids(blobs, 5, seed=7, max_iter=50), fit_centroids(shuffled, 5, seed=7, max_iter=50))


def test_nearest_centroid_is_sklearns_predict(blobs):
    model = KMeans(n_clusters=5, n_init=4, random_state=3).fit(blobs)
    queries = np.random.default_rng(2).normal(size=(200, 16)) * 4
    assert np.array_equal(nearest_centroid(queries, model.cluster_centers_), model.predict(queries))


def test_fewer_distinct_rows_than_k_gives_one_cluster_per_row():
    rows = np.array([[0.0, 1.0], [0.0, 1.0], [5.0, 5.0]])
    centroids = fit_centroids(rows, 8, seed=0, max_iter=10)
    assert len(centroids) == 2
    assert sorted(nearest_centroid(rows, centroids).tolist()).count(nearest_centroid(rows[:1], centroids)[0]) == 2
    with pytest.raises(ValueError):
        fit_centroids(np.zeros((0, 2)), 3, seed=0, max_iter=10)
