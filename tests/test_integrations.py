"""The same job code from spark-submit and a Databricks notebook (the Airflow DAG: tests/test_airflow.py)."""
from __future__ import annotations

import ast
import os

import pytest
import yaml

from tests.conftest import REPO


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


# spark-submit of jobs/submit.py (dist/cleanwell_submit.py is a copy of it) with master local[2] and Delta
# passed as --conf/--jars: every task of tests/test_airflow.py's demo DAG run does that, so the one-step
# version that was here (~45 s of CI) is gone.
