"""Ingest: input files -> bronze documents with provenance, and rejected records -> quarantine.

Per run: records read = inserted + already ingested + exact duplicates within a source + quarantined,
and files listed = files read + files skipped (per reason). Re-ingesting the same files inserts nothing
(MERGE on doc_id and source) and adds no commit. How files are listed, split and streamed: docs/ingest.md.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from jobs.common import gates, tables
from jobs.common.config import Config, SourceConfig
from jobs.common.errors import InputError
from jobs.common.records import ParseSettings, ReadTask, count_newlines, ensure_readable_scheme, file_kind, read_task
from jobs.common.runner import Step, job_main
from jobs.common.schema import BRONZE_COLUMNS, PARSED_SCHEMA, QUARANTINE_COLUMNS
from jobs.common.tracking import RunLog

_BATCH_BYTES = 64 << 20  # a batch handed to Spark is cut at ingest.batch_rows records or this much text
_MIN_TASK_BYTES = 1 << 20  # read tasks are not made smaller than this when spreading small inputs over cores
_OPEN_COST_BYTES = 256 << 10  # what one more file costs a task, counted as bytes (like Spark's openCostInBytes)
_SKIPPED_FILES_NAMED = 1000  # skipped files named in the run's artifact (all of them are counted)


@dataclass(frozen=True)
class ListedFile:
    source: str
    path: str  # as Spark names it (``file:/…``, ``s3a://…``, ``dbfs:/…``); becomes source_file
    length: int
    modified: dt.datetime | None


@dataclass
class ReadPlan:
    """Every listed file accounted for: read whole, read as byte ranges, or skipped with a reason."""

    whole: list[tuple[ReadTask, int]]  # (task, bytes)
    ranges: list[ReadTask]  # byte ranges of large plain JSONL files in file order, newline counts unknown
    files_read: dict[str, int]
    skipped: list[tuple[str, str, str]]  # (source, path, reason)


def _binary_files(spark: SparkSession, source: SourceConfig) -> DataFrame:
    """The source's files through Spark's file index, so local paths, HDFS, S3, ABFS and DBFS all list
    alike; ``content`` is never selected, so listing reads no file. Without a glob every file is listed,
    and the ones no parser reads are counted, not unseen."""
    reader = spark.read.format("binaryFile").option("recursiveFileLookup", "true")
    if source.glob:
        reader = reader.option("pathGlobFilter", source.glob)
    try:
        return reader.load(source.path)
    except Exception as exc:  # Spark raises AnalysisException (path missing) and others for unreadable paths
        raise InputError(f"source `{source.name}`: cannot list {source.path}: {str(exc).splitlines()[0]}") from None


def _hadoop_path(uri: str) -> str:
    """An ``inputFiles()`` URI (``file:///a%20b``) as the ``path`` column names the file (``file:/a b``)."""
    path = urllib.parse.unquote(uri)
    return "file:/" + path.removeprefix("file:///") if path.startswith("file:///") else path


def list_files(spark: SparkSession, cfg: Config) -> list[ListedFile]:
    """Every file of every source with its length and modification time, in one Spark job. Spark's scan
    leaves zero-byte files out; the file index (``inputFiles``, no job) still names them."""
    frames, indexed = [], {}
    for source in cfg.ingest.sources:
        files = _binary_files(spark, source)
        frames.append(files.select(F.lit(source.name).alias("source"), "path", "length", "modificationTime"))
        indexed[source.name] = files.inputFiles()
    rows = functools.reduce(DataFrame.unionByName, frames).collect()
    listed = [ListedFile(r["source"], r["path"], r["length"], r["modificationTime"]) for r in rows]
    seen = {(f.source, f.path) for f in listed}
    for name, uris in indexed.items():
        listed += [ListedFile(name, path, 0, None) for path in map(_hadoop_path, uris) if (name, path) not in seen]
    return sorted(listed, key=lambda f: (f.source, f.path))


# execute() fingerprints the input files just before run(); run() then reads exactly that listing, which
# saves a listing job and makes the recorded fingerprint describe the files that were read.
_fingerprinted: dict[tuple, list[ListedFile]] = {}


def _listing_key(cfg: Config) -> tuple:
    return tuple((s.name, s.path, s.glob) for s in cfg.ingest.sources)


def file_fingerprints(spark: SparkSession, cfg: Config) -> dict[str, str]:
    """Per source, a hash of its files' paths, sizes and modification times (contents not read)."""
    if not cfg.ingest.sources:
        return {}
    listing = list_files(spark, cfg)
    _fingerprinted.clear()
    _fingerprinted[_listing_key(cfg)] = listing
    prints = {}
    for source in cfg.ingest.sources:
        files = [(f.path, f.length, f.modified) for f in listing if f.source == source.name]
        prints[f"files:{source.name}"] = hashlib.sha256(repr(files).encode()).hexdigest()[:16]
    return prints


def byte_ranges(task: ReadTask, length: int, split_bytes: int) -> list[ReadTask]:
    """The task's file as consecutive ranges of ``split_bytes`` (the last one shorter)."""
    return [dataclasses.replace(task, start=s, end=min(s + split_bytes, length)) for s in range(0, length, split_bytes)]


def plan_reads(listing: list[ListedFile], cfg: Config) -> ReadPlan:
    """Which files are read and how (whole, or as byte ranges), which are skipped and why."""
    index = {s.name: i for i, s in enumerate(cfg.ingest.sources)}
    split = cfg.ingest.split_bytes
    plan = ReadPlan([], [], dict.fromkeys(index, 0), [])
    for file in listing:
        source = cfg.ingest.sources[index[file.source]]
        compression, reason = file_kind(file.path, source.format, any_name=source.glob is not None)
        if reason is None and file.length == 0:
            reason = "empty_file"
        if reason:
            plan.skipped.append((file.source, file.path, reason))
            continue
        plan.files_read[file.source] += 1
        task = ReadTask(index[file.source], file.path, compression)
        if source.format == "jsonl" and compression is None and file.length > split:
            # Only plain JSONL splits: a compressed stream has no random access, a CSV field may span lines.
            plan.ranges += byte_ranges(task, file.length, split)
        else:
            plan.whole.append((task, file.length))
    return plan


def _newline_counter(ranges: list[ReadTask]):
    def count(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            ids = batch.column("id").to_pylist()
            counted = [count_newlines(ranges[i].path, ranges[i].start, ranges[i].end) for i in ids]
            yield pa.RecordBatch.from_pydict({"id": ids, "newlines": [n for n, _ in counted],
                                              "compression": [c for _, c in counted]})

    return count


def resolve_ranges(spark: SparkSession, ranges: list[ReadTask]) -> list[tuple[ReadTask, int]]:
    """Byte ranges with exact line numbers: one task per range counts its newlines (memory speed, much
    cheaper than parsing), each range then starts after the newlines of the ranges before it. A file
    whose content turns out compressed (gzip under a ``.jsonl`` name) is read whole instead."""
    if not ranges:
        return []
    counted = {r["id"]: (r["newlines"], r["compression"]) for r in
               spark.range(0, len(ranges), 1, len(ranges))
               .mapInArrow(_newline_counter(ranges), "id long, newlines long, compression string").collect()}
    return number_ranges(ranges, [counted[i] for i in range(len(ranges))])


def number_ranges(ranges: list[ReadTask], counts: list[tuple[int, str | None]]) -> list[tuple[ReadTask, int]]:
    """(task, bytes) per range, each knowing the newlines before it, from each range's (newlines, compression
    its content announces); a file's ranges are consecutive and in order."""
    resolved: list[tuple[ReadTask, int]] = []
    before, compressed = 0, set()
    for task, (newlines, compression) in zip(ranges, counts, strict=True):
        if task.start == 0:
            before = 0
            if compression:
                compressed.add(task.path)
                resolved.append((dataclasses.replace(task, compression=compression, end=None), 0))
        if task.path in compressed:
            resolved[-1] = (resolved[-1][0], resolved[-1][1] + task.end - task.start)
        else:
            resolved.append((dataclasses.replace(task, newlines_before=before), task.end - task.start))
        before += newlines
    return resolved


def pack(tasks: list[tuple[ReadTask, int]], split_bytes: int, parallelism: int) -> list[list[ReadTask]]:
    """Tasks into partitions of about equal bytes, largest first (as Spark packs files), so small files
    share a partition, a large file or range has its own, and every core gets work."""
    total = sum(size for _, size in tasks)
    target = min(split_bytes, max(_MIN_TASK_BYTES, -(-total // max(parallelism, 1))))
    partitions: list[list[ReadTask]] = []
    current: list[ReadTask] = []
    size = 0
    for task, weight in sorted(tasks, key=lambda t: (-t[1], t[0].path, t[0].start)):
        if current and size + weight > target:
            partitions.append(current)
            current, size = [], 0
        current.append(task)
        size += weight + _OPEN_COST_BYTES
    return partitions + ([current] if current else [])


def _parallelism(spark: SparkSession) -> int:
    try:
        return spark.sparkContext.defaultParallelism
    except Exception:  # Spark Connect has no SparkContext; its shuffle width is the best guess of its cores
        return int(spark.conf.get("spark.sql.shuffle.partitions", "8"))


def _reader(partitions: list[list[ReadTask]], settings: list[ParseSettings], batch_rows: int):
    from pyspark.sql.pandas.types import to_arrow_schema

    arrow_schema = to_arrow_schema(PARSED_SCHEMA)
    columns = arrow_schema.names

    def flush(rows: list[dict[str, Any]]) -> pa.RecordBatch:
        return pa.RecordBatch.from_pydict({c: [r.get(c) for r in rows] for c in columns}, schema=arrow_schema)

    def read(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        rows: list[dict[str, Any]] = []
        size = 0
        for batch in batches:
            for partition in batch.column("id").to_pylist():
                for task in partitions[partition]:
                    for row in read_task(task, settings[task.source]):
                        if row.get("metadata") is not None:
                            row["metadata"] = list(row["metadata"].items())
                        rows.append(row)
                        size += len(row.get("text") or "") + len(row.get("raw") or "")
                        if len(rows) >= batch_rows or size >= _BATCH_BYTES:
                            yield flush(rows)
                            rows, size = [], 0
        if rows:
            yield flush(rows)

    return read


def parse_sources(spark: SparkSession, cfg: Config, plan: ReadPlan) -> DataFrame:
    """Every record of every file the plan reads, as PARSED_SCHEMA rows (documents and rejections). One
    Spark partition per packed group of tasks: ``range`` gives exactly one row per partition, no shuffle."""
    paths = [t.path for t, _ in plan.whole] + [t.path for t in plan.ranges]
    for example in {urllib.parse.urlsplit(path).scheme: path for path in paths}.values():
        ensure_readable_scheme(example)  # a missing s3fs is a setup error, not a quarantined file per file
    tasks = plan.whole + resolve_ranges(spark, plan.ranges)
    partitions = pack(tasks, cfg.ingest.split_bytes, _parallelism(spark))
    settings = [ParseSettings(source=s, ingest=cfg.ingest, provenance=cfg.provenance) for s in cfg.ingest.sources]
    return (spark.range(0, len(partitions), 1, max(len(partitions), 1))
            .mapInArrow(_reader(partitions, settings, cfg.ingest.batch_rows), PARSED_SCHEMA))


def _quarantine_rows(rejected: DataFrame, run_id: str) -> DataFrame:
    key = F.concat_ws("\u241f", "source", "source_file", F.col("source_line").cast("string"), "reason")
    return (rejected.withColumn("quarantine_id", F.sha2(key, 256).substr(1, 32))
            .withColumn("ingest_run_id", F.lit(run_id))
            .withColumn("quarantined_at", F.current_timestamp())
            .select(*QUARANTINE_COLUMNS))


def _log_files(plan: ReadPlan, log: RunLog) -> dict[str, int]:
    skipped = Counter(f"{source}.{reason}" for source, _, reason in plan.skipped)
    log.counts("files_read", plan.files_read)
    log.counts("files_skipped", dict(sorted(skipped.items())))
    if plan.skipped:
        named = [{"source": s, "path": p, "reason": r} for s, p, r in plan.skipped[:_SKIPPED_FILES_NAMED]]
        log.artifact_json({"skipped": len(plan.skipped), "files": named}, "skipped_files.json")
    return dict(sorted(skipped.items()))


def run(spark: SparkSession, cfg: Config, log: RunLog) -> dict[str, Any]:
    if not cfg.ingest.sources:
        raise InputError("no sources configured: add `ingest.sources` to your config (see conf/demo.yaml)")
    listing = _fingerprinted.pop(_listing_key(cfg), None)
    plan = plan_reads(list_files(spark, cfg) if listing is None else listing, cfg)
    parsed = tables.stage(parse_sources(spark, cfg, plan))
    try:
        # One aggregation gives every count: records per source and reason, and distinct doc_ids per source.
        groups = (parsed.groupBy("source", "reason")
                  .agg(F.count("*").alias("n"), F.count_distinct("doc_id").alias("doc_ids")).collect())
        records = sum(g["n"] for g in groups)
        by_reason: Counter[str] = Counter()
        per_source: Counter[str] = Counter()
        for g in groups:
            if g["reason"] is not None:
                by_reason[g["reason"]] += g["n"]
            per_source[g["source"]] += g["n"]
        quarantined = dict(sorted(by_reason.items()))
        n_documents = sum(g["n"] for g in groups if g["reason"] is None)
        n_unique = sum(g["doc_ids"] for g in groups if g["reason"] is None)

        documents = parsed.where(F.col("reason").isNull())
        first_copy = Window.partitionBy("source", "doc_id").orderBy("source_file", "source_line")
        ranked = documents.withColumn("_copy", F.row_number().over(first_copy))
        unique = (ranked.where(F.col("_copy") == 1)
                  .withColumn("ingest_run_id", F.lit(log.run_id))
                  .withColumn("ingested_at", F.current_timestamp())
                  .select(*BRONZE_COLUMNS))

        inserted = gates.publish(cfg, unique, "bronze", "bronze", log,
                                 lambda df, ref: tables.merge_insert_new(df, ref, ["doc_id", "source"],
                                                                         run_id=log.run_id) if n_unique else 0,
                                 overwrites=False)  # a MERGE: concurrent ingests are retried, not refused
        if quarantined:
            tables.merge_insert_new(_quarantine_rows(parsed.where(F.col("reason").isNotNull()), log.run_id),
                                    tables.table_ref(cfg, "quarantine"), ["quarantine_id"], run_id=log.run_id)
        removed = {"exact_duplicate_in_source": n_documents - n_unique, "already_ingested": n_unique - inserted}
    finally:
        parsed.unpersist()

    log.metric("records_read", records)
    log.metric("rows_inserted", inserted)
    log.metric("rows_quarantined", sum(quarantined.values()))
    log.counts("quarantined", quarantined)
    log.counts("removed", removed)
    log.counts("records_by_source", dict(per_source))
    files_skipped = _log_files(plan, log)
    if records != inserted + sum(removed.values()) + sum(quarantined.values()):
        raise RuntimeError(f"ingest accounting does not add up: {records} records read, {inserted} inserted, "
                           f"removed {removed}, quarantined {quarantined}")
    return {"records": records, "inserted": inserted, "quarantined": quarantined, "removed": removed,
            "files_read": plan.files_read, "files_skipped": files_skipped}


STEP = Step(
    name="ingest", run=run, inputs=(), outputs=("bronze", "quarantine"),
    config_sections=("ingest", "provenance"), fingerprints=file_fingerprints,
    help="Read the configured sources (JSONL, CSV and text, plain or gzip/zstd/bz2/xz compressed; Parquet) "
         "into the bronze table with provenance; bad records go to the quarantine table with a reason.",
)


def main(argv: list[str] | None = None) -> None:
    from jobs.pipeline import STEPS  # the entry point learns the pipeline order from the registry

    job_main(STEP, argv, STEPS)


if __name__ == "__main__":
    main()
