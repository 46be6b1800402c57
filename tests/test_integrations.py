"""The same job code from spark-submit and a Databricks notebook (the Airflow DAG: tests/test_airflow.py)."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jobs.common.session import DELTA_ARTIFACTS, delta_jar_paths
from tests.conftest import REPO, lake_overrides


class FakeWidgets:
    def __init__(self, values):
        self.values = values

    def text(self, name, default):
        self.values.setdefault(name, default)

    def dropdown(self, name, default, choices):
        self.values.setdefault(name, default)

    def get(self, name):
        return self.values[name]


class FakeDbutils:
    def __init__(self, values):
        self.widgets = FakeWidgets(values)


@pytest.mark.spark
def test_notebook_runs_the_jobs_on_the_active_session(spark, tmp_path, monkeypatch):
    """Execute the notebook's cells as a Databricks job task would (dbutils, display and spark from the
    platform), with Unity Catalog names on a local schema; only MLflow and files are pointed at tmp_path
    through the `overrides` widget."""
    import mlflow

    from jobs.common.tracking import PIPELINE_RUN_ID_ENV

    source = (REPO / "notebooks" / "run_pipeline.py").read_text()
    assert source.startswith("# Databricks notebook source")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.jsonl").write_text('{"text": "one small document"}\n{"text": "another one"}\n'
                                              '{"text": "one small document"}\n')
    config = tmp_path / "nb.yaml"
    config.write_text(yaml.safe_dump({"ingest": {"sources": [
        {"name": "tiny", "path": str(tmp_path / "src"), "format": "jsonl", "defaults": {"origin": "human"}}]}}))
    schema = f"cleanwell_nb_{os.getpid()}"
    spark.sql(f"CREATE SCHEMA spark_catalog.{schema} LOCATION '{(tmp_path / 'schema').as_uri()}'")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    local = (f"tracking.uri={store} tracking.registry_uri={store} tracking.artifact_root={tmp_path / 'mlartifacts'} "
             f"sample.manifest_dir={tmp_path / 'manifests'} report.dir={tmp_path / 'reports'} "
             f"lake.root={tmp_path / 'unused-lake'}")
    widgets = {"config": str(config), "catalog": "spark_catalog", "schema": schema, "volume": "files",
               "experiment": "/Shared/cleanwell-notebook-test", "steps": "ingest", "overrides": local,
               "pipeline_run_id": "job-run-42"}
    monkeypatch.setenv(PIPELINE_RUN_ID_ENV, "")  # restored after the test; the notebook sets it
    shown = []
    try:
        exec(compile(source, "run_pipeline.py", "exec"),
             {"dbutils": FakeDbutils(widgets), "display": shown.append, "spark": spark})
        assert [(r["step"], r["status"]) for r in shown[0].collect()] == [("ingest", "ran")]
        assert spark.table(f"spark_catalog.{schema}.bronze_documents").count() == 2  # one exact duplicate
        assert not (tmp_path / "unused-lake").exists()
        runs = mlflow.MlflowClient(tracking_uri=store).search_runs(
            [mlflow.MlflowClient(tracking_uri=store).get_experiment_by_name("/Shared/cleanwell-notebook-test")
             .experiment_id])
        assert "ingest" in {r.data.tags.get("cleanwell.step") for r in runs}
        assert {r.data.tags["cleanwell.pipeline_run_id"] for r in runs} == {"job-run-42"}
    finally:
        spark.sql(f"DROP SCHEMA IF EXISTS spark_catalog.{schema} CASCADE")


def test_notebooks_call_jobs_instead_of_copying_them():
    for path in (REPO / "notebooks").glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert any(m and m.startswith("jobs") for m in imported), path.name
        assert not [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and len(n.body) > 3], \
            f"{path.name} defines logic that belongs in jobs/"
        # Table, model and volume names come from the one function the tests run the catalog path with.
        called = {getattr(n.func, "id", None) for n in ast.walk(tree) if isinstance(n, ast.Call)}
        assert "unity_catalog_overrides" in called, path.name


# slow: a spark-submit JVM of its own (~27 s); test_cluster's packaged run submits on a cluster too.
@pytest.mark.slow
@pytest.mark.spark
def test_spark_submit_runs_a_job(tmp_path):
    """spark-submit with the cluster's own settings (here: local[2] + Delta passed as --conf/--jars)."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.jsonl").write_text('{"text": "one small document"}\n{"text": "another one"}\n{"bad json\n')
    config = tmp_path / "c.yaml"
    config.write_text(f"ingest:\n  sources:\n    - {{name: tiny, path: {source}, format: jsonl}}\n")
    submit = Path(sys.executable).parent / "spark-submit"
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    cmd = [str(submit), "--master", "local[2]", "--jars", ",".join(map(str, delta_jar_paths())),
           "--conf", "spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension",
           "--conf", "spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog",
           "--conf", "spark.ui.enabled=false",
           str(REPO / "jobs" / "submit.py"), "ingest", "--config", str(config), *lake_overrides(tmp_path)[:-1]]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[ingest] done" in proc.stdout and "inserted 2" in proc.stdout and "malformed_json 1" in proc.stdout
    assert len(DELTA_ARTIFACTS) == 2
