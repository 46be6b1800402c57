"""Diversity of a set of documents (a mixture, a source, a run's output), pure numpy.

Set-level measures for reports and gates, as numbers; none of them decides anything:

* :func:`cluster_entropy`: how evenly documents spread over embedding clusters (normalised to [0, 1]).
* :func:`distinct_n`: distinct n-grams over all n-grams (Li et al., 2016, "A Diversity-Promoting
  Objective Function for Neural Conversation Models"), for n = 1..4.
* :func:`top_source_share`: the share of the largest source.
* :func:`vendi_score`: the effective number of distinct documents (Friedman & Dieng, 2023, "The
  Vendi Score: A Diversity Evaluation Metric for Machine Learning"), on a sample of embeddings.

A collapsing corpus (model outputs trained on model outputs) shows falling distinct-n, falling
Vendi score and entropy, and a rising top-source share.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Hashable, Iterable

import numpy as np

_WORD = re.compile(r"\w+")
DEFAULT_VENDI_SAMPLE = 2000


def cluster_entropy(cluster_ids: Iterable[Hashable], n_clusters: int | None = None) -> float:
    """Shannon entropy of the cluster-size distribution divided by log(number of clusters).

    ``cluster_ids`` is one id per document, or a mapping of id to count (a Spark ``groupBy().count()``
    collected: what jobs/embed.py passes, so the driver never holds one row per document).

    1.0 when documents are spread evenly, 0.0 when all share one cluster. ``n_clusters`` is the
    number of clusters the clustering had (e.g. k of k-means), so that empty clusters count as
    missing diversity; by default, the number of distinct ids seen. NaN for an empty input.
    """
    counts = np.array(list(Counter(cluster_ids).values()), dtype=np.int64)
    if counts.size == 0:
        return math.nan
    k = len(counts) if n_clusters is None else n_clusters
    if k < len(counts):
        raise ValueError(f"n_clusters={n_clusters} but {len(counts)} distinct cluster ids were given")
    if k <= 1:
        return 0.0
    shares = counts / counts.sum()
    return float(-(shares * np.log(shares)).sum() / math.log(k))


def distinct_n(texts: Iterable[str], max_n: int = 4) -> dict[int, float]:
    """``{n: distinct n-grams / total n-grams}`` for n = 1..max_n over all texts together.

    Words are lower-cased runs of letters and digits; n-grams do not cross documents. An n with no
    n-gram at all (texts shorter than n words) gets NaN.
    """
    if max_n < 1:
        raise ValueError(f"max_n must be at least 1, got {max_n}")
    distinct: list[set[tuple[str, ...]]] = [set() for _ in range(max_n)]
    totals = [0] * max_n
    for text in texts:
        words = _WORD.findall(text.lower()) if isinstance(text, str) else []
        for n in range(1, max_n + 1):
            ngrams = list(zip(*(words[i:] for i in range(n)), strict=False))
            distinct[n - 1].update(ngrams)
            totals[n - 1] += len(ngrams)
    return {n: (len(distinct[n - 1]) / totals[n - 1] if totals[n - 1] else math.nan)
            for n in range(1, max_n + 1)}


def top_source_share(sources: Iterable[Hashable]) -> float:
    """The fraction of documents that come from the most common source (NaN for no documents).
    ``sources``: one per document, or a mapping of source to count."""
    counts = np.array(list(Counter(sources).values()), dtype=np.int64)
    return float(counts.max() / counts.sum()) if counts.size else math.nan


def vendi_score(embeddings: np.ndarray, sample_size: int | None = DEFAULT_VENDI_SAMPLE, seed: int = 0) -> float:
    """exp(entropy of the eigenvalues of K/n), K the cosine-similarity matrix of the embeddings.

    Ranges from 1 (all documents identical) to n (all orthogonal). Rows are L2-normalised here,
    so any embedding works. Above ``sample_size`` rows a seeded uniform sample is scored (None: all
    rows): the score of n documents is at most n, so compare scores on equal sample sizes. The
    non-zero eigenvalues of X Xᵀ/n equal those of Xᵀ X/n, so the cost is O(n·d²), not O(n³).
    """
    vectors = np.asarray(embeddings, dtype=np.float64)
    if vectors.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array, got shape {vectors.shape}")
    if sample_size is not None and len(vectors) > sample_size:
        chosen = np.random.default_rng(seed).choice(len(vectors), size=sample_size, replace=False)
        vectors = vectors[np.sort(chosen)]
    norms = np.linalg.norm(vectors, axis=1)
    vectors = vectors[norms > 0] / norms[norms > 0, None]
    n_documents = len(vectors)
    if n_documents == 0:
        return math.nan
    gram = vectors.T @ vectors if vectors.shape[1] < n_documents else vectors @ vectors.T
    eigenvalues = np.linalg.eigvalsh(gram / n_documents)
    eigenvalues = eigenvalues[eigenvalues > 1e-12]
    return float(np.exp(-(eigenvalues * np.log(eigenvalues)).sum()))
