"""The one document shape every table shares, and the provenance priority used to choose survivors.

bronze = PARSED document columns + ingest run columns, one row per (doc_id, source).
silver = bronze columns (best-provenance copy per doc_id) + dedup and signal columns.
gold   = silver columns of the chosen documents + mixture columns.
"""
from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import BooleanType, LongType, MapType, StringType, StructField, StructType, TimestampType

# Reasons a record is quarantined at ingest (README, "Guarantees"); records.py raises each of them.
QUARANTINE_REASONS = (
    "invalid_utf8", "malformed_json", "malformed_csv", "not_an_object", "unreadable_file", "missing_text",
    "wrong_type", "empty_text", "text_too_large", "unknown_origin", "unparsable_date",
)

DOCUMENT_COLUMNS = [
    StructField("doc_id", StringType(), True),
    StructField("text", StringType(), True),
    StructField("source", StringType(), True),
    StructField("source_file", StringType(), True),
    StructField("source_line", LongType(), True),
    StructField("url", StringType(), True),
    StructField("domain", StringType(), True),
    StructField("language", StringType(), True),
    StructField("license", StringType(), True),
    StructField("created_at", TimestampType(), True),
    StructField("crawled_at", TimestampType(), True),
    StructField("origin", StringType(), True),
    StructField("generator", StringType(), True),
    StructField("provenance_method", StringType(), True),
    StructField("pre_ai_archive", BooleanType(), True),
    StructField("metadata", MapType(StringType(), StringType()), True),
]

# What the ingest parser emits for every input record: a document, or (reason set) a rejection.
PARSED_SCHEMA = StructType(DOCUMENT_COLUMNS + [
    StructField("reason", StringType(), True),
    StructField("detail", StringType(), True),
    StructField("raw", StringType(), True),
    StructField("raw_bytes", LongType(), True),
])

BRONZE_COLUMNS = [f.name for f in DOCUMENT_COLUMNS] + ["ingest_run_id", "ingested_at"]

QUARANTINE_COLUMNS = ["quarantine_id", "source", "source_file", "source_line", "reason", "detail", "raw",
                      "raw_bytes", "ingest_run_id", "quarantined_at"]

def origin_rank(origin: Column) -> Column:
    """human < unknown < synthetic: lower is kept first."""
    return (F.when(origin == "human", 0).when(origin == "unknown", 1).when(origin == "synthetic", 2)
            .otherwise(3))


def provenance_priority(extra: list[Column] | None = None) -> list[Column]:
    """Sort order for choosing which copy of a document survives deduplication:
    pre-AI archive first, then human > unknown > synthetic, then ``extra`` (e.g. quality), then the
    earliest date, ties broken by doc_id and source so the same input always keeps the same row."""
    return ([F.coalesce(F.col("pre_ai_archive"), F.lit(False)).desc(), origin_rank(F.col("origin")).asc()]
            + (extra or [])
            + [F.col("created_at").asc_nulls_last(), F.col("doc_id").asc(), F.col("source").asc()])


def survivor_order() -> list[Column]:
    """Which member of a duplicate group is kept (near-duplicate and semantic dedup alike):
    provenance first, then quality (more alphabetic text, fewer repeated lines), then date, doc_id."""
    return provenance_priority(extra=[F.col("alpha_ratio").desc_nulls_last(),
                                      F.col("duplicate_line_fraction").asc_nulls_last()])


def reference_first() -> list[Column]:
    """Sort order that puts the reference distribution first (pre-AI archive, then human, unknown,
    synthetic), in a deterministic hash order within each: for samples that fit tokenizers and IDF
    weights on human text."""
    return [F.coalesce(F.col("pre_ai_archive"), F.lit(False)).desc(), origin_rank(F.col("origin")),
            F.xxhash64("doc_id"), F.col("doc_id")]


def reference_sample(silver: DataFrame, size: int) -> list[str]:
    """``size`` texts of the reference distribution (pre-AI archive, then human, …), deterministic: what the
    tokenizer (tokenize) and the embedding model (embed) are fitted on."""
    return silver.orderBy(*reference_first()).limit(size).select("text").toPandas()["text"].tolist()
