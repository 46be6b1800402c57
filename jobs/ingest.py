"""Ingest: input files -> bronze documents with provenance, and rejected records -> quarantine.

Per run: records read = inserted + already ingested + exact duplicates within a source + quarantined.
Re-ingesting the same files inserts nothing (MERGE on doc_id and source) and adds no commit.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from jobs.common import gates, tables
from jobs.common.config import Config, SourceConfig
from jobs.common.errors import InputError
from jobs.common.records import DEFAULT_GLOBS, ParseSettings, parse_file
from jobs.common.runner import Step, job_main
from jobs.common.schema import BRONZE_COLUMNS, PARSED_SCHEMA, QUARANTINE_COLUMNS
from jobs.common.tracking import RunLog

_OUTPUT_BATCH_ROWS = 2000


def _list_files(spark: SparkSession, source: SourceConfig) -> DataFrame:
    """The source's files as (path, modificationTime, length, content), read through Spark so that
    local paths, HDFS, S3, ABFS and DBFS all work. ``content`` is only read if selected."""
    try:
        return (spark.read.format("binaryFile")
                .option("pathGlobFilter", source.glob or DEFAULT_GLOBS[source.format])
                .option("recursiveFileLookup", "true").load(source.path))
    except Exception as exc:  # Spark raises AnalysisException (path missing) and others for unreadable paths
        raise InputError(f"source `{source.name}`: cannot list {source.path}: {str(exc).splitlines()[0]}") from None


def _parser(settings: ParseSettings):
    from pyspark.sql.pandas.types import to_arrow_schema

    arrow_schema = to_arrow_schema(PARSED_SCHEMA)
    columns = arrow_schema.names

    def flush(rows: list[dict[str, Any]]) -> pa.RecordBatch:
        return pa.RecordBatch.from_pydict({c: [r.get(c) for r in rows] for c in columns}, schema=arrow_schema)

    def parse(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        rows: list[dict[str, Any]] = []
        for batch in batches:
            paths, contents = batch.column("path").to_pylist(), batch.column("content").to_pylist()
            for path, content in zip(paths, contents, strict=True):
                for row in parse_file(path, content, settings):
                    if row.get("metadata") is not None:
                        row["metadata"] = list(row["metadata"].items())
                    rows.append(row)
                    if len(rows) >= _OUTPUT_BATCH_ROWS:
                        yield flush(rows)
                        rows = []
        if rows:
            yield flush(rows)

    return parse


def parse_sources(spark: SparkSession, cfg: Config) -> DataFrame:
    """Every record of every configured source, as PARSED_SCHEMA rows (documents and rejections)."""
    if not cfg.ingest.sources:
        raise InputError("no sources configured: add `ingest.sources` to your config (see conf/demo.yaml)")
    frames = []
    for source in cfg.ingest.sources:
        settings = ParseSettings(source=source, ingest=cfg.ingest, provenance=cfg.provenance)
        files = _list_files(spark, source).select("path", "content")
        frames.append(files.mapInArrow(_parser(settings), PARSED_SCHEMA))
    parsed = frames[0]
    for frame in frames[1:]:
        parsed = parsed.unionByName(frame)
    return parsed


def file_fingerprints(spark: SparkSession, cfg: Config) -> dict[str, str]:
    """Per source, a hash of its files' paths, sizes and modification times (contents not read)."""
    prints = {}
    for source in cfg.ingest.sources:
        listing = sorted(tuple(r) for r in _list_files(spark, source)
                         .select("path", "length", "modificationTime").collect())
        prints[f"files:{source.name}"] = hashlib.sha256(repr(listing).encode()).hexdigest()[:16]
    return prints


def _quarantine_rows(rejected: DataFrame, run_id: str) -> DataFrame:
    key = F.concat_ws("\u241f", "source", "source_file", F.col("source_line").cast("string"), "reason")
    return (rejected.withColumn("quarantine_id", F.sha2(key, 256).substr(1, 32))
            .withColumn("ingest_run_id", F.lit(run_id))
            .withColumn("quarantined_at", F.current_timestamp())
            .select(*QUARANTINE_COLUMNS))


def run(spark: SparkSession, cfg: Config, log: RunLog) -> dict[str, Any]:
    parsed = parse_sources(spark, cfg).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        by_reason = {r["reason"]: r["n"] for r in parsed.groupBy("reason").agg(F.count("*").alias("n")).collect()}
        records = sum(by_reason.values())
        quarantined = dict(sorted((k, v) for k, v in by_reason.items() if k is not None))

        documents = parsed.where(F.col("reason").isNull())
        first_copy = Window.partitionBy("source", "doc_id").orderBy("source_file", "source_line")
        ranked = documents.withColumn("_copy", F.row_number().over(first_copy))
        unique = (ranked.where(F.col("_copy") == 1)
                  .withColumn("ingest_run_id", F.lit(log.run_id))
                  .withColumn("ingested_at", F.current_timestamp())
                  .select(*BRONZE_COLUMNS))
        n_documents = by_reason.get(None, 0)
        n_unique = unique.count()

        inserted = gates.publish(cfg, unique, "bronze", "bronze", log,
                                 lambda df, ref: tables.merge_insert_new(df, ref, ["doc_id", "source"],
                                                                         run_id=log.run_id) if n_unique else 0)
        if quarantined:
            tables.merge_insert_new(_quarantine_rows(parsed.where(F.col("reason").isNotNull()), log.run_id),
                                    tables.table_ref(cfg, "quarantine"), ["quarantine_id"], run_id=log.run_id)

        removed = {"exact_duplicate_in_source": n_documents - n_unique, "already_ingested": n_unique - inserted}
        per_source = {r["source"]: r["n"] for r in parsed.groupBy("source").agg(F.count("*").alias("n")).collect()}
    finally:
        parsed.unpersist()

    log.metric("records_read", records)
    log.metric("rows_inserted", inserted)
    log.metric("rows_quarantined", sum(quarantined.values()))
    log.counts("quarantined", quarantined)
    log.counts("removed", removed)
    log.counts("records_by_source", per_source)
    if records != inserted + sum(removed.values()) + sum(quarantined.values()):
        raise RuntimeError(f"ingest accounting does not add up: {records} records read, {inserted} inserted, "
                           f"removed {removed}, quarantined {quarantined}")
    return {"records": records, "inserted": inserted, "quarantined": quarantined, "removed": removed}


STEP = Step(
    name="ingest", run=run, inputs=(), outputs=("bronze", "quarantine"),
    config_sections=("ingest", "provenance"), fingerprints=file_fingerprints,
    help="Read the configured sources (JSONL, Parquet, CSV, .txt folders) into the bronze table with "
         "provenance; bad records go to the quarantine table with a reason.",
)


def main(argv: list[str] | None = None) -> None:
    job_main(STEP, argv)


if __name__ == "__main__":
    main()
