"""Concurrent writers on one lake (issue #13): Delta's optimistic concurrency rejects the loser of a
commit race; cleanwell's MERGE writes retry instead of failing with a raw traceback or losing rows."""
from __future__ import annotations

import threading

import pytest
from delta import exceptions as delta_errors

from jobs.common import tables
from jobs.common.errors import ConcurrentWriteError
from tests.conftest import spark_jobs

pytestmark = pytest.mark.spark


def race(spark, ref: tables.TableRef, batches: list[list[tuple]]) -> tuple[list[int], list[BaseException]]:
    """Each batch merged into ``ref`` by its own thread, all at once: (rows inserted, exceptions)."""
    inserted: list[int] = []
    failures: list[BaseException] = []

    def write(rows):
        try:
            inserted.append(tables.merge_insert_new(spark.createDataFrame(rows, "doc_id string, w int"), ref,
                                                    ["doc_id"]))
        except BaseException as exc:  # noqa: BLE001 - a thread's exception is reported by the test
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(rows,)) for rows in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return inserted, failures


@pytest.mark.slow  # three races of two writers (~25 s); CI runs it
def test_two_writers_creating_one_table_at_once_lose_no_row(spark, tmp_path):
    """Two ingests into an empty lake both create bronze: before, one died with ProtocolChangedException
    and its rows were missing until a rerun (and a create by overwrite could drop the other's rows)."""
    batches = [[(f"d{j}", writer) for j in range(writer * 5, writer * 5 + 10)] for writer in range(2)]
    for trial in range(3):  # the race is not certain in every trial; every trial must come out whole
        ref = tables.TableRef("race", str(tmp_path / f"race{trial}"), True)
        inserted, failures = race(spark, ref, batches)
        assert failures == []
        ids = [r["doc_id"] for r in tables.read_table(spark, ref).select("doc_id").collect()]
        assert sorted(ids) == sorted({f"d{j}" for j in range(15)})
        assert sum(inserted) == 15


@pytest.mark.parametrize("merge", [tables.merge_insert_new, tables.merge_upsert])
def test_a_writer_that_saw_no_table_merges_into_the_one_created_meanwhile(spark, tmp_path, monkeypatch, merge):
    """The race CI caught: writer B checks, finds no table, writer A creates it, then B writes. B used to
    append (blind append: no conflict) and the keys both wrote appeared twice. Made certain here by
    letting B's first existence check answer "absent" after A's table is there."""
    ref = tables.TableRef("race", str(tmp_path / "race"), True)
    tables.merge_insert_new(spark.createDataFrame([(f"d{j}", 0) for j in range(10)], "doc_id string, w int"),
                            ref, ["doc_id"])
    stale = [False]  # the first check's answer; later checks see the truth
    real_exists = tables.exists
    monkeypatch.setattr(tables, "exists", lambda s, r: stale.pop() if stale else real_exists(s, r))
    written = merge(spark.createDataFrame([(f"d{j}", 1) for j in range(5, 15)], "doc_id string, w int"), ref,
                    ["doc_id"])
    rows = {r["doc_id"]: r["w"] for r in tables.read_table(spark, ref).collect()}
    assert tables.read_table(spark, ref).count() == len(rows) == 15
    if merge is tables.merge_insert_new:
        assert written == 5 and rows["d5"] == 0
    else:
        assert written == 10 and rows["d5"] == 1


def test_conflicts_are_retried_then_reported_clearly(tmp_path):
    ref = tables.TableRef("busy", str(tmp_path / "busy"), True)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise delta_errors.ConcurrentAppendException(message="a concurrent writer committed first")
        return "done"

    assert tables.retry_on_conflict(ref, flaky, attempts=3) == "done" and len(calls) == 3

    def always():
        raise delta_errors.ProtocolChangedException(message="protocol changed")

    with pytest.raises(ConcurrentWriteError, match="run it again"):
        tables.retry_on_conflict(ref, always, attempts=2)


FIRST_USE = """
import sys
from jobs.common.config import load_config
from jobs.common.tracking import configure
cfg = load_config([], [f"tracking.uri=sqlite:///{sys.argv[1]}", f"tracking.artifact_root={sys.argv[1]}.art"])
mlflow = configure(cfg)
with mlflow.start_run():
    mlflow.log_param("process", sys.argv[2])
"""


@pytest.mark.slow  # four processes (~10 s); CI runs it
def test_processes_that_first_use_a_fresh_mlflow_database_at_once_all_succeed(tmp_path):
    """Four steps starting together on a new lake (an Airflow fan-out) each create or migrate mlflow.db:
    before the lock, every one of them failed in alembic ("table _alembic_tmp_metrics already exists")."""
    import os
    import subprocess
    import sys

    import mlflow

    from tests.conftest import REPO

    (tmp_path / "first_use.py").write_text(FIRST_USE)
    database = tmp_path / "mlflow.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    processes = [subprocess.Popen([sys.executable, "first_use.py", str(database), str(i)], cwd=tmp_path, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(4)]
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    assert [process.returncode for process in processes] == [0] * 4, "\n".join(o[-1500:] for o in outputs)
    client = mlflow.MlflowClient(f"sqlite:///{database}")
    experiment = client.get_experiment_by_name("cleanwell")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.params["process"] for r in runs) == ["0", "1", "2", "3"]


@pytest.mark.slow  # two step runs with MLflow (~13 s); CI runs it
def test_a_step_refuses_to_overwrite_a_table_another_run_wrote_while_it_ran(spark, make_config):
    """Two runs of steps that rewrite silver at once: before, both "succeeded" and the last writer silently
    replaced the other's commit. Now the overwrite is refused with a message, nothing is written and the
    step records no success; a step that meets no other writer publishes as before."""
    from jobs.common import gates
    from jobs.common.runner import Step, _successful_runs, execute

    cfg = make_config()
    ref = tables.table_ref(cfg, "silver")
    tables.overwrite(spark.createDataFrame([("a", 1)], "doc_id string, w int"), ref)

    def rewrite(other_writer: bool):
        def run(spark, cfg, log):
            mine = spark.createDataFrame([("mine", 2)], "doc_id string, w int")
            if other_writer:  # another process commits to silver while this step works
                tables.overwrite(spark.createDataFrame([("theirs", 3)], "doc_id string, w int"), ref)
            gates.publish(cfg, mine, "silver", [], log, lambda df, r: tables.overwrite(df, r))
            gates.publish(cfg, mine, "silver", [], log, lambda df, r: tables.overwrite(df, r))  # its own: fine
            return {}
        return Step(name="rewrite", run=run, inputs=(), outputs=("silver",), config_sections=(), help="test")

    with pytest.raises(ConcurrentWriteError, match=r"table `silver` changed while step `rewrite` ran"):
        execute(rewrite(other_writer=True), spark, cfg, steps=[], force=True, echo=lambda _: None)
    assert [r["doc_id"] for r in tables.read_table(spark, ref).collect()] == ["theirs"]  # the other run's commit
    assert [r for r in _successful_runs(spark, cfg) if r["step"] == "rewrite"] == []

    execute(rewrite(other_writer=False), spark, cfg, steps=[], force=True, echo=lambda _: None)
    assert [r["doc_id"] for r in tables.read_table(spark, ref).collect()] == ["mine"]


def test_a_table_another_process_created_after_this_session_looked_is_seen(spark, tmp_path):
    """Delta's isDeltaTable answers from the JVM's cached log: a session that looked at a path while it
    had no table kept answering "absent" after another process created one there (found by the mid-write
    test). The other process is stood in for by copying a table's files in behind the JVM's back."""
    import shutil

    made = tables.TableRef("made", str(tmp_path / "made"), True)
    tables.overwrite(spark.createDataFrame([("d0", 0), ("d1", 1)], "doc_id string, w int"), made)
    ref = tables.TableRef("late", str(tmp_path / "late"), True)
    (tmp_path / "late" / "_delta_log").mkdir(parents=True)  # what a write in flight leaves before its commit
    assert not tables.exists(spark, ref)
    shutil.copytree(made.location, ref.location, dirs_exist_ok=True)
    assert tables.exists(spark, ref)
    assert tables.read_table(spark, ref).count() == 2
    assert tables.current_version(spark, ref) == 0


def test_the_runs_a_process_keeps_are_those_on_disk_and_another_writer_s_row_is_read(spark, make_config):
    """The runner keeps pipeline_runs in memory after its own append (a read of each new version costs
    ~1.5 s a step), also after the append that created the table. What it returns must equal a fresh read
    of the table: after its own steps, after another writer's row (read again), and after the table is
    deleted and made again to the same version."""
    import shutil

    from jobs.common.runner import STATE_SCHEMA, Step, _record_success, _successful_runs

    cfg = make_config()
    ref = tables.table_ref(cfg, "pipeline_runs")

    def on_disk():
        return sorted(tables.read_table(spark, ref).collect(), key=lambda r: r["finished_at"])

    def kept():
        return sorted(_successful_runs(spark, cfg), key=lambda r: r["finished_at"])

    for name in ("first", "second"):  # what execute() does around a step: read the runs, record success
        jobs_before = spark_jobs(spark)
        _successful_runs(spark, cfg)
        assert spark_jobs(spark) == jobs_before  # no table, then the row the first append made: no read
        step = Step(name=name, run=lambda spark, cfg, log: {}, inputs=(), outputs=(), config_sections=(), help="t")
        _record_success(spark, cfg, step, f"run-{name}", "hash", {}, {})
    jobs_before = spark_jobs(spark)
    assert [r["step"] for r in kept()] == ["first", "second"]
    assert spark_jobs(spark) == jobs_before  # kept, not read
    assert kept() == on_disk()

    other = ("other", "run-x", "h", {}, {}, "{}", max(r["finished_at"] for r in on_disk()))
    tables.append(tables.local_frame(spark, [other], STATE_SCHEMA), ref)  # another writer's row
    assert [r["step"] for r in kept()] == ["first", "second", "other"] and kept() == on_disk()

    shutil.rmtree(ref.location)  # the same place, the same number of commits, other rows
    for name in ("a", "b", "c"):
        tables.append(tables.local_frame(spark, [(name, "r", "h", {}, {}, "{}", other[-1])], STATE_SCHEMA), ref)
    assert tables.current_version(spark, ref) == 2
    assert sorted(r["step"] for r in kept()) == ["a", "b", "c"]


@pytest.mark.slow  # a forked demo lake, dedup twice and an ingest in its own process (~60 s); CI runs it
def test_an_ingest_that_appends_while_dedup_runs_is_in_silver_after_the_next_run(spark, fork_demo, tmp_path,
                                                                                 monkeypatch):
    """Issue #13's "a dedup while an ingest appends": another process ingests new documents into bronze
    while dedup, having read bronze, is about to commit silver. Dedup commits what it read and its counts
    add up; it records the bronze it started from, so the next run is not "up to date": it dedups again
    and silver then holds every document, each once."""
    import json
    import os
    import subprocess
    import sys

    import yaml
    from pyspark.sql import functions as F

    from jobs import dedup
    from jobs.common import faults
    from jobs.common.runner import execute
    from jobs.pipeline import STEPS
    from tests.conftest import DEMO_CONFIG, REPO, SHORT_LIVED_JVM, lake_overrides

    cfg, root = fork_demo()
    bronze_ref, silver_ref = tables.table_ref(cfg, "bronze"), tables.table_ref(cfg, "silver")
    late = tmp_path / "late"
    late.mkdir()
    texts = [f"Late document {i}: a text that arrived while dedup was running, and it must not be lost."
             for i in range(3)]
    (late / "late.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    extra = tmp_path / "late.yaml"
    extra.write_text(yaml.safe_dump({"ingest": {"sources": [{
        "name": "latecomer", "path": str(late), "format": "jsonl",
        "defaults": {"origin": "human", "license": "CC0-1.0", "domain": "news", "language": "en"}}]}}))
    ingested = []

    def other_process_ingests(event: str, table: str) -> None:
        if (event, table) == ("before-write", "silver") and not ingested:
            ingested.append(subprocess.run(
                [sys.executable, "-m", "jobs.cli", "ingest", "-c", str(DEMO_CONFIG), "-c", str(extra),
                 *lake_overrides(root), SHORT_LIVED_JVM], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                capture_output=True, text=True, timeout=600))

    bronze_before = tables.read_table(spark, bronze_ref).select("doc_id").distinct().count()
    monkeypatch.setattr(faults, "point", other_process_ingests)
    first = execute(dedup.STEP, spark, cfg, steps=STEPS, force=True)
    monkeypatch.undo()
    assert ingested and ingested[0].returncode == 0, ingested and ingested[0].stderr[-3000:]
    silver = tables.read_table(spark, silver_ref)
    assert first.summary["rows_out"] == silver.count() == bronze_before  # what it read, counted as published
    assert first.summary["rows_in"] - first.summary["rows_out"] == first.summary["removed"]["exact_duplicate"]

    second = execute(dedup.STEP, spark, cfg, steps=STEPS)  # not forced: bronze changed since dedup read it
    assert second.status == "ran"
    bronze_ids = tables.read_table(spark, bronze_ref).select("doc_id").distinct()
    assert bronze_ids.count() == bronze_before + 3
    silver = tables.read_table(spark, silver_ref)
    assert silver.count() == silver.select("doc_id").distinct().count() == bronze_before + 3
    assert silver.where(F.col("source") == "latecomer").count() == 3
