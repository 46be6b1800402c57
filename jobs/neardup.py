"""Near-duplicate detection: MinHash-LSH clusters in silver, marked, never deleted (docs/dedup.md).

Adds to silver: ``near_duplicate_cluster_id`` (the smallest doc_id of the document's cluster; null for
a document without near duplicates), ``duplicate_of`` (the doc_id of the cluster's kept representative;
null for the representative and for singletons) and ``duplicate_reason`` (``near_duplicate`` or null).
The sample step excludes marked documents; silver keeps them so a user can inspect what was removed.

The Spark path is the single-process reference of :mod:`udfs.lsh` sharded, step for step, so the two
give identical clusters on the same input (a test checks it):

1. signatures and band hashes in Arrow batches (``mapInArrow`` over :mod:`udfs.minhash` and
   :func:`udfs.lsh.band_hashes`); texts without a shingle get null band hashes and join no bucket;
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
verified while the bucket was small. A full rebuild happens instead when there is no index, when its
settings hash differs (results from different settings are not comparable), or when an indexed document
is no longer in silver.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, DoubleType, LongType, StringType, StructField, StructType

from jobs.common import gates, tables
from jobs.common.components import connected_components
from jobs.common.config import Config, NearDupConfig
from jobs.common.runner import Step, job_main
from jobs.common.schema import survivor_order
from jobs.common.tracking import RunLog
from udfs.lsh import band_hashes, optimal_bands_rows
from udfs.lsh import candidate_pairs as lsh_candidate_pairs
from udfs.minhash import estimated_jaccard, is_empty_signature, minhash_signatures, shingle_hashes

NEAR_DUPLICATE_COLUMNS = ("near_duplicate_cluster_id", "duplicate_of", "duplicate_reason")
REASON = "near_duplicate"
PROPERTY_PREFIX = "cleanwell.neardup."
# Bumped when the shingle hash, the band key or the index layout changes: old indexes are then rebuilt.
INDEX_FORMAT = 1
# Characters of text (both sides of the pairs) hashed at once during verification: the size at which
# udfs.minhash measured its batch path fastest (arrays stay in cache).
_VERIFY_CHARS_PER_CHUNK = 1 << 18
_PAIRS_PER_BATCH = 1 << 16
# Most document ids broadcast (~50 bytes each) to select texts (verification, new documents of a batch).
_BROADCAST_IDS = 4_000_000
# Bucket rows per partition of the candidate stage (each partition is sorted in memory, ~100 bytes a row).
_BUCKET_ROWS_PER_PARTITION = 4_000_000

BAND_HASHES_SCHEMA = StructType([StructField("doc_id", StringType()),
                                 StructField("band_hashes", ArrayType(LongType()))])
PAIRS_SCHEMA = StructType([StructField("doc_a", StringType()), StructField("doc_b", StringType())])
SIMILARITY_SCHEMA = StructType([StructField("doc_a", StringType()), StructField("doc_b", StringType()),
                                StructField("similarity", DoubleType())])


@dataclass(frozen=True)
class LshSettings:
    """Everything that determines which pairs are near duplicates. Two runs are comparable only when
    their settings are equal; ``settings_hash`` identifies them in the band index and table properties."""

    shingle: str
    ngram: int
    num_perm: int
    seed: int
    scheme: str
    bands: int
    rows: int
    threshold: float
    candidate_threshold: float
    verification: str
    max_bucket_size: int

    @classmethod
    def from_config(cls, nd: NearDupConfig) -> LshSettings:
        bands, rows = optimal_bands_rows(nd.candidate_threshold, nd.num_perm, nd.false_positive_weight,
                                         1.0 - nd.false_positive_weight)
        return cls(shingle=nd.shingle, ngram=nd.ngram, num_perm=nd.num_perm, seed=nd.seed, scheme=nd.scheme,
                   bands=bands, rows=rows, threshold=nd.threshold, candidate_threshold=nd.candidate_threshold,
                   verification=nd.verification, max_bucket_size=nd.max_bucket_size)

    @property
    def signature_bits(self) -> int:
        return 64 if self.scheme == "affine64" else 32

    def describe(self) -> dict[str, Any]:
        return {**asdict(self), "signature_bits": self.signature_bits, "index_format": INDEX_FORMAT}

    @property
    def settings_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.describe(), sort_keys=True).encode()).hexdigest()[:16]

    def table_properties(self) -> dict[str, str]:
        return {f"{PROPERTY_PREFIX}{key}": str(value)
                for key, value in {**self.describe(), "settings_hash": self.settings_hash}.items()}


# --- Arrow batch functions (numpy per batch, no Python per document) --------------------------------

def band_hash_batches(batches: Iterable[pa.RecordBatch], settings: LshSettings) -> Iterator[pa.RecordBatch]:
    """``(doc_id, text)`` batches -> ``(doc_id, band_hashes)``: one 64-bit key per band (the uint64 keys of
    :func:`udfs.lsh.band_hashes` as int64); every key null for a text without a shingle."""
    for batch in batches:
        texts = batch.column("text").fill_null("").to_pylist()
        signatures = minhash_signatures(texts, settings.num_perm, settings.seed, settings.ngram, settings.shingle,
                                        settings.scheme)
        keys = band_hashes(signatures, settings.bands, settings.rows).view(np.int64).ravel()
        empty = np.repeat(is_empty_signature(signatures, settings.scheme), settings.bands)
        offsets = np.arange(0, len(texts) * settings.bands + 1, settings.bands, dtype=np.int32)
        lists = pa.ListArray.from_arrays(pa.array(offsets), pa.array(keys, type=pa.int64(), mask=empty))
        yield pa.RecordBatch.from_arrays([batch.column("doc_id"), lists], names=["doc_id", "band_hashes"])


def exact_jaccard_of_text_pairs(texts_a: Sequence[str], texts_b: Sequence[str], ngram: int = 5,
                                shingle: str = "word") -> np.ndarray:
    """Exact Jaccard of the shingle sets of ``texts_a[i]`` and ``texts_b[i]`` (0.0 when both have none),
    over the 64-bit shingle hashes of :func:`udfs.minhash.shingle_hashes`: equal to
    :func:`udfs.minhash.exact_jaccard` of the byte shingles unless two distinct shingles of a pair share
    a 64-bit hash.

    Both sides' hashes are sorted by (pair, hash) at once; each run of equal (pair, hash) is one distinct
    shingle, in A, in B or in both. The sort is a fast unstable sort by hash followed by a stable radix
    sort by the 16-bit pair number (chunks hold a few hundred pairs): 2x faster than ``np.lexsort``."""
    n_pairs = len(texts_a)
    similarities = np.zeros(n_pairs, dtype=np.float64)
    if n_pairs == 0:
        return similarities
    chars = np.cumsum([len(a) + len(b) for a, b in zip(texts_a, texts_b, strict=True)])
    starts = np.r_[0, np.flatnonzero(np.diff(chars // _VERIFY_CHARS_PER_CHUNK)) + 1]
    for start, end in zip(starts.tolist(), np.r_[starts[1:], n_pairs].tolist(), strict=True):
        size = end - start
        hashes_a, counts_a = shingle_hashes(texts_a[start:end], ngram, shingle)
        hashes_b, counts_b = shingle_hashes(texts_b[start:end], ngram, shingle)
        if len(hashes_a) + len(hashes_b) == 0:
            continue
        pair_numbers = np.arange(size, dtype=np.uint16 if size <= 1 << 16 else np.int64)
        pairs = np.concatenate([np.repeat(pair_numbers, counts_a), np.repeat(pair_numbers, counts_b)])
        hashes = np.concatenate([hashes_a, hashes_b])
        in_b = np.r_[np.zeros(len(hashes_a), dtype=bool), np.ones(len(hashes_b), dtype=bool)]
        order = np.argsort(hashes)
        order = order[np.argsort(pairs[order], kind="stable")]
        pairs, hashes, in_b = pairs[order], hashes[order], in_b[order]
        runs = np.flatnonzero(np.r_[True, (pairs[1:] != pairs[:-1]) | (hashes[1:] != hashes[:-1])])
        run_in_a, run_in_b = ~np.logical_and.reduceat(in_b, runs), np.logical_or.reduceat(in_b, runs)
        run_pairs = pairs[runs]
        intersection = np.bincount(run_pairs[run_in_a & run_in_b], minlength=size)
        union = (np.bincount(run_pairs[run_in_a], minlength=size) + np.bincount(run_pairs[run_in_b], minlength=size)
                 - intersection)
        np.divide(intersection, union, out=similarities[start:end], where=union > 0)
    return similarities


def pair_similarities(texts_a: Sequence[str], texts_b: Sequence[str], settings: LshSettings) -> np.ndarray:
    """The Jaccard similarity verification compares with the threshold: exact, or the MinHash estimate
    (signatures recomputed from the texts, bit for bit those of the banding)."""
    if settings.verification == "exact":
        return exact_jaccard_of_text_pairs(texts_a, texts_b, settings.ngram, settings.shingle)
    signatures = [minhash_signatures(texts, settings.num_perm, settings.seed, settings.ngram, settings.shingle,
                                     settings.scheme) for texts in (texts_a, texts_b)]
    return np.asarray(estimated_jaccard(*signatures), dtype=np.float64).reshape(-1)


def similarity_batches(batches: Iterable[pa.RecordBatch], settings: LshSettings) -> Iterator[pa.RecordBatch]:
    """``(doc_a, doc_b, text_a, text_b)`` batches -> ``(doc_a, doc_b, similarity)``."""
    for batch in batches:
        texts_a = batch.column("text_a").fill_null("").to_pylist()
        texts_b = batch.column("text_b").fill_null("").to_pylist()
        similarity = pa.array(pair_similarities(texts_a, texts_b, settings), type=pa.float64())
        yield pa.RecordBatch.from_arrays([batch.column("doc_a"), batch.column("doc_b"), similarity],
                                         names=["doc_a", "doc_b", "similarity"])


def bucket_pair_batches(batches: Iterable[pa.RecordBatch], max_bucket_size: int) -> Iterator[pa.RecordBatch]:
    """All ``(doc_id, hash, is_new)`` rows of one partition (every row of a bucket is in the same partition)
    -> ``(doc_a, doc_b)`` pairs that share a hash, by :func:`udfs.lsh.candidate_pairs` itself: rows are
    sorted by doc_id so that a giant bucket's first member is its smallest doc_id, as in the reference.
    Band keys are seeded with the band index, so equal hashes mean equal (band, hash)."""
    batches = [batch for batch in batches if batch.num_rows]
    if not batches:
        return
    table = pa.Table.from_batches(batches)
    table = table.take(pc.sort_indices(table, sort_keys=[("doc_id", "ascending")]))
    keys = table.column("hash").to_numpy().view(np.uint64).reshape(-1, 1)
    pairs = lsh_candidate_pairs(keys, max_bucket_size)
    is_new = table.column("is_new").to_numpy(zero_copy_only=False)
    pairs = pairs[is_new[pairs[:, 0]] | is_new[pairs[:, 1]]]
    doc_ids = table.column("doc_id").combine_chunks()
    for start in range(0, len(pairs), _PAIRS_PER_BATCH):
        chunk = pairs[start : start + _PAIRS_PER_BATCH]
        yield pa.RecordBatch.from_arrays([doc_ids.take(chunk[:, 0]), doc_ids.take(chunk[:, 1])],
                                         names=["doc_a", "doc_b"])


# --- Spark stages --------------------------------------------------------------------------------

def document_band_hashes(texts: DataFrame, settings: LshSettings) -> DataFrame:
    """``(doc_id, band_hashes)`` of every ``(doc_id, text)`` row, computed in Arrow batches."""
    return texts.select("doc_id", "text").mapInArrow(lambda batches: band_hash_batches(batches, settings),
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
    (:func:`bucket_pair_batches`): ~3x faster than a Spark ``groupBy`` + ``collect_list``, which falls back to
    sort-based aggregation because almost every bucket holds one document."""
    rows = new_keys.select("doc_id", "hash", F.lit(True).alias("is_new"))
    if indexed_keys is not None:
        touched = indexed_keys.join(new_keys.select("band", "hash").distinct(), ["band", "hash"], "left_semi")
        rows = rows.unionByName(touched.select("doc_id", "hash", F.lit(False).alias("is_new")))
    return (rows.repartition(partitions, "hash")
            .mapInArrow(lambda batches: bucket_pair_batches(batches, max_bucket_size), PAIRS_SCHEMA)
            .distinct())


def _small_enough_to_broadcast(ids: DataFrame) -> DataFrame:
    """``ids`` with a broadcast hint when there are few enough of them: a semi-join with the texts then
    filters them where they are read instead of shuffling every text."""
    return F.broadcast(ids) if ids.count() <= _BROADCAST_IDS else ids


def verify_pairs(pairs: DataFrame, texts: DataFrame, settings: LshSettings) -> DataFrame:
    """``(doc_a, doc_b, similarity)`` of the candidate pairs whose similarity is at least the threshold."""
    involved = pairs.select(F.col("doc_a").alias("doc_id")).unionByName(
        pairs.select(F.col("doc_b").alias("doc_id"))).distinct()
    needed = texts.select("doc_id", "text").join(_small_enough_to_broadcast(involved), "doc_id", "left_semi")
    with_texts = (pairs.join(needed.select(F.col("doc_id").alias("doc_a"), F.col("text").alias("text_a")), "doc_a")
                  .join(needed.select(F.col("doc_id").alias("doc_b"), F.col("text").alias("text_b")), "doc_b")
                  .select("doc_a", "doc_b", "text_a", "text_b"))
    scored = with_texts.mapInArrow(lambda batches: similarity_batches(batches, settings), SIMILARITY_SCHEMA)
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
    the first member by :func:`survivor_order` is kept, the others point at it."""
    ordered = Window.partitionBy("near_duplicate_cluster_id").orderBy(*survivor_order())
    members = silver.join(clusters, "doc_id")
    is_duplicate = F.row_number().over(ordered) > 1
    return members.select(
        "doc_id", "near_duplicate_cluster_id",
        F.when(is_duplicate, F.first("doc_id").over(ordered)).alias("duplicate_of"),
        F.when(is_duplicate, F.lit(REASON)).alias("duplicate_reason"))


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


def find_near_duplicates(texts: DataFrame, settings: LshSettings, index: DataFrame | None = None) -> NearDuplicates:
    """Near-duplicate clusters of the ``(doc_id, text)`` rows of ``texts``: of all of them (``index`` None),
    or incrementally, signing only the documents the band ``index`` lacks and merging with its clusters.
    Each stage's result is materialised once (``localCheckpoint``): later stages read it more than once."""
    if index is None:
        new_texts, indexed_keys, previous = texts, None, None
    else:
        indexed_docs = index.where(F.col("band") == 0).select("doc_id", "near_duplicate_cluster_id")
        new_texts = texts.join(_small_enough_to_broadcast(
            texts.select("doc_id").join(indexed_docs, "doc_id", "left_anti")), "doc_id", "left_semi")
        indexed_keys = index.where(F.col("hash").isNotNull()).select("doc_id", "band", "hash")
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
    shuffle_partitions = int(texts.sparkSession.conf.get("spark.sql.shuffle.partitions"))
    partitions = max(shuffle_partitions, -(-signed.count() * settings.bands // _BUCKET_ROWS_PER_PARTITION))
    candidates = candidate_pairs(new_keys, indexed_keys, settings.max_bucket_size, partitions).localCheckpoint()
    lap("candidates")
    edges = verify_pairs(candidates, texts, settings).localCheckpoint()
    lap("verification")
    clusters, rounds = merge_clusters(edges, previous)
    clusters = clusters.localCheckpoint()
    lap("components")
    return NearDuplicates(signed, candidates, edges, clusters, rounds, seconds)


def index_updates(found: NearDuplicates, settings: LshSettings, index: DataFrame | None) -> DataFrame:
    """Band-index rows to write: every band of every newly signed document, plus (incremental) the rows
    of indexed documents whose cluster id changed."""
    new_rows = (explode_bands(found.signed).join(found.clusters, "doc_id", "left")
                .withColumn("settings_hash", F.lit(settings.settings_hash)))
    columns = ["doc_id", "band", "hash", "settings_hash", "near_duplicate_cluster_id"]
    if index is None:
        return new_rows.select(*columns)
    recorded = index.where(F.col("band") == 0).select("doc_id", F.col("near_duplicate_cluster_id").alias("old"))
    changed = (found.clusters.join(recorded, "doc_id")
               .where(~F.col("near_duplicate_cluster_id").eqNullSafe(F.col("old"))).drop("old"))
    return new_rows.select(*columns).unionByName(
        index.drop("near_duplicate_cluster_id").join(changed, "doc_id").select(*columns))


def previous_index(spark: SparkSession, cfg: Config, settings: LshSettings,
                   silver: DataFrame) -> tuple[DataFrame | None, str]:
    """The band index to extend, or None and why the run rebuilds it fully."""
    ref = tables.table_ref(cfg, "band_index")
    if not tables.exists(spark, ref):
        return None, "no band index yet"
    recorded = tables.properties(spark, ref).get(f"{PROPERTY_PREFIX}settings_hash")
    if recorded != settings.settings_hash:
        return None, f"settings changed (index {recorded}, now {settings.settings_hash})"
    index = tables.read_table(spark, ref)
    gone = index.where(F.col("band") == 0).join(silver, "doc_id", "left_anti")
    if gone.limit(1).count():
        return None, "indexed documents are no longer in silver"
    return index, "extending the band index"


def run(spark: SparkSession, cfg: Config, log: RunLog) -> dict[str, Any]:
    silver_ref, index_ref = tables.table_ref(cfg, "silver"), tables.table_ref(cfg, "band_index")
    silver = tables.read_table(spark, silver_ref)
    tables.require_columns(silver, ("doc_id", "text", "pre_ai_archive", "origin", "created_at", "source",
                                    "alpha_ratio", "duplicate_line_fraction"), f"silver table {silver_ref}")
    settings = LshSettings.from_config(cfg.neardup)
    log.params({"neardup": {"bands": settings.bands, "rows": settings.rows, "signature_bits": settings.signature_bits,
                            "settings_hash": settings.settings_hash}})

    def publish(marked: DataFrame, properties: dict[str, str]) -> None:
        gates.publish(cfg, marked, "silver", "silver_neardup", log, lambda df, ref: tables.overwrite(
            df, ref, run_id=log.run_id, properties=properties))

    if not cfg.neardup.enabled:
        publish(with_marks(silver, None), {f"{PROPERTY_PREFIX}enabled": "false"})
        log.tags({"neardup.mode": "disabled"})
        return {"mode": "disabled"}

    documents = silver.select("doc_id", "text")
    index, why = previous_index(spark, cfg, settings, documents)
    mode = "full" if index is None else "incremental"
    log.tags({"neardup.mode": mode, "neardup.mode_reason": why})
    found = find_near_duplicates(documents, settings, index)
    publish(with_marks(silver, choose_representatives(silver, found.clusters)),
            {**settings.table_properties(), f"{PROPERTY_PREFIX}enabled": "true"})
    updates = index_updates(found, settings, index)
    if index is None:
        tables.overwrite(updates, index_ref, run_id=log.run_id, properties=settings.table_properties())
    else:
        tables.merge_upsert(updates, index_ref, ["doc_id", "band"], run_id=log.run_id)

    published = tables.read_table(spark, silver_ref)
    stats = published.agg(F.count("*").alias("documents_in"),
                          F.countDistinct("near_duplicate_cluster_id").alias("clusters"),
                          F.count("duplicate_of").alias("duplicates_marked")).first().asDict()
    counts = {**stats, "documents_signed": found.signed.count(), "candidate_pairs": found.candidates.count(),
              "verified_pairs": found.edges.count(), "components_rounds": found.rounds,
              **{f"seconds.{stage}": value for stage, value in found.seconds.items()}}
    share = counts["duplicates_marked"] / counts["documents_in"] if counts["documents_in"] else 0.0
    for name, value in {**counts, "duplicate_share": share}.items():
        log.metric(name, value)
    log.counts("removed", {REASON: counts["duplicates_marked"]})
    return {"mode": mode, "documents": counts["documents_in"], "signed": counts["documents_signed"],
            "clusters": counts["clusters"], "marked": {REASON: counts["duplicates_marked"]},
            "duplicate_share": round(share, 4)}


STEP = Step(
    name="neardup", run=run, inputs=("silver",), outputs=("silver", "band_index"), config_sections=("neardup",),
    help="Mark near duplicates in silver with MinHash-LSH (near_duplicate_cluster_id, duplicate_of, "
         "duplicate_reason), keeping one document per cluster by provenance and quality; incremental "
         "against the published band index.",
)


def main(argv: list[str] | None = None) -> None:
    job_main(STEP, argv)


if __name__ == "__main__":
    main()
