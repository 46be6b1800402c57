"""The Databricks surface: catalog tables by name (lake.catalog), the names the notebooks build, the bundle.

The steps run for real against a schema of Spark's session catalog (Delta's catalog), with the
overrides from ``jobs.common.databricks.unity_catalog_overrides``, the function the notebooks call on
Databricks: only the catalog, the MLflow store (a local sqlite one, holding the detector under its
three-part name) and the volume root (a temporary folder) differ from a workspace.
"""
from __future__ import annotations

import ast
import json
import uuid
from pathlib import Path

import pytest
import yaml

from jobs import ingest
from jobs.common import tables
from jobs.common.config import load_config
from jobs.common.databricks import DETECTOR_MODEL, unity_catalog_overrides, volume_path
from jobs.common.errors import ConfigError, SetupError
from jobs.common.runner import execute
from jobs.pipeline import STEP_NAMES, STEPS, run_pipeline
from tests.conftest import DEMO_CONFIG, REPO

CATALOG = "spark_catalog"
VOLUME = "files"
EXPERIMENT = "/Shared/cleanwell-test"


@pytest.fixture
def local_schema(spark, tmp_path):
    """A schema of its own whose files live under tmp_path (never in the repository's spark-warehouse).
    The test creates it because cleanwell does not create schemas (see test_a_missing_schema_...)."""
    schema = f"cleanwell_test_{uuid.uuid4().hex[:10]}"
    spark.sql(f"CREATE SCHEMA {CATALOG}.{schema} LOCATION '{(tmp_path / 'schema').as_uri()}'")
    yield schema
    spark.sql(f"DROP SCHEMA IF EXISTS {CATALOG}.{schema} CASCADE")


def catalog_config(tmp_path: Path, schema: str):
    """The demo config with every location from unity_catalog_overrides: tables by name, files (and the
    mixture's export shards, which follow lake.root) in the volume folder."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = unity_catalog_overrides(CATALOG, schema, EXPERIMENT, VOLUME, volumes_root=str(tmp_path / "Volumes"),
                                        tracking_uri=store, registry_uri=store)
    return load_config([str(DEMO_CONFIG)], overrides)


def table_name(schema: str, physical: str) -> str:
    return f"{CATALOG}.{schema}.{physical}"


def test_unity_catalog_overrides_name_every_location():
    overrides = unity_catalog_overrides("main", "curation", "/Shared/cleanwell", "files")
    cfg = load_config(overrides=overrides)
    assert tables.table_ref(cfg, "gold").location == "main.curation.gold_mixture"
    assert not tables.table_ref(cfg, "silver").by_path
    assert cfg.detect.registered_model == f"main.curation.{DETECTOR_MODEL}"
    assert (cfg.tracking.uri, cfg.tracking.registry_uri) == ("databricks", "databricks-uc")
    assert cfg.tracking.experiment == "/Shared/cleanwell"
    assert cfg.tracking.artifact_root == "dbfs:/Volumes/main/curation/files/mlflow"
    assert cfg.sample.manifest_dir == "/Volumes/main/curation/files/manifests"
    assert cfg.report.dir == "/Volumes/main/curation/files/reports"


@pytest.mark.parametrize("args, message", [
    (("main", "my-schema"), "schema 'my-schema' is not a plain identifier"),
    (("main", "curation", "cleanwell"), "must be an absolute workspace path"),
    (("main", "curation", "/Shared/x", "a/b"), "volume 'a/b' is not a plain identifier"),
])
def test_unity_catalog_overrides_reject_names_they_cannot_use(args, message):
    with pytest.raises(ConfigError, match=message):
        unity_catalog_overrides(*args)


@pytest.mark.spark
def test_a_missing_schema_is_reported_not_created(spark, tmp_path):
    schema = f"cleanwell_absent_{uuid.uuid4().hex[:10]}"
    cfg = catalog_config(tmp_path, schema)
    with pytest.raises(SetupError, match=rf"schema `{CATALOG}.{schema}` .* does not exist, and cleanwell does not"):
        execute(ingest.STEP, spark, cfg, steps=STEPS)
    assert not spark.catalog.databaseExists(f"{CATALOG}.{schema}")


# slow: the whole pipeline on catalog tables (~3 min); naming is covered fast by the other tests here and
# resume by test_pipeline's rerun test. One run for all of it: the four-step run this replaced cost ~80 s.
@pytest.mark.spark
@pytest.mark.slow
def test_whole_pipeline_on_catalog_tables_with_a_three_part_model_name(spark, local_schema, tmp_path):
    import mlflow

    cfg = catalog_config(tmp_path, local_schema)
    first = {o.step: o for o in run_pipeline(cfg)}
    assert [o.status for o in first.values()] == ["ran"] * len(STEP_NAMES)

    for name in ("bronze", "quarantine", "silver", "band_index", "gate_results", "pipeline_runs", "gold",
                 "manifests", "clusters"):
        physical = getattr(cfg.tables, name)
        assert spark.catalog.tableExists(table_name(local_schema, physical)), physical
        location = spark.sql(f"DESCRIBE DETAIL {table_name(local_schema, physical)}").first()["location"]
        assert location.replace("file://", "file:").startswith(f"file:{tmp_path / 'schema'}/"), location
    silver = spark.table(table_name(local_schema, cfg.tables.silver))
    bronze = spark.table(table_name(local_schema, cfg.tables.bronze))
    assert silver.count() == bronze.select("doc_id").distinct().count() > 400
    # Every silver commit of the signal steps names its MLflow run, read back by table name.
    history = spark.sql(f"DESCRIBE HISTORY {table_name(local_schema, cfg.tables.silver)}").collect()
    assert {f"mlflow_run_id={first[s].run_id}" for s in ("dedup", "quality", "neardup")} <= \
        {r["userMetadata"] for r in history}
    # neardup records its settings as table properties (ALTER TABLE by name).
    assert tables.properties(spark, tables.table_ref(cfg, "silver"))["cleanwell.neardup.enabled"] == "true"
    store = cfg.tracking.uri
    model = f"{CATALOG}.{local_schema}.{DETECTOR_MODEL}"
    champion = mlflow.MlflowClient(tracking_uri=store, registry_uri=store).get_model_version_by_alias(model,
                                                                                                    "champion")
    assert champion.name == model

    files = Path(volume_path(CATALOG, local_schema, VOLUME, str(tmp_path / "Volumes")))
    manifest = json.loads((files / "manifests" / "demo" / "latest.json").read_text())
    gold_version = tables.current_version(spark, tables.table_ref(cfg, "gold"))
    assert manifest["gold_version"] == gold_version
    assert (files / "reports" / "latest.html").is_file()
    assert list((files / "lake" / "exports" / "demo").rglob("part-*"))
    assert [p.name for p in (files / "lake").iterdir()] == ["exports"]  # no table by path in catalog mode

    assert [o.status for o in run_pipeline(cfg)] == ["up-to-date"] * len(STEP_NAMES)

    # A forced re-ingest MERGEs by name and inserts nothing: same rows, no new bronze version.
    bronze_ref = tables.table_ref(cfg, "bronze")
    version = tables.current_version(spark, bronze_ref)
    forced = execute(ingest.STEP, spark, cfg, steps=STEPS, force=True)
    assert forced.summary["inserted"] == 0
    assert forced.summary["removed"]["already_ingested"] == bronze.count()
    assert tables.current_version(spark, bronze_ref) == version


def upstream_writers(index: int) -> dict[str, str]:
    """For each table step ``index`` reads or rewrites, the latest earlier step that wrote it."""
    step = STEPS[index]
    writers = {}
    for table in (*step.inputs, *step.outputs):
        earlier = [s.name for s in STEPS[:index] if table in s.outputs]
        if earlier:
            writers[table] = earlier[-1]
    return writers


def test_bundle_job_runs_every_step_after_the_steps_that_wrote_its_tables():
    bundle = yaml.safe_load((REPO / "databricks.yml").read_text())
    job = bundle["resources"]["jobs"]["cleanwell"]
    tasks = job["tasks"]
    assert [t["task_key"] for t in tasks] == STEP_NAMES
    depends = {t["task_key"]: [d["task_key"] for d in t.get("depends_on", [])] for t in tasks}

    def ancestors(name: str) -> set[str]:
        return {a for parent in depends[name] for a in {parent} | ancestors(parent)}

    for index, task in enumerate(tasks):
        writers = upstream_writers(index)
        # Directly after the latest writer of anything it touches, and after every other writer too.
        latest = max(writers.values(), key=STEP_NAMES.index) if writers else None
        assert depends[task["task_key"]] == ([latest] if latest else []), task["task_key"]
        assert set(writers.values()) <= ancestors(task["task_key"]), task["task_key"]
    assert upstream_writers(STEP_NAMES.index("report")) == {
        "bronze": "ingest", "quarantine": "ingest", "silver": "embed", "gold": "sample"}


def test_bundle_tasks_run_the_notebook_with_the_wheel_and_the_job_parameters():
    bundle = yaml.safe_load((REPO / "databricks.yml").read_text())
    job = bundle["resources"]["jobs"]["cleanwell"]
    (wheel_file,) = bundle["artifacts"]["cleanwell"]["files"]
    assert "pip wheel --no-deps" in bundle["artifacts"]["cleanwell"]["build"]
    clusters = {c["job_cluster_key"]: c["new_cluster"] for c in job["job_clusters"]}
    notebook = REPO / "notebooks" / "run_pipeline.py"
    for task in job["tasks"]:
        assert task["notebook_task"]["notebook_path"] == "./notebooks/run_pipeline.py"
        assert task["notebook_task"]["base_parameters"] == {"steps": task["task_key"]}
        assert task["libraries"] == [{"whl": wheel_file["source"]}]
        assert clusters[task["job_cluster_key"]]["spark_version"].startswith("17.3.x-scala2.13")

    widgets = [node.args[0].value for node in ast.walk(ast.parse(notebook.read_text()))
               if isinstance(node, ast.Call) and getattr(node.func, "attr", None) in ("text", "dropdown")]
    # Job parameters reach the notebook as widgets of the same name; `steps` is each task's own.
    assert sorted(p["name"] for p in job["parameters"]) == sorted(set(widgets) - {"steps"})
    assert set(bundle["targets"]) == {"dev", "prod"}
    for name in ("catalog", "schema", "volume", "experiment"):
        assert f"${{var.{name}}}" in {p["default"] for p in job["parameters"]}, name
