"""KMeans for embedding clusters: fitted with scikit-learn on a bounded sample, applied by nearest centroid.

Why not Spark ML's KMeans over the whole table: its k-means|| initialisation samples per partition, so
the clusters depended on how silver happened to be split into files (a recovery rerun after a kill, or
another ``spark.sql.shuffle.partitions``, gave other clusters and another mixture), and it ran ~40 Spark
jobs even for 430 documents. Centroids of a deterministic sample (jobs/embed.py takes it in doc_id hash
order) are the same whatever the partitioning; assignment is one pass, in an Arrow UDF.
"""
from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans


def fit_centroids(vectors: np.ndarray, k: int, seed: int, max_iter: int) -> np.ndarray:
    """(min(k, distinct rows), dim) centroids of ``vectors`` (rows in a fixed order: same rows, same seed,
    same centroids). Rows are sorted first so the input order does not matter either."""
    if len(vectors) == 0:
        raise ValueError("no vectors to cluster")
    rows = np.asarray(vectors, dtype=np.float64)
    rows = rows[np.lexsort(rows.T[::-1])]
    clusters = min(k, len(np.unique(rows, axis=0)))
    model = KMeans(n_clusters=clusters, n_init=4, max_iter=max_iter, random_state=seed).fit(rows)
    return model.cluster_centers_


def nearest_centroid(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid (Euclidean) of each row; ties go to the lower index, as in
    scikit-learn's ``KMeans.predict``."""
    rows = np.asarray(vectors, dtype=np.float64)
    if rows.size == 0:
        return np.zeros(0, dtype=np.int32)
    distances = (rows * rows).sum(axis=1)[:, None] - 2.0 * rows @ centroids.T + (centroids * centroids).sum(axis=1)
    return distances.argmin(axis=1).astype(np.int32)
