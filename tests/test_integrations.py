"""The same job code from spark-submit, a Databricks notebook and the Airflow DAG."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jobs.common import tables
from jobs.common.session import DELTA_ARTIFACTS, delta_jar_paths
from jobs.pipeline import STEP_NAMES
from tests.conftest import REPO, lake_overrides


def test_dag_runs_the_pipeline_steps_in_order():
    tree = ast.parse((REPO / "dags" / "cleanwell_pipeline.py").read_text())
    steps = next(ast.literal_eval(node.value) for node in ast.walk(tree)
                 if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "STEPS")
    assert steps == STEP_NAMES


def test_dag_loads_in_airflow_when_installed():
    pytest.importorskip("airflow", reason="the `airflow` extra is not installed")
    from airflow.models import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"), include_examples=False)
    assert not bag.import_errors
    dag = bag.get_dag("cleanwell_pipeline")
    assert [t.task_id for t in dag.topological_sort()] == STEP_NAMES


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
def test_notebook_runs_the_jobs_on_the_active_session(spark, fork_demo, tmp_path):
    """Execute the notebook's cells as Databricks would (dbutils, display and spark from the platform)."""
    source = (REPO / "notebooks" / "run_pipeline.py").read_text()
    assert source.startswith("# Databricks notebook source")
    cfg, _ = fork_demo()
    config = tmp_path / "nb.yaml"
    tree = cfg.model_dump(mode="json")
    config.write_text(yaml.safe_dump({k: tree[k] for k in ("lake", "tracking", "ingest", "sample", "report")}))
    shown = []
    widgets = {"config": str(config), "catalog": "", "steps": "dedup,report", "force": "true"}
    exec(compile(source, "run_pipeline.py", "exec"),
         {"dbutils": FakeDbutils(widgets), "display": shown.append, "spark": spark})
    assert [(r["step"], r["status"]) for r in shown[0].collect()] == [("dedup", "ran"), ("report", "ran")]
    assert tables.current_version(spark, tables.table_ref(cfg, "silver")) > 0


def test_notebooks_call_jobs_instead_of_copying_them():
    for path in (REPO / "notebooks").glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert any(m and m.startswith("jobs") for m in imported), path.name
        assert not [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and len(n.body) > 3], \
            f"{path.name} defines logic that belongs in jobs/"


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
