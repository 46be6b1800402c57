"""The whole pipeline on the bundled demo data, with real Spark, Delta, Great Expectations and MLflow.

One run of the pipeline (module fixture) serves most tests; tests that change state work on their
own lake.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from jobs import ingest, sample
from jobs.common import tables
from jobs.common.errors import GateFailed
from jobs.common.runner import execute
from jobs.common.schema import QUARANTINE_REASONS
from jobs.pipeline import STEP_NAMES, STEPS, run_pipeline
from tests.conftest import REPO

pytestmark = pytest.mark.spark
SOURCES = REPO / "data" / "demo" / "sources"


def count_input_records() -> int:
    """Records in the demo sources, counted without cleanwell's parser: non-blank JSONL lines, CSV
    lines after the header (no field of the demo CSV spans lines except inside quotes, so count rows
    with the csv module), Parquet rows (+1 per unreadable file), one per .txt file."""
    import csv

    jsonl = sum(1 for p in SOURCES.rglob("*.jsonl") for line in p.read_bytes().split(b"\n") if line.strip())
    with open(SOURCES / "wikihow" / "articles.csv", encoding="utf-8", newline="") as fh:
        csv_rows = sum(1 for _ in csv.reader(fh)) - 1
    parquet = 0
    for path in SOURCES.rglob("*.parquet"):
        try:
            parquet += pq.read_metadata(path).num_rows
        except pa.ArrowInvalid:  # the demo's deliberately truncated file: one quarantine row
            parquet += 1
    return jsonl + csv_rows + parquet + len(list(SOURCES.rglob("*.txt")))


def read(spark, cfg, name, version=None):
    return tables.read_table(spark, tables.table_ref(cfg, name), version)


def test_every_step_ran(demo):
    _, _, outcomes = demo
    assert list(outcomes) == STEP_NAMES
    assert all(o.status == "ran" for o in outcomes.values())


def test_records_in_equal_published_plus_quarantined_plus_removed_per_reason(spark, demo):
    cfg, _, outcomes = demo
    records = count_input_records()
    bronze = read(spark, cfg, "bronze").count()
    quarantine = read(spark, cfg, "quarantine")
    by_reason = {r["reason"]: r["count"] for r in quarantine.groupBy("reason").count().collect()}
    removed = outcomes["ingest"].summary["removed"]
    assert outcomes["ingest"].summary["records"] == records
    assert records == bronze + sum(by_reason.values()) + sum(removed.values())
    assert by_reason == outcomes["ingest"].summary["quarantined"]
    assert removed == {"exact_duplicate_in_source": 6, "already_ingested": 0}
    # Every quarantine reason the demo injects is caught, each with file and line.
    assert set(by_reason) == set(QUARANTINE_REASONS)
    assert quarantine.where(F.col("source_file").isNull() | F.col("detail").isNull()).count() == 0
    # bronze -> silver: every bronze row is either the surviving copy or counted as an exact duplicate.
    silver = read(spark, cfg, "silver")
    dedup = outcomes["dedup"].summary
    assert dedup["rows_in"] == bronze and silver.count() == dedup["rows_out"]
    assert bronze == silver.count() + dedup["removed"]["exact_duplicate"]
    assert silver.agg(F.sum("n_copies")).first()[0] == bronze


def test_malformed_parquet_file_is_quarantined_not_a_crash(spark, demo):
    cfg, _, _ = demo
    rows = read(spark, cfg, "quarantine").where(F.col("reason") == "unreadable_file").collect()
    assert [Path(r["source_file"]).name for r in rows] == ["truncated.parquet"]
    assert read(spark, cfg, "bronze").where(F.col("source") == "llama2").count() == 200


def test_exact_duplicates_keep_best_provenance(spark, demo):
    cfg, _, _ = demo
    silver = read(spark, cfg, "silver")
    archive = silver.where(F.col("source") == "archive").collect()
    assert len(archive) == 15  # archive copies beat the same texts from the wikipedia source
    assert all(r["pre_ai_archive"] and r["provenance_method"] == "archive" and r["origin"] == "human"
               and r["copy_sources"] == ["archive", "wikipedia"] for r in archive)
    assert silver.select("doc_id").distinct().count() == silver.count()
    c2pa = silver.where(F.col("metadata")["digital_source_type"].isNotNull()).first()
    assert (c2pa["origin"], c2pa["provenance_method"]) == ("synthetic", "declared")
    dated = silver.where((F.col("source") == "injected") & (F.year("created_at") == 2019)).collect()
    assert dated and all(r["origin"] == "human" and r["provenance_method"] == "date-inferred" for r in dated)


@pytest.mark.slow  # ~26 s; tests/test_crash_points.py's ingest rerun checks no bronze row twice in make test
def test_rerunning_ingest_adds_no_rows_and_no_version(spark, fork_demo):
    cfg, _ = fork_demo()
    bronze_ref = tables.table_ref(cfg, "bronze")
    before = (tables.current_version(spark, bronze_ref), read(spark, cfg, "bronze").count(),
              read(spark, cfg, "quarantine").count())
    outcome = execute(ingest.STEP, spark, cfg, steps=STEPS, force=True)
    assert outcome.summary["inserted"] == 0
    assert outcome.summary["removed"]["already_ingested"] == before[1]
    after = (tables.current_version(spark, bronze_ref), read(spark, cfg, "bronze").count(),
             read(spark, cfg, "quarantine").count())
    assert after == before
    assert read(spark, cfg, "bronze", version=0).count() == before[1]  # time travel to the first commit


@pytest.mark.slow  # ~78 s; CI runs it (make test's time: docs/performance.md)
def test_rerun_skips_up_to_date_steps_and_a_mixture_change_reruns_only_sample(spark, fork_demo, tmp_path):
    cfg, _ = fork_demo()
    assert {o.step: o.status for o in run_pipeline(cfg)} == dict.fromkeys(STEP_NAMES, "up-to-date")
    mixture = tmp_path / "mix.yaml"
    mixture.write_text((REPO / "conf/mixtures/demo.yaml").read_text().replace("seed: 17", "seed: 18"))
    changed, _ = fork_demo(f"sample.mixture={mixture}")
    statuses = {o.step: o.status for o in run_pipeline(changed)}
    assert statuses == {**dict.fromkeys(STEP_NAMES, "up-to-date"), "sample": "ran", "report": "ran"}


def test_manifest_names_the_versions_it_read(spark, demo):
    cfg, root, _ = demo
    manifest = json.loads((root / "manifests" / "demo" / "latest.json").read_text())
    silver_ref = tables.table_ref(cfg, "silver")
    assert manifest["inputs"]["silver"] == {"location": str(silver_ref),
                                            "version": tables.current_version(spark, silver_ref)}
    assert manifest["inputs"]["bronze"]["version"] == tables.current_version(spark, tables.table_ref(cfg, "bronze"))
    gold = read(spark, cfg, "gold", manifest["gold_version"]).where(F.col("mixture") == "demo")
    assert gold.count() == manifest["rows"]  # a row per copy (epoch)
    assert gold.select("doc_id").distinct().count() == manifest["documents"]
    assert gold.agg(F.sum("n_tokens")).first()[0] == manifest["tokens"]
    assert abs(manifest["tokens"] / manifest["token_budget"] - 1) <= 0.01
    assert manifest["synthetic_share"] <= 0.10
    row = read(spark, cfg, "manifests").where(F.col("run_id") == manifest["run_id"]).first()
    assert json.loads(row["manifest"])["inputs"] == manifest["inputs"]


@pytest.mark.slow  # ~40 s; test_sample's failed mixture gate checks the same promise on gold in make test
def test_failing_gate_publishes_nothing(spark, fork_demo, tmp_path):
    suites = tmp_path / "suites"
    shutil.copytree(REPO / "conf" / "expectations", suites)
    (suites / "gold.yaml").write_text("- expect_table_row_count_to_be_between: {min_value: 1000000}\n")
    strict, _ = fork_demo(f"gates.suites_dir={suites}")
    cfg = strict
    gold_ref = tables.table_ref(cfg, "gold")
    version = tables.current_version(spark, gold_ref)
    with pytest.raises(GateFailed, match="expect_table_row_count_to_be_between"):
        execute(sample.STEP, spark, strict, steps=STEPS, force=True)
    assert tables.current_version(spark, gold_ref) == version
    failed = read(spark, cfg, "gate_results").where((F.col("suite") == "gold") & ~F.col("success")).count()
    assert failed == 1


def test_every_step_is_a_child_mlflow_run_with_metrics_and_manifest(spark, demo):
    import mlflow

    cfg, _, outcomes = demo
    mlflow.set_tracking_uri(cfg.tracking.uri)
    client = mlflow.MlflowClient()
    ingest_run = client.get_run(outcomes["ingest"].run_id)
    parent = ingest_run.data.tags["mlflow.parentRunId"]
    assert client.get_run(parent).data.tags["cleanwell.kind"] == "pipeline"
    assert all(client.get_run(o.run_id).data.tags["mlflow.parentRunId"] == parent for o in outcomes.values())
    metrics = ingest_run.data.metrics
    assert metrics["records_read"] == outcomes["ingest"].summary["records"]
    assert metrics["quarantined.empty_text"] == 2
    assert ingest_run.data.params["ingest.max_text_bytes"] == "200000"
    artifacts = [a.path for a in client.list_artifacts(outcomes["sample"].run_id, "manifest")]
    assert artifacts == [f"manifest/{outcomes['sample'].run_id}.json"]


def test_report_is_html_with_plots(demo):
    _, root, outcomes = demo
    page = Path(outcomes["report"].summary["report"]).read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") >= 10
    for heading in ("Quarantined records by reason", "Documents removed or excluded, by reason",
                    "Embedding clusters: documents per cluster", "Silver: synthetic_probability by origin",
                    "Cluster coverage", "Latest gate outcomes"):
        assert heading in page, heading
    assert "unreadable_file" in page and "mixture:synthetic_not_vetted" in page
    assert (root / "reports" / "latest.html").exists()


def test_the_reports_queries_run_in_the_callers_job_group_and_without_pinned_threads(demo, spark, monkeypatch):
    """The report's queries run on a small thread pool; they carry the caller's job group (bench.fixed_cost
    counts jobs per step by it), and PySpark without pinned threads, whose inheritable_thread_target hands
    the session back, builds the same report."""
    from jobs import report

    cfg, _, _ = demo
    tracker = spark.sparkContext.statusTracker()
    spark.sparkContext.setJobGroup("report-under-test", "report under test")
    try:
        _, facts = report.build_report(spark, cfg)
    finally:
        spark.sparkContext.setJobGroup("", "")
    assert len(tracker.getJobIdsForGroup("report-under-test")) >= 6  # one or more per query, all in threads
    assert facts["rows"]["silver"] == tables.read_table(spark, tables.table_ref(cfg, "silver")).count()

    monkeypatch.setattr(report, "inheritable_thread_target", lambda f=None: f)  # as PySpark does unpinned
    _, unpinned = report.build_report(spark, cfg)
    assert unpinned == facts


def test_long_steps_report_spark_progress(spark):
    from jobs.common.runner import spark_progress

    lines: list[str] = []
    with spark_progress(spark, "busy", lines.append, every=0.2):
        spark.range(0, 2_000_000, numPartitions=24).selectExpr("sha2(cast(id as string), 512) AS h") \
            .groupBy("h").count().count()
    assert lines and all(line.startswith("[busy] … stage ") and "tasks" in line for line in lines)


def test_starting_spark_prepares_the_tracking_store_and_raises_its_error(spark, make_config, tmp_path):
    import mlflow

    from jobs.common.runner import start_spark

    cfg = make_config()
    assert start_spark(cfg) is spark  # the active session, as get_spark gives it
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.get_experiment_by_name(cfg.tracking.experiment) is not None  # made in the warm-up thread

    with pytest.raises(Exception, match="bogus"):  # not swallowed with its thread
        start_spark(make_config("tracking.uri=bogus://nowhere"))
