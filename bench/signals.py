"""Benchmark of the silver table's quality, language, embedding and semantic-dedup signals (issue 5).

``python -m bench.signals`` (part of ``make bench``) measures:

* throughput, in documents per second on 1 and 2 processes, of ``udfs.heuristics.quality_rule_signals`` (Gopher,
  C4, FineWeb), ``udfs.langid.detect_language`` (beside py3langid's classify one document at a time, its
  reference) and ``EmbeddingModel.transform``, on ~300-word pieces of the
  real M4 texts, with the plain zlib-ratio loop of :mod:`bench.detect` measured in the same rounds as the
  machine-independent yardstick (the harness is :func:`bench.detect.measure_throughput`);
* semantic deduplication: ``udfs.semdedup.semantic_duplicate_of`` (chunked matrix products, connected
  components) against its brute-force reference ``semantic_duplicate_of_brute_force`` (every pair in Python,
  union-find) on embedded documents of :func:`bench.minhash_core.near_duplicate_corpus`, which plants
  near-duplicate variants with known sources: precision/recall of the removed documents against the
  reference, recall of the pairs whose exact (float64) cosine reaches the threshold, precision/recall
  against the planted duplicates, and the speed ratio of the two implementations.

Results go to ``bench/results/signals.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from bench.detect import (
    BATCH_DOCS,
    REPO_ROOT,
    Workload,
    add_ratios,
    m4_documents,
    machine_info,
    measure_throughput,
    throughput_table,
    zlib_ratios,
)
from bench.minhash_core import NearDuplicateCorpus, near_duplicate_corpus
from udfs.embeddings import EmbeddingModel
from udfs.heuristics import quality_rule_signals
from udfs.langid import DEFAULT_MAX_CHARS, _identifier, detect_language
from udfs.semdedup import semantic_duplicate_of, semantic_duplicate_of_brute_force

RESULTS_PATH = REPO_ROOT / "bench" / "results" / "signals.json"
# conf/base.yaml clusters.semdedup_threshold is 0.95; 0.9 is the lowest docs/quality.md recommends.
SEMDEDUP_THRESHOLDS = (0.9, 0.95)


def _planted_family(corpus: NearDuplicateCorpus) -> np.ndarray:
    """For each document, the index of the original its chain of edits started from."""
    family = np.arange(len(corpus.texts))
    for i in range(len(family)):
        while corpus.source[family[i]] >= 0:
            family[i] = corpus.source[family[i]]
    return family


def _removal_precision_recall(predicted: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Precision and recall of the (document, kept representative) pairs of removed documents."""
    predicted_pairs = {(i, kept) for i, kept in enumerate(predicted.tolist()) if kept is not None}
    reference_pairs = {(i, kept) for i, kept in enumerate(reference.tolist()) if kept is not None}
    hits = len(predicted_pairs & reference_pairs)
    return (hits / len(predicted_pairs) if predicted_pairs else 1.0,
            hits / len(reference_pairs) if reference_pairs else 1.0)


def _group(kept_as: np.ndarray, ids: Sequence[str]) -> np.ndarray:
    """The id each document's group keeps (its own id for a kept document)."""
    return np.array([own if kept is None else kept for own, kept in zip(ids, kept_as.tolist(), strict=True)])


def _semantic_dedup(n_docs: int, thresholds: Sequence[float], rounds: int, scale_docs: int) -> dict[str, Any]:
    corpus = near_duplicate_corpus(n_docs, seed=0)
    vectors = EmbeddingModel().fit(corpus.texts).transform(corpus.texts)
    ids = corpus.ids
    # Priorities as the job gives them (a rank), shuffled so that the kept document is not always the original.
    priority = np.random.default_rng(0).permutation(n_docs)
    family = _planted_family(corpus)
    variants = np.flatnonzero(corpus.source >= 0)
    exact_cosine = vectors.astype(np.float64) @ vectors.astype(np.float64).T
    variant_cosine = exact_cosine[variants, corpus.source[variants]]
    upper = np.triu_indices(n_docs, k=1)
    results: dict[str, Any] = {
        "documents": n_docs,
        "planted_variants": int(variants.size),
        "embedding": "EmbeddingModel() defaults (hashed TF-IDF word 1-2-grams, 256 dims), fitted on these documents",
        "cosine_variant_to_source": {name: round(float(np.percentile(variant_cosine, q)), 4)
                                     for name, q in (("min", 0), ("p5", 5), ("median", 50))},
        "cosine_unrelated_pairs_max": round(float(exact_cosine[upper][family[upper[0]] != family[upper[1]]].max()), 4),
        "thresholds": {},
    }
    for threshold in thresholds:
        chunked_seconds = []
        with threadpool_limits(limits=1):
            for _ in range(rounds):
                began = time.perf_counter()
                chunked = semantic_duplicate_of(vectors, ids, priority, threshold)
                chunked_seconds.append(time.perf_counter() - began)
        began = time.perf_counter()
        brute_force = semantic_duplicate_of_brute_force(vectors, ids, priority, threshold)
        brute_force_seconds = time.perf_counter() - began
        precision, recall = _removal_precision_recall(chunked, brute_force)
        group = _group(chunked, ids)
        exact_pairs = exact_cosine[upper] >= threshold
        pair_recall = float(np.mean(group[upper[0][exact_pairs]] == group[upper[1][exact_pairs]]))
        removed = np.array([kept is not None for kept in chunked.tolist()])
        kept_index = {identifier: position for position, identifier in enumerate(ids)}
        same_family = np.array([kept is not None and family[kept_index[kept]] == family[i]
                                for i, kept in enumerate(chunked.tolist())])
        results["thresholds"][str(threshold)] = {
            "chunked_best_seconds": round(min(chunked_seconds), 4),
            "chunked_median_seconds": round(float(np.median(chunked_seconds)), 4),
            "brute_force_seconds": round(brute_force_seconds, 2),
            "speed_ratio_chunked_over_brute_force": round(brute_force_seconds / min(chunked_seconds)),
            "documents_differing_from_brute_force": int(sum(a != b for a, b in zip(chunked.tolist(),
                                                                                     brute_force.tolist(),
                                                                                     strict=True))),
            "removed_precision_vs_brute_force": round(precision, 4),
            "removed_recall_vs_brute_force": round(recall, 4),
            "pairs_with_exact_cosine_at_or_above": int(exact_pairs.sum()),
            "pairs_within_1e-5_of_threshold": int(np.sum(np.abs(exact_cosine[upper] - threshold) < 1e-5)),
            "pair_recall_vs_exact_cosine": round(pair_recall, 4),
            "removed_documents": int(removed.sum()),
            "planted_precision": round(float(same_family[removed].mean()) if removed.any() else 1.0, 4),
            "planted_recall": round(float(same_family.sum() / variants.size), 4),
        }
    # Scaling of the chunked implementation alone, on a cluster the size docs/quality.md quotes.
    large = near_duplicate_corpus(scale_docs, seed=1)
    large_vectors = EmbeddingModel().fit(large.texts).transform(large.texts)
    large_seconds = []
    with threadpool_limits(limits=1):
        for _ in range(rounds):
            began = time.perf_counter()
            semantic_duplicate_of(large_vectors, large.ids, np.arange(scale_docs), max(thresholds))
            large_seconds.append(time.perf_counter() - began)
    results["chunked_only"] = {"documents": scale_docs, "threshold": max(thresholds),
                               "best_seconds": round(min(large_seconds), 3),
                               "median_seconds": round(float(np.median(large_seconds)), 3)}
    return results


def semdedup_table(semdedup: dict[str, Any]) -> str:
    lines = ["| threshold | chunked s (best) | brute force s | speed ratio | removed P / R vs brute force "
             "| pair recall vs exact cosine | removed | planted P / R |",
             "|---|---|---|---|---|---|---|---|"]
    for threshold, row in semdedup["thresholds"].items():
        lines.append(
            f"| {threshold} | {row['chunked_best_seconds']:.3f} | {row['brute_force_seconds']:.1f} "
            f"| {row['speed_ratio_chunked_over_brute_force']:,}x "
            f"| {row['removed_precision_vs_brute_force']:.3f} / {row['removed_recall_vs_brute_force']:.3f} "
            f"| {row['pair_recall_vs_exact_cosine']:.3f} ({row['pairs_with_exact_cosine_at_or_above']:,} pairs) "
            f"| {row['removed_documents']:,} | {row['planted_precision']:.3f} / {row['planted_recall']:.3f} |")
    return "\n".join(lines)


def py3langid_one_by_one(texts: Sequence[str]) -> list[tuple[str, float]]:
    """The reference for ``detect_language``: py3langid's own classify, one document at a time, on the same
    first 2,000 characters (detect_language walks a batch of documents at once; issue #16)."""
    identifier = _identifier(None)
    return [identifier.classify(text[:DEFAULT_MAX_CHARS]) for text in texts]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.signals", description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=4000, help="documents scored per measurement (default 4000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per measurement; the best is reported")
    parser.add_argument("--semdedup-docs", type=int, default=2000,
                        help="documents compared with the brute-force reference (quadratic in Python; default 2000)")
    parser.add_argument("--semdedup-scale-docs", type=int, default=20000,
                        help="documents of the chunked-only timing (default 20000)")
    args = parser.parse_args(argv)

    machine = machine_info()
    texts = m4_documents(args.docs)
    embedding_model = EmbeddingModel().fit(sorted(set(texts)))
    workloads: dict[str, tuple[Workload, Sequence[int]]] = {
        "zlib_ratio_loop": (zlib_ratios, (1, 2)),
        "quality_rule_signals": (quality_rule_signals, (1, 2)),
        "detect_language": (detect_language, (1, 2)),
        "py3langid_one_by_one": (py3langid_one_by_one, (1, 2)),
        "embedding_transform": (embedding_model.transform, (1, 2)),
    }
    throughput = measure_throughput(workloads, texts, rounds=args.rounds)
    add_ratios(throughput, "zlib_ratio_loop")
    print(f"throughput, {len(texts):,} documents of ~{np.mean([len(t.split()) for t in texts]):.0f} words, "
          f"best of {args.rounds}; load average at start {machine['load_average_at_start']}, {machine['cpus']} cpus")
    print(throughput_table(throughput, "zlib_ratio_loop"))

    began = time.perf_counter()
    semdedup = _semantic_dedup(args.semdedup_docs, SEMDEDUP_THRESHOLDS, max(args.rounds, 3), args.semdedup_scale_docs)
    semdedup["seconds"] = round(time.perf_counter() - began, 1)
    print(f"\nsemantic dedup, {semdedup['documents']:,} documents ({semdedup['planted_variants']} planted variants); "
          f"chunked best of {max(args.rounds, 3)}, brute force once")
    print(semdedup_table(semdedup))
    chunked_only = semdedup["chunked_only"]
    print(f"chunked alone on {chunked_only['documents']:,} documents at {chunked_only['threshold']}: "
          f"{chunked_only['best_seconds']:.2f} s (best)")

    machine["load_average_at_end"] = [round(value, 2) for value in os.getloadavg()]
    results = {
        "machine": machine,
        "method": (f"throughput: best of {args.rounds} rounds (median also given), interleaved; p processes = p "
                   f"forked workers each scoring a contiguous 1/p of the documents in batches of {BATCH_DOCS}; "
                   "BLAS limited to 1 thread per process (bench.detect.measure_throughput). semantic dedup: "
                   "one process, BLAS 1 thread, chunked best of the rounds, brute force timed once"),
        "documents": len(texts),
        "mean_words_per_document": round(float(np.mean([len(text.split()) for text in texts])), 1),
        "distinct_documents": len(set(texts)),
        "throughput": throughput,
        "semantic_dedup": semdedup,
    }
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_PATH.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"\nwritten to {RESULTS_PATH.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
