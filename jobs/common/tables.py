"""Delta table I/O by logical name: path under the lake root, or a catalog table name.

Every write is one Delta commit, so a reader sees the previous version or the new one, never a
half-written table, and an interrupted job leaves the last good version readable. Writes record the
MLflow run id as the commit's user metadata, so ``DESCRIBE HISTORY`` leads back to the run.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from delta import exceptions as delta_errors
from delta.tables import DeltaTable
from pyspark import StorageLevel
from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession

from jobs.common import faults, storage
from jobs.common.config import Config
from jobs.common.errors import ConcurrentWriteError, InputError, SetupError

# Frames a step reads more than once (ingest's parse, a gate's staged rows, embed's and sample's silver)
# persist to the executors' local disk, not the JVM heap: at 1 M documents, caching silver's texts in memory
# ran a 3 GiB local-mode heap out (OutOfMemoryError in ingest, building Spark's in-memory columnar cache;
# docs/performance.md). A Dataset cache is stored serialized either way, so disk costs one local write.
STAGING_LEVEL = StorageLevel.DISK_ONLY


def stage(df: DataFrame) -> DataFrame:
    """``df`` persisted at :data:`STAGING_LEVEL` (lazily: the first action fills it)."""
    return df.persist(STAGING_LEVEL)


@dataclass(frozen=True)
class TableRef:
    """Where a logical table lives: ``name`` is the key in ``conf tables``, ``location`` a path or table name."""

    name: str
    location: str
    by_path: bool

    def __str__(self) -> str:
        return self.location

    @property
    def sql_name(self) -> str:
        """The table in a SQL statement: ``delta.`path``` or each part of the catalog name quoted."""
        if self.by_path:
            return f"delta.`{self.location}`"
        return ".".join(f"`{part}`" for part in self.location.split("."))


def lake_root(cfg: Config) -> str:
    """``lake.root`` as Spark and storage get it: URIs as given, local paths made absolute (Delta's SQL
    path identifiers, delta.`path` used by ALTER TABLE, need an absolute path)."""
    root = cfg.lake.root.rstrip("/")
    return root if storage.is_url(root) else os.path.abspath(root)


def table_ref(cfg: Config, name: str) -> TableRef:
    physical = getattr(cfg.tables, name)
    if cfg.lake.catalog:
        return TableRef(name, f"{cfg.lake.catalog}.{physical}", by_path=False)
    return TableRef(name, f"{lake_root(cfg)}/{physical}", by_path=True)


def _delta_table(spark: SparkSession, ref: TableRef) -> DeltaTable:
    return DeltaTable.forPath(spark, ref.location) if ref.by_path else DeltaTable.forName(spark, ref.location)


def exists(spark: SparkSession, ref: TableRef) -> bool:
    if ref.by_path:
        with contextlib.suppress(Exception):  # without Delta's internal API: the public route below
            return _updated_snapshot(spark, ref).version() >= 0
        if DeltaTable.isDeltaTable(spark, ref.location):
            return True
        # isDeltaTable answers from the JVM's cached log: a path this session saw with an empty _delta_log
        # (another process's write in flight) stays "absent" after that process commits. A read refreshes
        # the log, so "no" is confirmed by one (docs/reliability.md; test_concurrency.py).
        try:
            spark.read.format("delta").load(ref.location)
        except AnalysisException:
            return False
        return True
    if spark.catalog.tableExists(ref.location):
        return True
    require_schema(spark, ref.location.rpartition(".")[0])
    return False


def require_schema(spark: SparkSession, schema: str) -> None:
    """cleanwell creates tables but never the schema that holds them: on Unity Catalog a job's principal
    usually may not (CREATE SCHEMA is a catalog privilege), and where the schema's files go
    (its managed location) is the workspace owner's choice."""
    if not spark.catalog.databaseExists(schema):
        raise SetupError(f"schema `{schema}` (conf key lake.catalog) does not exist, and cleanwell does not create "
                         f"schemas. Create it once, e.g. `CREATE SCHEMA {schema}` (optionally with MANAGED LOCATION "
                         "'<cloud path>'), and grant the job's principal USE CATALOG, USE SCHEMA, CREATE TABLE, "
                         "CREATE MODEL, SELECT and MODIFY on it.")


def read_table(spark: SparkSession, ref: TableRef, version: int | None = None) -> DataFrame:
    """The table's latest version, or ``version`` (time travel)."""
    if not exists(spark, ref):
        raise InputError(f"table `{ref.name}` does not exist at {ref.location}; run the step that creates it first")
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(ref.location) if ref.by_path else reader.table(ref.location)


def current_version(spark: SparkSession, ref: TableRef) -> int | None:
    """Latest committed version, or None when the table does not exist yet."""
    stamp = version_stamp(spark, ref)
    return None if stamp is None else stamp[0]


def version_stamp(spark: SparkSession, ref: TableRef) -> tuple[int, int] | None:
    """(latest version, a stamp of its commit's time), or None when the table does not exist: one state of
    the table even when it is deleted and created again at the same place. Compare stamps for equality
    only (the two routes below measure the time differently)."""
    if not ref.by_path and not exists(spark, ref):  # a path table's log says both (version -1: absent)
        return None
    snapshot = None
    with contextlib.suppress(Exception):  # a Delta without the internal API: the public route below
        snapshot = _updated_snapshot(spark, ref)
    if snapshot is not None:
        version = int(snapshot.version())
        return None if version < 0 else (version, int(snapshot.timestamp()))
    if ref.by_path and not exists(spark, ref):
        return None
    row = _delta_table(spark, ref).history(1).select("version", "timestamp").first()
    return int(row[0]), int(row[1].timestamp() * 1000)


def _updated_snapshot(spark: SparkSession, ref: TableRef):
    """Delta's log brought up to date from storage (it lists the log, so another process's commits count),
    without a Spark job: ``history(1)`` plans a query and runs a job for it, 0.3-0.5 s against 0.03 s,
    and a demo run asks ~90 times (docs/performance.md). A path table's log is opened directly (version
    -1: no table there): ``isDeltaTable`` and ``forPath`` before it listed the log twice more, and
    answering "absent" took a failed read (~7 ms a lookup against ~20 warm, ~100 for an absent table).
    ``DeltaLog``, ``deltaLog`` and ``update`` are Delta Lake's internal JVM API (delta-spark 4.x): a build
    without them (Databricks Runtime, Spark Connect's Python-only DeltaTable) raises, and the caller takes
    the public route."""
    jvm = spark._jvm
    if ref.by_path:
        log = jvm.org.apache.spark.sql.delta.DeltaLog.forTable(spark._jsparkSession, ref.location)
    else:
        log = _delta_table(spark, ref)._jdt.deltaLog()
    none = jvm.scala.Option.empty()
    return log.update(False, none, none)


# The versions of a running step's output tables when it started ({"step": name, "versions": {table: v}}):
# a publish that overwrites one of them refuses when another run committed to it in between (see
# guard_outputs), instead of silently replacing that run's work (last writer wins).
_started_from: contextvars.ContextVar[dict | None] = contextvars.ContextVar("started_from", default=None)


@contextlib.contextmanager
def guard_outputs(spark: SparkSession, cfg: Config, step: str, outputs: Sequence[str]) -> Iterator[None]:
    """Remember the versions of ``outputs`` now, for :func:`check_unchanged` while the block runs."""
    versions = {name: current_version(spark, table_ref(cfg, name)) for name in outputs}
    token = _started_from.set({"step": step, "versions": versions})
    try:
        yield
    finally:
        _started_from.reset(token)


def check_unchanged(spark: SparkSession, ref: TableRef) -> None:
    """Raise :class:`ConcurrentWriteError` when ``ref`` has a version the running step neither started from
    nor wrote itself: another run committed to it meanwhile, and overwriting would lose that commit. (A
    commit that lands between this check and the write is not caught: the window is the write itself.)"""
    state = _started_from.get()
    if state is None or ref.name not in state["versions"]:
        return
    expected, now = state["versions"][ref.name], current_version(spark, ref)
    if now != expected:
        raise ConcurrentWriteError(
            f"table `{ref.name}` changed while step `{state['step']}` ran (version {expected} when it started, "
            f"{now} now): another run wrote it. Nothing was written; run the step again when the other run has "
            "finished (concurrent runs of steps that rewrite one table are refused, not merged)")


def note_written(spark: SparkSession, ref: TableRef) -> None:
    """After the running step's own commit to ``ref``: that version is the step's, not another run's."""
    state = _started_from.get()
    if state is not None and ref.name in state["versions"]:
        state["versions"][ref.name] = current_version(spark, ref)


def history(spark: SparkSession, ref: TableRef, limit: int | None = None) -> DataFrame:
    table = _delta_table(spark, ref)
    return table.history(limit) if limit else table.history()


def local_frame(spark: SparkSession, rows: Sequence[Sequence], schema: str) -> DataFrame:
    """Rows built on the driver (bookkeeping rows, gate results, small lookup tables) as a DataFrame of
    ``schema`` (DDL). They go to Spark as one Arrow table, which it plans as a local relation: no job, no
    Python worker. A Python list given to ``createDataFrame`` becomes an RDD instead, and every action on
    it costs a job that starts a Python worker: ~1.3 s per frame on 2 cores (docs/performance.md), ~20
    frames per pipeline run. The schema is resolved by Spark itself (an empty frame's, which runs nothing),
    so the types are those the DDL gives, also under Spark Connect."""
    import pyarrow as pa
    from pyspark.sql.pandas.types import to_arrow_schema

    struct = spark.createDataFrame([], schema).schema
    names = struct.fieldNames()
    table = pa.Table.from_pylist([dict(zip(names, row, strict=True)) for row in rows], schema=to_arrow_schema(struct))
    return spark.createDataFrame(table, struct)


def require_columns(df: DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(f"{what} lacks column(s) {missing}; found: {sorted(df.columns)}. "
                         "Run the step that adds them first.")


def _writer(df: DataFrame, run_id: str | None):
    writer = df.write.format("delta")
    return writer.option("userMetadata", f"mlflow_run_id={run_id}") if run_id else writer


def _crash_points(ref: TableRef):
    """jobs/common/faults.py's points around one write of ``ref`` (mid-write only for a path table)."""
    return faults.committing(ref.name, ref.location if ref.by_path else None)


def overwrite(df: DataFrame, ref: TableRef, *, run_id: str | None = None, replace_where: str | None = None,
              properties: dict[str, str] | None = None) -> int:
    """Replace the table (or the rows matching ``replace_where``) in one commit; schema may change."""
    writer = _writer(df, run_id).mode("overwrite")
    if replace_where:
        writer = writer.option("replaceWhere", replace_where).option("mergeSchema", "true")
    else:
        writer = writer.option("overwriteSchema", "true")
    with _crash_points(ref):
        writer.save(ref.location) if ref.by_path else writer.saveAsTable(ref.location)
        if properties:
            set_properties(df.sparkSession, ref, properties)
    return current_version(df.sparkSession, ref)


def append(df: DataFrame, ref: TableRef, *, run_id: str | None = None) -> None:
    """Add rows in one commit (bookkeeping tables: no version lookup, which costs a log read)."""
    writer = _writer(df, run_id).mode("append").option("mergeSchema", "true")
    with _crash_points(ref):
        writer.save(ref.location) if ref.by_path else writer.saveAsTable(ref.location)


# Delta's optimistic concurrency: a commit that lost a race to another writer (two ingests creating the
# same table, two MERGEs into it) raises one of these, and Delta's advice is to run the operation again.
CONFLICTS = tuple(getattr(delta_errors, name) for name in (
    "ConcurrentAppendException", "ConcurrentDeleteDeleteException", "ConcurrentDeleteReadException",
    "ConcurrentTransactionException", "ConcurrentWriteException", "DeltaConcurrentModificationException",
    "MetadataChangedException", "ProtocolChangedException"))
CONFLICT_ATTEMPTS = 6
T = TypeVar("T")


def retry_on_conflict(ref: TableRef, action: Callable[[], T], attempts: int = CONFLICT_ATTEMPTS) -> T:
    """Run ``action`` (which must re-read what it depends on) again after a concurrent-commit conflict,
    with jittered back-off; a clear error once ``attempts`` are spent."""
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except CONFLICTS as exc:
            if attempt == attempts:
                raise ConcurrentWriteError(
                    f"{ref} kept changing under concurrent writers ({attempts} attempts; last: "
                    f"{type(exc).__name__}); nothing of this write was committed: run it again") from exc
            time.sleep(random.uniform(0.2, 1.0) * attempt)
    raise AssertionError("unreachable")


def _create(df: DataFrame, ref: TableRef, *, run_id: str | None = None) -> bool:
    """Create the table holding ``df``'s rows; False when another writer created it first. The mode is
    "error", not "append": an append that starts after the other writer's creation commits as a plain
    append beside its rows (duplicate keys, seen in CI), while "error" checks inside Delta's transaction
    that the table is still absent (a creation race on version 0 raises a conflict, which is retried)."""
    writer = _writer(df, run_id).mode("error")
    try:
        writer.save(ref.location) if ref.by_path else writer.saveAsTable(ref.location)
    except AnalysisException:
        if exists(df.sparkSession, ref):
            return False
        raise
    return True


def merge_insert_new(df: DataFrame, ref: TableRef, keys: Sequence[str], *, run_id: str | None = None) -> int:
    """Insert rows whose key is not in the table yet (idempotent: re-running inserts nothing).
    Returns the number of rows inserted. ``df`` must be unique on ``keys``. Safe beside a concurrent
    writer: the table is created only if still absent (never by an append or overwrite that could
    duplicate or drop the other writer's rows), and a lost race is retried as a MERGE."""
    spark = df.sparkSession
    condition = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)

    def attempt() -> int:
        if not exists(spark, ref):
            count = df.count()
            if not count or _create(df, ref, run_id=run_id):
                return count
        _with_commit_metadata(spark, run_id,
                              lambda: _delta_table(spark, ref).alias("t").merge(df.alias("s"), condition)
                              .whenNotMatchedInsertAll().execute())
        return _last_operation_metric(spark, ref, "numTargetRowsInserted")

    with _crash_points(ref):
        inserted = retry_on_conflict(ref, attempt)
    return inserted


def merge_upsert(df: DataFrame, ref: TableRef, keys: Sequence[str], *, run_id: str | None = None) -> int:
    """MERGE: update rows whose key exists, insert the others. Returns rows inserted + updated."""
    spark = df.sparkSession
    condition = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)

    def attempt() -> int:
        if not exists(spark, ref) and _create(df, ref, run_id=run_id):
            return df.count()
        _with_commit_metadata(spark, run_id,
                              lambda: _delta_table(spark, ref).alias("t").merge(df.alias("s"), condition)
                              .whenMatchedUpdateAll().whenNotMatchedInsertAll().execute())
        return (_last_operation_metric(spark, ref, "numTargetRowsInserted")
                + _last_operation_metric(spark, ref, "numTargetRowsUpdated"))

    with _crash_points(ref):
        changed = retry_on_conflict(ref, attempt)
    return changed


def set_properties(spark: SparkSession, ref: TableRef, properties: dict[str, str]) -> None:
    """Record settings in the table's properties (e.g. the parameters its rows were computed with)."""
    assignments = ", ".join(f"'{k}' = '{str(v).replace(chr(39), '')}'" for k, v in properties.items())
    spark.sql(f"ALTER TABLE {ref.sql_name} SET TBLPROPERTIES ({assignments})")


def properties(spark: SparkSession, ref: TableRef) -> dict[str, str]:
    return dict(_delta_table(spark, ref).detail().select("properties").first()[0] or {})


def _with_commit_metadata(spark: SparkSession, run_id: str | None, action) -> None:
    key = "spark.databricks.delta.commitInfo.userMetadata"
    previous = spark.conf.get(key, None)
    if run_id:
        spark.conf.set(key, f"mlflow_run_id={run_id}")
    try:
        action()
    finally:
        if previous is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, previous)


def _last_operation_metric(spark: SparkSession, ref: TableRef, metric: str) -> int:
    metrics = _delta_table(spark, ref).history(1).select("operationMetrics").first()[0] or {}
    return int(metrics.get(metric, 0))
