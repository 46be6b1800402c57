"""Embed: document embeddings, KMeans clusters, semantic dedup (SemDeDup) and diversity metrics.

Adds to silver: ``embedding`` (array<float>), ``cluster_id`` and ``semantic_duplicate_of`` (the
kept document of a group whose pairwise cosine is at or above ``clusters.semdedup_threshold``
within a cluster; Abbas et al., 2023). Writes one row per cluster (size, centroid, the silver version
and the hash of the settings the clusters came from) to the clusters table, and logs diversity metrics
of the silver version to MLflow: normalised cluster entropy, distinct-n, share of the top source and a
Vendi-score estimate.

Documents already marked as near duplicates (``duplicate_of``) are embedded and clustered but take
no part in semantic dedup: they are out of the mixture either way.

SemDeDup applies its threshold here, not in sample: a semantic-duplicate group is a connected component
of the pairs at or above it and keeps one document of the whole group, so the mark is not a
per-document score that sample could cut later (docs/quality.md). Changing only that threshold (or the
diversity samples) does not embed or cluster again: when silver is still the version this step last
published and the embedding and KMeans settings are those recorded in the clusters table, its
``embedding`` and ``cluster_id`` columns and the clusters table are reused and only SemDeDup runs.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from jobs.common import gates, tables
from jobs.common.config import Config
from jobs.common.errors import ConfigError
from jobs.common.runner import Step, job_main
from jobs.common.schema import reference_sample, survivor_order
from jobs.common.tracking import RunLog
from udfs.diversity import cluster_entropy, distinct_n, top_source_share, vendi_score
from udfs.embeddings import EmbeddingModel
from udfs.kmeans import fit_centroids
from udfs.semdedup import semantic_duplicate_of
from udfs.spark import embedding_column, nearest_centroid_column

PRODUCED = ("embedding", "cluster_id", "semantic_duplicate_of")


def fit_embedding_model(silver: DataFrame, cfg: Config) -> bytes | None:
    """IDF weights fitted on a deterministic sample that prefers pre-AI and human documents (the
    reference distribution); None for the sentence-transformers backend, which needs no fitting."""
    e = cfg.embeddings
    if e.backend == "sentence-transformers":
        if not e.model_path:
            raise ConfigError("embeddings.backend sentence-transformers needs embeddings.model_path (a local folder)")
        return None
    sample = reference_sample(silver, e.fit_sample)
    model = EmbeddingModel(dim=e.dim, n_features=e.n_features, ngram_range=(1, e.ngram_max), seed=e.seed)
    return model.fit(sample).to_bytes()


def add_clusters(embedded: DataFrame, cfg: Config) -> tuple[DataFrame, DataFrame]:
    """(documents with cluster_id, one row per cluster with size and centroid). KMeans is fitted on at most
    ``clusters.fit_sample`` embeddings taken in doc_id-hash order (udfs/kmeans.py: scikit-learn), so the
    clusters do not depend on how silver is partitioned; every document then goes to its nearest centroid."""
    c = cfg.clusters
    sample = (embedded.orderBy(F.xxhash64("doc_id"), "doc_id").limit(c.fit_sample)
              .select("embedding").toPandas()["embedding"])
    centroids = fit_centroids(np.stack(sample.to_numpy()) if len(sample) else np.zeros((0, 1)), c.k, c.seed,
                              c.max_iter)
    clustered = embedded.withColumn("cluster_id", nearest_centroid_column(F.col("embedding"), centroids))
    sizes = clustered.groupBy("cluster_id").count()
    spark = embedded.sparkSession
    summary = (tables.local_frame(spark, [(i, [float(x) for x in centre]) for i, centre in enumerate(centroids)],
                                 "cluster_id int, centroid array<double>")
               .join(sizes, "cluster_id", "left").fillna(0, ["count"]).withColumnRenamed("count", "size"))
    return clustered, summary


def add_semantic_duplicates(clustered: DataFrame, threshold: float) -> DataFrame:
    """``semantic_duplicate_of`` per document, SemDeDup within each cluster, keeping the document
    that near-duplicate marking would keep (provenance, then quality, then date, then doc_id)."""
    candidates = clustered.where(F.col("duplicate_of").isNull()) if "duplicate_of" in clustered.columns \
        else clustered
    ranked = candidates.withColumn("_priority", F.row_number().over(
        Window.partitionBy("cluster_id").orderBy(*survivor_order())))

    def per_cluster(frame: pd.DataFrame) -> pd.DataFrame:
        vectors = np.stack(frame["embedding"].to_numpy()).astype(np.float32)
        doc_ids = frame["doc_id"].tolist()
        kept_as = semantic_duplicate_of(vectors, doc_ids, frame["_priority"].to_numpy(), threshold)
        # Not frame["doc_id"] itself: under pandas 3 it is Arrow-backed, and a cluster larger than one Arrow
        # batch (spark.sql.execution.arrow.maxRecordsPerBatch) arrives as several chunks, which PySpark 4.1
        # cannot send back ("Expected Array, got ChunkedArray"; found at 100k documents).
        return pd.DataFrame({"doc_id": doc_ids, "semantic_duplicate_of": kept_as})

    marks = (ranked.select("cluster_id", "doc_id", "embedding", "_priority").groupBy("cluster_id")
             .applyInPandas(per_cluster, "doc_id string, semantic_duplicate_of string"))
    return clustered.join(marks, "doc_id", "left")


def diversity_metrics(silver: DataFrame, cfg: Config) -> dict[str, float]:
    """Diversity of the documents a mixture may use (not marked as duplicates)."""
    kept = silver.where(F.col("semantic_duplicate_of").isNull())
    if "duplicate_of" in silver.columns:
        kept = kept.where(F.col("duplicate_of").isNull())
    columns = kept.select("cluster_id", "source").toPandas()
    # One deterministic sample serves both estimates: the order is total (doc_id is unique), so the first
    # n rows of the longer sample are the n-row sample.
    sample = (kept.orderBy(F.xxhash64("doc_id"), "doc_id").select("text", "embedding")
              .limit(max(cfg.clusters.distinct_n_sample, cfg.clusters.vendi_sample)).toPandas())
    texts = sample["text"].head(cfg.clusters.distinct_n_sample).tolist()
    vectors = sample["embedding"].head(cfg.clusters.vendi_sample)
    metrics = {"cluster_entropy": cluster_entropy(columns["cluster_id"], n_clusters=cfg.clusters.k),
               "top_source_share": top_source_share(columns["source"]),
               "vendi_score": vendi_score(np.stack(vectors.to_numpy()), sample_size=None) if len(vectors) else 0.0}
    metrics.update({f"distinct_{n}": value for n, value in distinct_n(texts).items()})
    return metrics


def with_embeddings(silver: DataFrame, cfg: Config, model_bytes: bytes | None) -> DataFrame:
    return silver.withColumn("embedding", embedding_column(F.col("text"), model_bytes, cfg.embeddings.model_path))


def embedding_settings_hash(cfg: Config) -> str:
    """Hash of the settings ``embedding`` and ``cluster_id`` depend on: the embeddings section and KMeans's
    k, iterations and seed; not SemDeDup's threshold nor the diversity samples."""
    c = cfg.clusters
    settings = {"embeddings": cfg.embeddings.model_dump(mode="json"), "k": c.k, "max_iter": c.max_iter, "seed": c.seed,
                "fit_sample": c.fit_sample}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def embed_and_cluster(silver: DataFrame, cfg: Config, log: RunLog,
                      hold: Callable[[DataFrame], DataFrame]) -> tuple[DataFrame, DataFrame]:
    """Fit the embedding model, embed every document of the cached ``silver`` and fit KMeans: (documents
    with ``embedding`` and ``cluster_id``, one row per cluster)."""
    model_bytes = fit_embedding_model(silver, cfg)
    if model_bytes:
        log.artifact_bytes(model_bytes, "embeddings/hashed_tfidf.npz")
    embedded = hold(with_embeddings(silver, cfg, model_bytes))
    clustered, clusters = add_clusters(embedded, cfg)
    silver.unpersist()  # KMeans has read every row: embedded holds them
    return clustered, clusters.withColumn("embedding_settings_hash", F.lit(embedding_settings_hash(cfg)))


@dataclass(frozen=True)
class Reusable:
    """What a run with only SemDeDup's threshold changed reuses: ``clustered``, silver as this step last
    published it (``embedding`` and ``cluster_id`` included, ``semantic_duplicate_of`` dropped), and
    ``clusters``, the clusters table without its ``silver_version``."""

    clustered: DataFrame
    clusters: DataFrame


def reusable_clusters(spark: SparkSession, cfg: Config) -> tuple[Reusable | None, str]:
    """Silver's embeddings and cluster ids and the clusters table, when a fresh fit would give them again:
    silver is still the version this step published with them (no document, text, provenance or
    near-duplicate mark changed since) and the settings they depend on are unchanged; else None. And why."""
    clusters_ref, silver_ref = tables.table_ref(cfg, "clusters"), tables.table_ref(cfg, "silver")
    if not tables.exists(spark, clusters_ref):
        return None, "no clusters yet"
    clusters = tables.read_table(spark, clusters_ref)
    if "embedding_settings_hash" not in clusters.columns:
        return None, "the clusters table does not record its embedding settings"
    recorded = [tuple(r) for r in clusters.select("silver_version", "embedding_settings_hash").distinct().collect()]
    silver_version, settings_hash = tables.current_version(spark, silver_ref), embedding_settings_hash(cfg)
    if [hash_ for _, hash_ in recorded] != [settings_hash]:
        return None, f"embedding or clustering settings changed (clusters {recorded}, now {settings_hash})"
    if [version for version, _ in recorded] != [silver_version]:
        return None, f"silver changed since the clusters were made (clusters {recorded}, silver {silver_version})"
    published = tables.read_table(spark, silver_ref, silver_version)
    return (Reusable(published.drop("semantic_duplicate_of"), clusters.drop("silver_version")),
            f"silver version {silver_version} and embedding settings unchanged: embeddings and clusters reused")


def run(spark: SparkSession, cfg: Config, log: RunLog) -> dict[str, Any]:
    reusable, why = reusable_clusters(spark, cfg)
    mode = "full" if reusable is None else "reuse"
    log.tags({"embed.mode": mode, "embed.mode_reason": why})
    # Each table version is read once: silver into a cache that the fit sample and the embeddings share;
    # the published version not at all, since the cached `marked` holds its rows. A cache is released once
    # the next holds its rows, so no more than two copies of silver are held at a time (on local disk).
    held: list[DataFrame] = []

    def hold(frame: DataFrame) -> DataFrame:
        held.append(tables.stage(frame))
        return frame

    try:
        if reusable is None:
            silver = tables.read_table(spark, tables.table_ref(cfg, "silver"))
            silver = hold(silver.drop(*[c for c in PRODUCED if c in silver.columns]))
            clustered, clusters = embed_and_cluster(silver, cfg, log, hold)
        else:
            clustered, clusters = hold(reusable.clustered), reusable.clusters
        marked = hold(add_semantic_duplicates(clustered, cfg.clusters.semdedup_threshold))
        silver_version = gates.publish(cfg, marked, "silver", "silver_embed", log,
                                       lambda df, r: tables.overwrite(df, r, run_id=log.run_id))
        gates.publish(cfg, clusters.withColumn("silver_version", F.lit(silver_version)), "clusters", "clusters",
                      log, lambda df, r: tables.overwrite(df, r, run_id=log.run_id))
        for frame in held[:-1]:
            frame.unpersist()  # marked holds every row now
        semantic = marked.where(F.col("semantic_duplicate_of").isNotNull()).count()
        metrics = diversity_metrics(marked, cfg)
    finally:
        for frame in held:
            frame.unpersist()

    for name, value in metrics.items():
        log.metric(f"diversity.{name}", value)
    log.counts("marked", {"semantic_duplicate": semantic})  # marked only: the sample step excludes
    sizes = sorted((r["size"] for r in tables.read_table(spark, tables.table_ref(cfg, "clusters")).collect()),
                   reverse=True)
    return {"clusters": len(sizes), "largest_cluster": sizes[0] if sizes else 0,
            "marked": {"semantic_duplicate": semantic},
            "diversity": {k: round(v, 3) for k, v in metrics.items()}, "mode": mode}


STEP = Step(
    name="embed", run=run, inputs=("silver",), outputs=("silver", "clusters"),
    config_sections=("embeddings", "clusters"),
    help="Add embeddings, KMeans cluster ids and SemDeDup semantic-duplicate marks to silver; write cluster "
         "sizes and centroids; log diversity metrics (cluster entropy, distinct-n, top-source share, Vendi).",
)


def main(argv: list[str] | None = None) -> None:
    from jobs.pipeline import STEPS  # the entry point learns the pipeline order from the registry

    job_main(STEP, argv, STEPS)


if __name__ == "__main__":
    main()
