"""Near-duplicate detection: MinHash-LSH clusters in silver, marked, never deleted (docs/dedup.md).

Adds to silver: ``near_duplicate_cluster_id`` (the smallest doc_id of the document's cluster; null for
a document without near duplicates), ``duplicate_of`` (the doc_id of the cluster's kept representative;
null for the representative and for singletons) and ``duplicate_reason`` (``near_duplicate`` or null).
Nothing is removed here: the sample step decides to leave marked documents out, and silver keeps them so
a user can inspect what was marked and why.

The Spark path is the single-process reference of :mod:`udfs.lsh` sharded, step for step, so the two
give identical clusters on the same input (a test checks it):

1. signatures and band hashes in Arrow batches (``mapInArrow`` over :mod:`udfs.neardup`, which holds every
   function the Python workers run); texts without a shingle get null band hashes and join no bucket;
2. candidate pairs from equal ``(band, hash)``; a bucket of more than ``max_bucket_size`` documents links
   each member only to its smallest doc_id, so a giant bucket costs linear, not quadratic, work;
3. verification of each distinct pair by exact shingle Jaccard (or the signature estimate) >= threshold;
4. connected components of the verified pairs in Spark (:mod:`jobs.common.components`);
5. one representative per cluster by :func:`jobs.common.schema.survivor_order` (pre-AI archive > human >
   unknown > synthetic, then quality, then earliest date, then doc_id): deterministic.

Incremental mode. The band index (table ``band_index``) is the detector's state: one row per (document,
band) with the band hash, the hash of the settings that produced it, and the document's cluster id as
of the last run. When silver holds documents the index lacks, only those get signatures; candidate pairs
are new x new and new x indexed (a join on band and hash); new verified pairs merge the existing clusters,
each as one node, with the new documents; representatives are chosen again over the merged clusters
(provenance in silver may have changed). The result equals a full run on the union, except inside a
bucket that grew past ``max_bucket_size`` between runs, where the incremental result keeps the pairs it
verified while the bucket was small. A full rebuild happens instead when there is no index, when the
settings its band hashes depend on differ (results from different settings are not comparable), or when
an indexed document is no longer in silver. When only the verification settings changed (``threshold``,
``verification``), the run re-verifies: the index's band hashes stand in for the signatures of indexed
documents, only new documents are signed, and every candidate pair is verified again and clustered from
scratch, which gives what a full run gives.

The step applies its threshold itself rather than leaving it to sample: a cluster is a connected component
of the pairs at or above it, and the kept representative is chosen over the whole cluster, so the marks
are not a per-document score that a later threshold could cut (docs/dedup.md, "Why this step applies its
threshold").
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, DoubleType, LongType, StringType, StructField, StructType

from jobs.common import gates, tables
from jobs.common.components import connected_components
from jobs.common.config import Config
from jobs.common.runner import Step, job_main
from jobs.common.schema import survivor_order
from jobs.common.tracking import RunLog
from udfs.neardup import (
    PROPERTY_PREFIX,
    VERIFICATION_SETTINGS,
    LshSettings,
    band_hash_batches,
    bucket_pair_batches,
    paired_text_similarity_batches,
)

NEAR_DUPLICATE_COLUMNS = ("near_duplicate_cluster_id", "duplicate_of", "duplicate_reason")
REASON = "near_duplicate"
# Most rows keyed by document id (~50-100 bytes each) broadcast to join them where silver is read: the
# pairs' side rows of verification, the new documents of a batch, clusters and their marks.
_BROADCAST_IDS = 4_000_000
# Bucket rows per partition of the candidate stage: the partition count follows the data, not
# spark.sql.shuffle.partitions. Each partition is sorted in memory (~100 bytes a row), so this bounds a
# task's memory; fewer, larger tasks cut the per-task Python overhead (measurements in docs/dedup.md).
_BUCKET_ROWS_PER_PARTITION = 2_000_000

BAND_HASHES_SCHEMA = StructType([StructField("doc_id", StringType()),
                                 StructField("band_hashes", ArrayType(LongType()))])
PAIRS_SCHEMA = StructType([StructField("doc_a", StringType()), StructField("doc_b", StringType())])
SIMILARITY_SCHEMA = StructType([StructField("doc_a", StringType()), StructField("doc_b", StringType()),
                                StructField("similarity", DoubleType())])


# --- Spark stages --------------------------------------------------------------------------------

def document_band_hashes(texts: DataFrame, settings: LshSettings) -> DataFrame:
    """``(doc_id, band_hashes)`` of every ``(doc_id, text)`` row, computed in Arrow batches."""
    return texts.select("doc_id", "text").mapInArrow(partial(band_hash_batches, settings=settings),
                                                     BAND_HASHES_SCHEMA)


def explode_bands(band_hash_rows: DataFrame) -> DataFrame:
    """``(doc_id, band, hash)``, one row per band; ``hash`` null for a text without shingles."""
    return band_hash_rows.select("doc_id", F.posexplode("band_hashes").alias("band", "hash"))


def candidate_pairs(new_keys: DataFrame, indexed_keys: DataFrame | None, max_bucket_size: int,
                    partitions: int) -> DataFrame:
    """Distinct ``(doc_a, doc_b)``, ``doc_a < doc_b``, that share a ``(band, hash)`` bucket and include at
    least one new document. ``new_keys`` and ``indexed_keys`` are ``(doc_id, band, hash)`` rows with
    non-null hashes; indexed documents are only paired with new ones (their own pairs were verified
    when they were indexed). A bucket with more than ``max_bucket_size`` members gives only the pairs
    (smallest doc_id, member), as :func:`udfs.lsh.candidate_pairs` does.

    Buckets are formed by a plain shuffle on the hash into ``partitions`` partitions and numpy within each
    (:func:`bucket_pair_batches`), not by a Spark ``groupBy`` + ``collect_list``, which falls back to
    sort-based aggregation because almost every bucket holds one document (docs/dedup.md)."""
    rows = new_keys.select("doc_id", "hash", F.lit(True).alias("is_new"))
    if indexed_keys is not None:
        touched = indexed_keys.join(new_keys.select("band", "hash").distinct(), ["band", "hash"], "left_semi")
        rows = rows.unionByName(touched.select("doc_id", "hash", F.lit(False).alias("is_new")))
    return (rows.repartition(partitions, "hash")
            .mapInArrow(partial(bucket_pair_batches, max_bucket_size=max_bucket_size), PAIRS_SCHEMA)
            .distinct())


def _broadcast_if_few(ids: DataFrame, at_most: int) -> DataFrame:
    """``ids`` (rows keyed by document id, at most ``at_most`` of them) with a broadcast hint when there are
    few enough: a join with the texts then selects them where they are read instead of shuffling every
    text. The bound is usually a count of a materialised frame, so no extra Spark job counts ``ids``."""
    return F.broadcast(ids) if at_most <= _BROADCAST_IDS else ids


def verify_pairs(pairs: DataFrame, texts: DataFrame, settings: LshSettings) -> DataFrame:
    """``(doc_a, doc_b, similarity)`` of the candidate pairs whose similarity is at least the threshold.
    ``pairs`` should be materialised (its count is read to choose the join).

    Each pair becomes two rows, doc_a's text and doc_b's, from one join of the texts with the pairs
    (broadcast while there are few enough pairs: every text is then read where it lies and only the
    needed ones move); one shuffle by pair, sorted within partitions, puts a pair's two texts next to each
    other for :func:`udfs.neardup.paired_text_similarity_batches`: one pass over the texts instead of two
    joins of the pairs with them (docs/dedup.md)."""
    sides = pairs.select(F.col("doc_a").alias("doc_id"), "doc_a", "doc_b", F.lit(0).alias("side")).unionByName(
        pairs.select(F.col("doc_b").alias("doc_id"), "doc_a", "doc_b", F.lit(1).alias("side")))
    rows = (texts.select("doc_id", "text").join(_broadcast_if_few(sides, 2 * pairs.count()), "doc_id")
            .select("doc_a", "doc_b", "side", "text")
            .repartition("doc_a", "doc_b").sortWithinPartitions("doc_a", "doc_b", "side"))
    scored = rows.mapInArrow(partial(paired_text_similarity_batches, settings=settings), SIMILARITY_SCHEMA)
    return scored.where(F.col("similarity") >= settings.threshold)


def merge_clusters(edges: DataFrame, previous: DataFrame | None) -> tuple[DataFrame, int]:
    """``(doc_id, near_duplicate_cluster_id)`` for every document in a cluster, and the rounds connected
    components took. ``previous`` holds the clusters of an earlier run, ``(doc_id, near_duplicate_cluster_id)``;
    each of them enters the graph as one node (its id, the cluster's smallest doc_id), so the new edges
    merge whole clusters and the ids stay the smallest doc_id of each merged cluster."""
    if previous is None:
        components = connected_components(edges, "doc_a", "doc_b")
        return components.labels.select(F.col("node").alias("doc_id"),
                                        F.col("component").alias("near_duplicate_cluster_id")), components.rounds
    old = previous.select("doc_id", F.col("near_duplicate_cluster_id").alias("old_cluster"))

    def as_node(column: str) -> Column:
        return F.coalesce(F.col(f"_{column}.old_cluster"), F.col(column))

    mapped = (edges.join(old.alias("_doc_a"), F.col("doc_a") == F.col("_doc_a.doc_id"), "left")
              .join(old.alias("_doc_b"), F.col("doc_b") == F.col("_doc_b.doc_id"), "left")
              .select(as_node("doc_a").alias("doc_a"), as_node("doc_b").alias("doc_b")))
    components = connected_components(mapped, "doc_a", "doc_b")
    labels = components.labels
    old_members = (old.join(labels, old["old_cluster"] == labels["node"], "left")
                   .select("doc_id", F.coalesce("component", "old_cluster").alias("near_duplicate_cluster_id")))
    # A node that is not an old cluster id is a document outside every old cluster (new, or an old singleton).
    others = (labels.join(old.select(F.col("old_cluster").alias("node")).distinct(), "node", "left_anti")
              .select(F.col("node").alias("doc_id"), F.col("component").alias("near_duplicate_cluster_id")))
    return old_members.unionByName(others), components.rounds


def choose_representatives(silver: DataFrame, clusters: DataFrame) -> DataFrame:
    """``(doc_id, near_duplicate_cluster_id, duplicate_of, duplicate_reason)`` for every clustered document:
    the first member by :func:`survivor_order` is kept, the others point at it.

    ``clusters`` should be materialised: its count decides whether it, and the marks (one per clustered
    document), are broadcast, so that neither joining them to silver here nor :func:`with_marks` shuffles
    silver's rows (texts, embeddings)."""
    clustered = clusters.count()
    ordered = Window.partitionBy("near_duplicate_cluster_id").orderBy(*survivor_order())
    members = silver.join(_broadcast_if_few(clusters, clustered), "doc_id")
    is_duplicate = F.row_number().over(ordered) > 1
    marks = members.select(
        "doc_id", "near_duplicate_cluster_id",
        F.when(is_duplicate, F.first("doc_id").over(ordered)).alias("duplicate_of"),
        F.when(is_duplicate, F.lit(REASON)).alias("duplicate_reason"))
    return _broadcast_if_few(marks, clustered)


def with_marks(silver: DataFrame, marks: DataFrame | None) -> DataFrame:
    """``silver`` with the near-duplicate columns replaced by ``marks`` (all null when None)."""
    base = silver.drop(*[c for c in NEAR_DUPLICATE_COLUMNS if c in silver.columns])
    if marks is None:
        return base.withColumns({c: F.lit(None).cast("string") for c in NEAR_DUPLICATE_COLUMNS})
    return base.join(marks.select("doc_id", *NEAR_DUPLICATE_COLUMNS), "doc_id", "left")


@dataclass(frozen=True)
class NearDuplicates:
    """What one detection produced. ``signed``: ``(doc_id, band_hashes)`` of the documents that got
    signatures in this run; ``candidates``: candidate pairs; ``edges``: verified pairs with their
    similarity; ``clusters``: every clustered document (old and new) with its cluster id; ``rounds``:
    connected-components rounds; ``seconds``: wall time of each stage."""

    signed: DataFrame
    candidates: DataFrame
    edges: DataFrame
    clusters: DataFrame
    rounds: int
    seconds: dict[str, float]


def find_near_duplicates(texts: DataFrame, settings: LshSettings, index: DataFrame | None = None,
                         reverify: bool = False) -> NearDuplicates:
    """Near-duplicate clusters of the ``(doc_id, text)`` rows of ``texts``: of all of them (``index`` None),
    or signing only the documents the band ``index`` lacks, then either incrementally (merging with the
    index's clusters) or, with ``reverify``, verifying every candidate pair of index and new documents
    again (the index's band hashes serve as the indexed documents' signatures; its clusters, found at
    another threshold, are ignored). Each stage's result is materialised once (``localCheckpoint``): later
    stages read it more than once."""
    indexed_keys = previous = None
    if index is None:
        new_texts, documents_banded = texts, None
    else:
        indexed_docs = index.where(F.col("band") == 0).select("doc_id", "near_duplicate_cluster_id")
        new_ids = texts.select("doc_id").join(indexed_docs, "doc_id", "left_anti")
        new_texts = texts.join(_broadcast_if_few(new_ids, new_ids.count()), "doc_id", "left_semi")
        indexed_keys = index.where(F.col("hash").isNotNull()).select("doc_id", "band", "hash")
        documents_banded = indexed_docs.count() if reverify else None
        if not reverify:
            previous = indexed_docs.where(F.col("near_duplicate_cluster_id").isNotNull())
    seconds: dict[str, float] = {}
    started = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal started
        now = time.perf_counter()
        seconds[stage], started = now - started, now

    signed = document_band_hashes(new_texts, settings).localCheckpoint()
    lap("signatures")
    new_keys = explode_bands(signed).where(F.col("hash").isNotNull())
    documents = signed.count()
    if documents_banded is not None:  # reverify: every indexed document pairs like a new one
        new_keys, indexed_keys, documents = new_keys.unionByName(indexed_keys), None, documents + documents_banded
    partitions = max(1, -(-documents * settings.bands // _BUCKET_ROWS_PER_PARTITION))
    candidates = candidate_pairs(new_keys, indexed_keys, settings.max_bucket_size, partitions).localCheckpoint()
    lap("candidates")
    edges = verify_pairs(candidates, texts, settings).localCheckpoint()
    lap("verification")
    clusters, rounds = merge_clusters(edges, previous)
    clusters = clusters.localCheckpoint()
    lap("components")
    return NearDuplicates(signed, candidates, edges, clusters, rounds, seconds)


def index_updates(found: NearDuplicates, settings: LshSettings, index: DataFrame | None,
                  reverify: bool = False) -> DataFrame:
    """Band-index rows to write: every band of every newly signed document, plus (incremental) the rows
    of indexed documents whose cluster id changed, or (``reverify``) every indexed row with its new
    cluster id: the whole index."""
    banded = explode_bands(found.signed)
    if index is not None and reverify:
        banded = banded.unionByName(index.select("doc_id", "band", "hash"))
    new_rows = (banded.join(found.clusters, "doc_id", "left")
                .withColumn("settings_hash", F.lit(settings.index_settings_hash)))
    columns = ["doc_id", "band", "hash", "settings_hash", "near_duplicate_cluster_id"]
    if index is None or reverify:
        return new_rows.select(*columns)
    recorded = index.where(F.col("band") == 0).select("doc_id", F.col("near_duplicate_cluster_id").alias("old"))
    changed = (found.clusters.join(recorded, "doc_id")
               .where(~F.col("near_duplicate_cluster_id").eqNullSafe(F.col("old"))).drop("old"))
    return new_rows.select(*columns).unionByName(
        index.drop("near_duplicate_cluster_id").join(changed, "doc_id").select(*columns))


@dataclass(frozen=True)
class IndexUse:
    """How a run uses the published band index: ``mode`` ``full`` (``index`` None: rebuild it),
    ``incremental`` (extend it and its clusters) or ``reverify`` (reuse its band hashes, verify every
    candidate pair again); ``reason`` says why."""

    index: DataFrame | None
    mode: str
    reason: str


def previous_index(spark: SparkSession, cfg: Config, settings: LshSettings, silver: DataFrame) -> IndexUse:
    """The band index to extend or re-verify, or None and why the run rebuilds it fully."""
    ref = tables.table_ref(cfg, "band_index")
    if not tables.exists(spark, ref):
        return IndexUse(None, "full", "no band index yet")
    recorded = tables.properties(spark, ref)
    banded_with = recorded.get(f"{PROPERTY_PREFIX}index_settings_hash")
    if banded_with != settings.index_settings_hash:
        return IndexUse(None, "full",
                        f"band settings changed (index {banded_with}, now {settings.index_settings_hash})")
    index = tables.read_table(spark, ref)
    gone = index.where(F.col("band") == 0).join(silver, "doc_id", "left_anti")
    if gone.limit(1).count():
        return IndexUse(None, "full", "indexed documents are no longer in silver")
    if recorded.get(f"{PROPERTY_PREFIX}settings_hash") == settings.settings_hash:
        return IndexUse(index, "incremental", "extending the band index")
    was = {key: recorded.get(f"{PROPERTY_PREFIX}{key}") for key in VERIFICATION_SETTINGS}
    now = {key: str(getattr(settings, key)) for key in VERIFICATION_SETTINGS}
    return IndexUse(index, "reverify", f"verification settings changed ({was} -> {now}): band hashes reused, "
                                       "every candidate pair verified again")


def read_silver(spark: SparkSession, cfg: Config) -> DataFrame:
    """Silver with the columns detection and the choice of representatives need, without the marks of an
    earlier run of this step (a rerun on unchanged silver, e.g. after a new threshold, finds them there)."""
    ref = tables.table_ref(cfg, "silver")
    silver = tables.read_table(spark, ref)
    tables.require_columns(silver, ("doc_id", "text", "pre_ai_archive", "origin", "created_at", "source",
                                    "alpha_ratio", "duplicate_line_fraction"), f"silver table {ref}")
    return silver.drop(*[c for c in NEAR_DUPLICATE_COLUMNS if c in silver.columns])


def publish_silver(cfg: Config, log: RunLog, marked: DataFrame, properties: dict[str, str]) -> None:
    """Silver with its near-duplicate marks, through the ``silver_neardup`` gate."""
    gates.publish(cfg, marked, "silver", "silver_neardup", log, lambda df, ref: tables.overwrite(
        df, ref, run_id=log.run_id, properties=properties))


def write_band_index(cfg: Config, log: RunLog, found: NearDuplicates, settings: LshSettings, used: IndexUse) -> None:
    """A rebuilt or re-verified index replaces the table (with the settings as properties); an extended
    one is merged in by (doc_id, band)."""
    index, reverify = used.index, used.mode == "reverify"
    ref, updates = tables.table_ref(cfg, "band_index"), index_updates(found, settings, index, reverify)
    if index is None or reverify:
        tables.overwrite(updates, ref, run_id=log.run_id, properties=settings.table_properties())
    else:
        tables.merge_upsert(updates, ref, ["doc_id", "band"], run_id=log.run_id)


def detection_metrics(published: DataFrame, found: NearDuplicates) -> dict[str, Any]:
    """Counts of the published silver and of each stage, stage seconds, and the share of documents marked."""
    stats = published.agg(F.count("*").alias("documents_in"),
                          F.countDistinct("near_duplicate_cluster_id").alias("clusters"),
                          F.count("duplicate_of").alias("duplicates_marked")).first().asDict()
    counts = {**stats, "documents_signed": found.signed.count(), "candidate_pairs": found.candidates.count(),
              "verified_pairs": found.edges.count(), "components_rounds": found.rounds,
              **{f"seconds.{stage}": value for stage, value in found.seconds.items()}}
    share = counts["duplicates_marked"] / counts["documents_in"] if counts["documents_in"] else 0.0
    return {**counts, "duplicate_share": share}


def run(spark: SparkSession, cfg: Config, log: RunLog) -> dict[str, Any]:
    silver = read_silver(spark, cfg)
    settings = LshSettings.from_config(cfg.neardup)
    log.params({"neardup": {"bands": settings.bands, "rows": settings.rows, "signature_bits": settings.signature_bits,
                            "settings_hash": settings.settings_hash}})
    if not cfg.neardup.enabled:
        publish_silver(cfg, log, with_marks(silver, None), {f"{PROPERTY_PREFIX}enabled": "false"})
        log.tags({"neardup.mode": "disabled"})
        return {"mode": "disabled"}

    documents = silver.select("doc_id", "text")
    used = previous_index(spark, cfg, settings, documents)
    mode = used.mode
    log.tags({"neardup.mode": mode, "neardup.mode_reason": used.reason})
    found = find_near_duplicates(documents, settings, used.index, reverify=mode == "reverify")
    publish_silver(cfg, log, with_marks(silver, choose_representatives(silver, found.clusters)),
                   {**settings.table_properties(), f"{PROPERTY_PREFIX}enabled": "true"})
    write_band_index(cfg, log, found, settings, used)

    metrics = detection_metrics(tables.read_table(spark, tables.table_ref(cfg, "silver")), found)
    for name, value in metrics.items():
        log.metric(name, value)
    log.counts("marked", {REASON: metrics["duplicates_marked"]})  # marked only: the sample step excludes
    return {"mode": mode, "documents": metrics["documents_in"], "signed": metrics["documents_signed"],
            "clusters": metrics["clusters"], "marked": {REASON: metrics["duplicates_marked"]},
            "duplicate_share": round(metrics["duplicate_share"], 4)}


STEP = Step(
    name="neardup", run=run, inputs=("silver",), outputs=("silver", "band_index"), config_sections=("neardup",),
    help="Mark near duplicates in silver with MinHash-LSH (near_duplicate_cluster_id, duplicate_of, "
         "duplicate_reason), keeping one document per cluster by provenance and quality; incremental "
         "against the published band index.",
)


def main(argv: list[str] | None = None) -> None:
    from jobs.pipeline import STEPS  # the entry point learns the pipeline order from the registry

    job_main(STEP, argv, STEPS)


if __name__ == "__main__":
    main()
