"""Gates: every suite of a publish validated together, outcomes queued per step and written in one commit."""
from __future__ import annotations

import pytest
from pyspark.sql import functions as F

from jobs.common import gates, tables
from jobs.common.errors import GateFailed
from jobs.common.tracking import tracked_run


def _suites(folder):
    (folder / "shape.yaml").write_text("- expect_table_row_count_to_be_between: {min_value: 1}\n"
                                       "- expect_column_values_to_be_unique: {column: doc_id}\n")
    (folder / "range.yaml").write_text("- expect_column_values_to_be_between: {column: score, min_value: 0, "
                                       "max_value: '${top}'}\n")


@pytest.mark.spark
@pytest.mark.parametrize("result_format", ["BOOLEAN_ONLY", "BASIC"])
def test_suites_validated_together_record_each_suite_and_a_failure_says_what_was_found(spark, make_config,
                                                                                       tmp_path, result_format):
    _suites(tmp_path)
    cfg = make_config(f"gates.suites_dir={tmp_path}", f"gates.result_format={result_format}")
    frame = spark.range(5).select(F.col("id").cast("string").alias("doc_id"), (F.col("id") * 10).alias("score"))
    with tracked_run(cfg, "gate-test") as log:
        passed = gates.check(cfg, frame, ["shape", "range"], log, "t", params={"top": 100})
        assert [(r.suite, r.success, len(r.outcomes)) for r in passed] == [("shape", True, 2), ("range", True, 1)]
        observed = {o.expectation: o.observed for r in passed for o in r.outcomes}
        # BOOLEAN_ONLY computes success only; BASIC records what it saw for a passing expectation too.
        assert (observed["expect_table_row_count_to_be_between"] == {}) == (result_format == "BOOLEAN_ONLY")

        with pytest.raises(GateFailed, match=r"gate `range` failed") as failure:
            gates.check(cfg, frame, ["shape", "range"], log, "t", params={"top": 25})
        (bad,) = failure.value.result.failures
        # A failure is always explained: rerun with BASIC, the unexpected values are in the outcome.
        assert bad.observed["unexpected_count"] == 2 and sorted(bad.observed["partial_unexpected_list"]) == [30, 40]
        assert len(log.gate_rows) == 6  # queued, not yet written
        gates.flush(cfg, spark, log)
        assert log.gate_rows == []

    ref = tables.table_ref(cfg, "gate_results")
    rows = tables.read_table(spark, ref).where(F.col("run_id") == log.run_id).collect()
    assert sorted((r["suite"], r["success"]) for r in rows) == sorted(
        [("shape", True)] * 4 + [("range", True), ("range", False)])
    assert tables.current_version(spark, ref) == 0  # both checks' outcomes in one commit


@pytest.mark.spark
def test_disabled_gates_validate_nothing_and_queue_nothing(spark, make_config):
    import mlflow

    cfg = make_config("gates.enabled=false")
    with tracked_run(cfg, "gate-test") as log:  # the tags need an active run (and it must end here)
        assert gates.check(cfg, spark.range(0), ["no-such-suite"], log, "t") == []
        assert log.gate_rows == []
    assert mlflow.get_run(log.run_id).data.tags["gate.no-such-suite"] == "disabled"
    assert mlflow.active_run() is None


@pytest.mark.spark
def test_a_gate_that_cannot_be_computed_says_why(spark, make_config, tmp_path):
    """A UDF upstream of the validated frame that raises made every expectation "fail" with `{}`: the
    error (here a KeyError in the Python worker) must be in the failure message."""
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("double")
    def broken(values):
        raise KeyError("model bundle lacks 'idf'")

    _suites(tmp_path)
    cfg = make_config(f"gates.suites_dir={tmp_path}")
    frame = spark.range(3).select(F.col("id").cast("string").alias("doc_id"), broken(F.col("id")).alias("score"))
    with tracked_run(cfg, "gate-error") as log, pytest.raises(GateFailed) as failure:
        gates.check(cfg, frame, ["range"], log, "t", params={"top": 1})
    assert "KeyError" in str(failure.value) and "lacks 'idf'" in str(failure.value)
