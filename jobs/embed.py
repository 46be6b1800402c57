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
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from jobs.common import gates, tables
from jobs.common.config import Config
from jobs.common.config.settings import ClustersConfig
from jobs.common.errors import ConfigError
from jobs.common.runner import Step, job_main
from jobs.common.schema import reference_sample, survivor_order
from jobs.common.tracking import RunLog
from udfs.diversity import cluster_entropy, distinct_n, top_source_share, vendi_score
from udfs.embeddings import EmbeddingModel
from udfs.kmeans import fit_centroids
from udfs.semdedup import semantic_duplicate_of
from udfs.spark import embedding_and_cluster_column, embedding_column, nearest_centroid_column

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


def fit_sample(frame: DataFrame, size: int) -> DataFrame:
    """The at most ``size`` rows of ``frame`` KMeans is fitted on, the first in doc_id-hash order, so the
    centroids do not depend on how silver is partitioned. Chosen by doc_id alone and joined back: an
    ``orderBy().limit()`` under an embedding UDF is planned as a full sort, which shuffled every text
    (15 s of embed at 100k documents); a top-k of doc_ids shuffles only ``size`` ids."""
    chosen = frame.select("doc_id").orderBy(F.xxhash64("doc_id"), "doc_id").limit(size)
    return frame.join(F.broadcast(chosen), "doc_id", "left_semi")


def _vectors(frame: DataFrame) -> np.ndarray:
    column = frame.select("embedding").toPandas()["embedding"]
    return np.stack(column.to_numpy()) if len(column) else np.zeros((0, 1))


def add_clusters(frame: DataFrame, cfg: Config, embed: Callable[[DataFrame], DataFrame] = lambda df: df,
                 hold: Callable[[DataFrame], DataFrame] = lambda df: df,
                 embed_and_assign: Callable[[DataFrame, np.ndarray], DataFrame] | None = None
                 ) -> tuple[DataFrame, DataFrame]:
    """(documents with cluster_id, one row per cluster with size and centroid). KMeans is fitted on the
    embeddings of at most ``clusters.fit_sample`` documents (:func:`fit_sample`, udfs/kmeans.py:
    scikit-learn); every document then goes to its nearest centroid. ``embed`` adds the ``embedding``
    column: the sample is taken before it, so only the sample is embedded for the fit and every other
    document once, in the same pass as its assignment (identity when ``frame`` has embeddings).
    ``embed_and_assign(frame, centroids)``, when given, adds ``embedding`` and ``cluster_id`` together
    (one Python pass) instead of ``embed`` then the assignment. ``hold`` caches the documents; the
    summary's sizes (k rows, collected here) fill that cache."""
    c = cfg.clusters
    centroids = fit_centroids(_vectors(embed(fit_sample(frame, c.fit_sample))), c.k, c.seed, c.max_iter)
    if embed_and_assign is None:
        assigned = embed(frame).withColumn("cluster_id", nearest_centroid_column(F.col("embedding"), centroids))
    else:
        assigned = embed_and_assign(frame, centroids)
    clustered = hold(assigned)
    return clustered, _cluster_summary(clustered, centroids)


def _cluster_summary(clustered: DataFrame, centroids: np.ndarray) -> DataFrame:
    sizes = dict(tuple(r) for r in clustered.groupBy("cluster_id").count().collect())
    rows = [(i, [float(x) for x in centre], sizes.get(i, 0)) for i, centre in enumerate(centroids)]
    return tables.local_frame(clustered.sparkSession, rows, "cluster_id int, centroid array<double>, size bigint")


def semdedup_partitions(candidates: DataFrame, c: ClustersConfig) -> tuple[Column, int]:
    """(the column SemDeDup groups by, the number of groups). SemDeDup compares every pair of documents in a
    group, so its cost grows with the square of group size: at 1 M documents the 8 KMeans clusters (~125,000
    documents each) took ~350 s of embed's 617 s on 2 cores. Up to ``k * semdedup_partition_size`` candidates
    the groups are the KMeans clusters; above, a finer KMeans (``ceil(candidates / semdedup_partition_size)``
    centroids, fitted on a sample of the candidates like the clusters) splits them, as the SemDeDup paper does
    (50,000 clusters for LAION-440M). Pairs that fall into different groups are not compared."""
    n = candidates.count()
    groups = -(-n // c.semdedup_partition_size)
    if groups <= c.k:
        return F.col("cluster_id"), c.k
    centroids = fit_centroids(_vectors(fit_sample(candidates, c.fit_sample)), groups, c.seed, c.max_iter)
    return nearest_centroid_column(F.col("embedding"), centroids), len(centroids)


def add_semantic_duplicates(clustered: DataFrame, c: ClustersConfig) -> tuple[DataFrame, int]:
    """(``semantic_duplicate_of`` per document, the number of SemDeDup groups): SemDeDup within each group
    (:func:`semdedup_partitions`), keeping the document that near-duplicate marking would keep (provenance,
    then quality, then date, then doc_id)."""
    candidates = clustered.where(F.col("duplicate_of").isNull()) if "duplicate_of" in clustered.columns \
        else clustered
    group, n_groups = semdedup_partitions(candidates, c)
    ranked = candidates.withColumn("_group", group).withColumn("_priority", F.row_number().over(
        Window.partitionBy("_group").orderBy(*survivor_order())))

    def per_group(frame: pd.DataFrame) -> pd.DataFrame:
        vectors = np.stack(frame["embedding"].to_numpy()).astype(np.float32)
        doc_ids = frame["doc_id"].tolist()
        kept_as = semantic_duplicate_of(vectors, doc_ids, frame["_priority"].to_numpy(), c.semdedup_threshold)
        # Not frame["doc_id"] itself: under pandas 3 it is Arrow-backed, and a group larger than one Arrow
        # batch (spark.sql.execution.arrow.maxRecordsPerBatch) arrives as several chunks, which PySpark 4.1
        # cannot send back ("Expected Array, got ChunkedArray"; found at 100k documents).
        return pd.DataFrame({"doc_id": doc_ids, "semantic_duplicate_of": kept_as})

    marks = (ranked.select("_group", "doc_id", "embedding", "_priority").groupBy("_group")
             .applyInPandas(per_group, "doc_id string, semantic_duplicate_of string"))
    return clustered.join(marks, "doc_id", "left"), n_groups


def diversity_metrics(silver: DataFrame, cfg: Config) -> dict[str, float]:
    """Diversity of the documents a mixture may use (not marked as duplicates). The driver collects counts
    per cluster and per source and a bounded sample, never a row per document."""
    kept = silver.where(F.col("semantic_duplicate_of").isNull())
    if "duplicate_of" in silver.columns:
        kept = kept.where(F.col("duplicate_of").isNull())
    per_cluster, per_source = ({r[0]: r[1] for r in kept.groupBy(key).count().collect()}
                               for key in ("cluster_id", "source"))
    # One deterministic sample serves both estimates: the order is total (doc_id is unique), so the first
    # n rows of the longer sample are the n-row sample.
    sample = (kept.orderBy(F.xxhash64("doc_id"), "doc_id").select("text", "embedding")
              .limit(max(cfg.clusters.distinct_n_sample, cfg.clusters.vendi_sample)).toPandas())
    texts = sample["text"].head(cfg.clusters.distinct_n_sample).tolist()
    vectors = sample["embedding"].head(cfg.clusters.vendi_sample)
    metrics = {"cluster_entropy": cluster_entropy(per_cluster, n_clusters=cfg.clusters.k),
               "top_source_share": top_source_share(per_source),
               "vendi_score": vendi_score(np.stack(vectors.to_numpy()), sample_size=None) if len(vectors) else 0.0}
    metrics.update({f"distinct_{n}": value for n, value in distinct_n(texts).items()})
    return metrics


def with_embeddings(silver: DataFrame, cfg: Config, model_bytes: bytes | None) -> DataFrame:
    return silver.withColumn("embedding", embedding_column(F.col("text"), model_bytes, cfg.embeddings.model_path))


def with_embeddings_and_clusters(silver: DataFrame, cfg: Config, model_bytes: bytes | None,
                                 centroids: np.ndarray) -> DataFrame:
    """``silver`` with ``embedding`` and ``cluster_id`` from one UDF, so the embeddings are not sent back
    to the JVM and out again to be assigned: ~10 % of the held pass (50,000 documents 11.53 -> 10.32 s,
    docs/performance.md). What the pass spends beyond the embedding itself (since session 20 0.225 ms a
    document in one process) is Spark's side of it, not measured apart yet."""
    both = embedding_and_cluster_column(F.col("text"), centroids, model_bytes, cfg.embeddings.model_path)
    return (silver.withColumn("_embedded", both)
            .withColumns({"embedding": F.col("_embedded.embedding"), "cluster_id": F.col("_embedded.cluster_id")})
            .drop("_embedded"))


def embedding_settings_hash(cfg: Config) -> str:
    """Hash of the settings ``embedding`` and ``cluster_id`` depend on: the embeddings section and KMeans's
    k, iterations and seed; not SemDeDup's threshold nor the diversity samples."""
    c = cfg.clusters
    settings = {"embeddings": cfg.embeddings.model_dump(mode="json"), "k": c.k, "max_iter": c.max_iter, "seed": c.seed,
                "fit_sample": c.fit_sample}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def embed_and_cluster(silver: DataFrame, cfg: Config, log: RunLog,
                      hold: Callable[[DataFrame], DataFrame]) -> tuple[DataFrame, DataFrame]:
    """Fit the embedding model and KMeans, then embed and assign every document of the cached ``silver`` in
    one pass, held: (documents with ``embedding`` and ``cluster_id``, one row per cluster)."""
    model_bytes = fit_embedding_model(silver, cfg)
    if model_bytes:
        log.artifact_bytes(model_bytes, "embeddings/hashed_tfidf.npz")
    clustered, clusters = add_clusters(silver, cfg, lambda df: with_embeddings(df, cfg, model_bytes), hold,
                                       lambda df, centroids: with_embeddings_and_clusters(df, cfg, model_bytes,
                                                                                          centroids))
    silver.unpersist()  # the cluster sizes read every row: the held clustered frame has them
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
    # Silver is read once, into a cache that the fit samples and the embeddings share. A cache is released
    # once the next holds its rows, so no more than two copies of silver are held at a time (on local disk).
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
        marked, groups = add_semantic_duplicates(clustered, cfg.clusters)
        marked = hold(marked)
        silver_version = gates.publish(cfg, marked, "silver", "silver_embed", log,
                                       lambda df, r: tables.overwrite(df, r, run_id=log.run_id))
        gates.publish(cfg, clusters.withColumn("silver_version", F.lit(silver_version)), "clusters", "clusters",
                      log, lambda df, r: tables.overwrite(df, r, run_id=log.run_id))
    finally:
        for frame in held:
            frame.unpersist()
    # From the published version, not from `marked`: Delta's overwrite of silver invalidated every cache
    # built on silver, so reading `marked` again embedded and deduplicated every document a second time
    # (~45 s of a 175 s embed at 100k documents).
    published = tables.read_table(spark, tables.table_ref(cfg, "silver"), silver_version)
    semantic = published.where(F.col("semantic_duplicate_of").isNotNull()).count()
    metrics = diversity_metrics(published, cfg)

    for name, value in metrics.items():
        log.metric(f"diversity.{name}", value)
    log.counts("marked", {"semantic_duplicate": semantic})  # marked only: the sample step excludes
    sizes = sorted((r["size"] for r in tables.read_table(spark, tables.table_ref(cfg, "clusters")).collect()),
                   reverse=True)
    return {"clusters": len(sizes), "largest_cluster": sizes[0] if sizes else 0, "semdedup_groups": groups,
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
