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


def test_preparing_the_gates_builds_the_context_only_when_gates_are_on(make_config):
    gates._context.cache_clear()
    gates.prepare(make_config("gates.enabled=false"))
    assert gates._context.cache_info().currsize == 0  # no GX import nor context for a run without gates
    gates.prepare(make_config())
    assert gates._context.cache_info().currsize == 1


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


# Which table each shipped suite gates in a demo run (jobs/*.py: gates.publish / gates.check).
SUITE_TABLES = {"bronze": "bronze", "clusters": "clusters", "gold": "gold", "exclusions": "exclusions",
                **{suite: "silver" for suite in ("silver", "silver_quality", "silver_heuristics", "silver_language",
                                                 "silver_neardup", "silver_tokens", "silver_detect", "silver_embed")}}


def _comparable(results):
    """(suite, expectation, column, success, what was observed) per outcome; unexpected values sorted, as
    the engines list them in their own order."""
    keep = ("observed_value", "element_count", "missing_count", "unexpected_count", "partial_unexpected_list")
    return [(r.suite, o.expectation, o.kwargs.get("column"), o.success,
             {k: sorted(map(str, v)) if isinstance(v, list) else v for k, v in o.observed.items() if k in keep})
            for r in results for o in r.outcomes]


def _spoiled(silver):
    """Demo silver with planted violations of several silver suites: unknown origins, a duplicated doc_id,
    negative word counts, a near-duplicate mark without its reason."""
    first = F.substring("doc_id", 1, 1)
    spoiled = (silver.withColumn("origin", F.when(first < "2", F.lit("robot")).otherwise(F.col("origin")))
               .withColumn("n_words", F.when(first == "a", -F.col("n_words")).otherwise(F.col("n_words")))
               .withColumn("duplicate_of", F.when(first == "3", F.col("doc_id")).otherwise(F.col("duplicate_of"))))
    return spoiled.unionByName(spoiled.limit(1))


@pytest.mark.spark
def test_pandas_and_spark_engines_agree_on_every_suite_of_a_demo_run(demo, spark):
    """gates.local_max_rows sends small frames to GX's pandas engine: every shipped suite must come out the
    same (success and what was observed) as on the Spark engine, on the demo's tables as published and on
    a silver that breaks several suites."""
    cfg, _, _ = demo
    excluded = tables.read_table(spark, tables.table_ref(cfg, "exclusions")).count()
    params = {"excluded": excluded}
    frames = {name: tables.read_table(spark, tables.table_ref(cfg, name)).cache()
              for name in set(SUITE_TABLES.values())}
    cases = [(suite, frames[name]) for suite, name in SUITE_TABLES.items()]
    cases.append(("silver*", _spoiled(frames["silver"]).cache()))
    failures_seen = 0
    for suite, frame in cases:
        names = [s for s, t in SUITE_TABLES.items() if t == "silver"] if suite == "silver*" else [suite]
        specs = {name: gates.load_suite(cfg, name, params) for name in names}
        local = gates._local_copy(frame, specs, max_rows=10**6)
        assert local is not None, f"{suite}: the pandas route was not taken"
        on_pandas, on_spark = gates._run_suites(local, specs, "BASIC"), gates._run_suites(frame, specs, "BASIC")
        assert _comparable(on_pandas) == _comparable(on_spark), suite
        failures_seen += sum(len(r.failures) for r in on_spark)
    assert failures_seen >= 4  # the spoiled silver did break expectations: the comparison covered failures
    for frame in frames.values():
        frame.unpersist()


@pytest.mark.spark
def test_small_frames_are_validated_in_the_driver_and_nan_large_or_spark_sql_conditions_are_not(spark):
    """The pandas route takes one count and one collect; a NaN (which pandas would count as missing and let
    `between` skip), more rows than the limit, or a Spark-SQL row condition keep GX's Spark engine."""
    from tests.conftest import spark_jobs

    specs = {"range": [("expect_column_values_to_be_between", {"column": "score", "min_value": 0, "max_value": 1}),
                       ("expect_column_values_to_be_unique", {"column": "doc_id"}),
                       ("expect_column_values_to_not_be_null", {"column": "doc_id"})]}
    frame = spark.createDataFrame([("a", 0.5), ("b", None)], "doc_id string, score double").cache()
    jobs = {}
    for limit in (2, 0):
        before = spark_jobs(spark)
        (result,) = gates.validate_all(frame, specs, "BASIC", local_max_rows=limit)
        jobs[limit] = spark_jobs(spark) - before
        assert result.success and result.outcomes[0].observed["missing_count"] == 1
    assert jobs[2] < jobs[0], jobs  # the driver route ran fewer Spark jobs than GX's Spark engine
    specs = {"range": specs["range"][:1]}

    with_nan = spark.createDataFrame([("a", 0.5), ("b", float("nan"))], "doc_id string, score double")
    assert gates._local_copy(with_nan, specs, max_rows=10) is None
    (result,) = gates.validate_all(with_nan, specs, "BASIC", local_max_rows=10)
    assert not result.success and result.outcomes[0].observed["unexpected_count"] == 1  # Spark rejects NaN
    assert gates._local_copy(frame, specs, max_rows=1) is None
    conditional = {"range": [("expect_column_values_to_not_be_null",
                              {"column": "score", "row_condition": "doc_id = 'a'", "condition_parser": "spark"})]}
    assert gates._local_copy(frame, conditional, max_rows=10) is None
    (result,) = gates.validate_all(frame, conditional, "BASIC", local_max_rows=10)
    assert result.success
