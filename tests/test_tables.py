"""jobs/common/tables.py helpers that are not about concurrency (test_concurrency.py) or faults."""
from __future__ import annotations

import datetime as dt

import pytest

from jobs.common import tables

pytestmark = pytest.mark.spark

# Every kind of column the bookkeeping tables hold (pipeline_runs, gate_results, manifests, cluster summary).
SCHEMA = ("step string, run int, tokens long, share double, ok boolean, inputs map<string,string>, "
          "centroid array<double>, finished_at timestamp")
ROWS = [("ingest", 1, 2**40, 0.25, True, {"table:bronze": "3", "table:quarantine": "absent"}, [0.5, -1.0],
         dt.datetime(2026, 12, 4, 16, 55, 53, 107478, tzinfo=dt.UTC)),
        ("dedup", None, None, None, None, None, None, None)]


def test_driver_rows_become_the_frame_createdataframe_gives_without_a_spark_job(spark):
    jobs_before = len(spark.sparkContext.statusTracker().getJobIdsForGroup(None))

    frame = tables.local_frame(spark, ROWS, SCHEMA)
    got = frame.collect()

    # A local relation: collected on the driver, no job (a list's RDD costs one with a Python worker).
    assert len(spark.sparkContext.statusTracker().getJobIdsForGroup(None)) == jobs_before
    assert frame.schema == spark.createDataFrame(ROWS, SCHEMA).schema
    assert got == spark.createDataFrame(ROWS, SCHEMA).collect()
    assert tables.local_frame(spark, [], SCHEMA).count() == 0


def test_a_row_of_the_wrong_width_is_refused(spark):
    with pytest.raises(ValueError):
        tables.local_frame(spark, [("ingest", 1)], SCHEMA)
