"""jobs/common/tables.py helpers that are not about concurrency (test_concurrency.py) or faults."""
from __future__ import annotations

import datetime as dt

import pytest

from jobs.common import tables
from tests.conftest import spark_jobs

pytestmark = pytest.mark.spark

# Every kind of column the bookkeeping tables hold (pipeline_runs, gate_results, manifests, cluster summary).
SCHEMA = ("step string, run int, tokens long, share double, ok boolean, inputs map<string,string>, "
          "centroid array<double>, finished_at timestamp")
ROWS = [("ingest", 1, 2**40, 0.25, True, {"table:bronze": "3", "table:quarantine": "absent"}, [0.5, -1.0],
         dt.datetime(2026, 12, 4, 16, 55, 53, 107478, tzinfo=dt.UTC)),
        ("dedup", None, None, None, None, None, None, None)]


def test_driver_rows_become_the_frame_createdataframe_gives_without_a_spark_job(spark):
    jobs_before = spark_jobs(spark)

    frame = tables.local_frame(spark, ROWS, SCHEMA)
    got = frame.collect()

    # A local relation: collected on the driver, no job (a list's RDD costs one with a Python worker).
    assert spark_jobs(spark) == jobs_before
    assert frame.schema == spark.createDataFrame(ROWS, SCHEMA).schema
    assert got == spark.createDataFrame(ROWS, SCHEMA).collect()
    assert tables.local_frame(spark, [], SCHEMA).count() == 0


def test_a_row_of_the_wrong_width_is_refused(spark):
    with pytest.raises(ValueError):
        tables.local_frame(spark, [("ingest", 1)], SCHEMA)


def test_versions_come_from_the_log_without_a_job_and_see_another_process_commit(spark, tmp_path, monkeypatch):
    """current_version reads Delta's log (no Spark job, ~0.03 s, where history(1) costs a job and 0.3-0.5 s)
    and lists it again on every call: a commit another process adds is seen. That process is stood in for
    by copying a later commit's files in behind the JVM's back."""
    import shutil

    source = tables.TableRef("source", str(tmp_path / "source"), True)
    for n in range(3):
        tables.append(spark.createDataFrame([(f"d{n}", n)], "doc_id string, w int"), source)
    copy = tables.TableRef("copy", str(tmp_path / "copy"), True)
    shutil.copytree(source.location, copy.location, ignore=shutil.ignore_patterns("00000000000000000002.*"))

    jobs_before = spark_jobs(spark)
    assert tables.current_version(spark, source) == 2
    assert tables.current_version(spark, copy) == 1
    assert spark_jobs(spark) == jobs_before
    history = tables._delta_table(spark, copy).history(1).select("version").first()[0]
    assert history == 1

    shutil.copytree(source.location, copy.location, dirs_exist_ok=True)  # the other process's commit 2

    assert tables.current_version(spark, copy) == 2
    assert tables.read_table(spark, copy).count() == 3

    def no_internal_api(*_):
        raise AttributeError("deltaLog")  # as on a Delta build without it

    monkeypatch.setattr(tables, "_updated_snapshot", no_internal_api)
    assert tables.current_version(spark, copy) == 2
    assert tables.version_stamp(spark, copy)[0] == 2
    assert tables.current_version(spark, tables.TableRef("none", str(tmp_path / "none"), True)) is None
