# Databricks notebook source
# MAGIC %md
# MAGIC # cleanwell: run the pipeline
# MAGIC
# MAGIC Runs the same job code as `cleanwell run` and the Airflow DAG, on this cluster's SparkSession
# MAGIC (cleanwell reuses it and changes none of its settings). The cluster needs the cleanwell wheel
# MAGIC (the bundle's job installs it on every task; interactively, add it as a cluster library or run
# MAGIC `%pip install /Volumes/<catalog>/<schema>/<volume>/cleanwell-0.1.0-py3-none-any.whl` first).
# MAGIC
# MAGIC Widgets (the bundle's job parameters have the same names):
# MAGIC - `config`: the YAML config (sources, mixture, ...), e.g. in the volume.
# MAGIC - `catalog`, `schema`: tables go to `catalog.schema.<table>`, the detector to
# MAGIC   `catalog.schema.cleanwell_detector`; empty `catalog` keeps the config file's locations (`lake.root` paths).
# MAGIC - `volume`: manifests, reports and MLflow artifacts go to `/Volumes/catalog/schema/volume/`.
# MAGIC - `experiment`: the MLflow experiment, an absolute workspace path.
# MAGIC - `steps`: comma-separated subset (empty: all); `force`: rerun steps that are up to date.
# MAGIC - `overrides`: extra `key=value` settings, space-separated, applied last.
# MAGIC - `pipeline_run_id`: groups the MLflow runs of one job run (the job passes its run id).

# COMMAND ----------

dbutils.widgets.text("config", "/Volumes/main/cleanwell/cleanwell/conf/cleanwell.yaml")
dbutils.widgets.text("catalog", "main")
dbutils.widgets.text("schema", "cleanwell")
dbutils.widgets.text("volume", "cleanwell")
dbutils.widgets.text("experiment", "/Shared/cleanwell")
dbutils.widgets.text("steps", "")
dbutils.widgets.dropdown("force", "false", ["false", "true"])
dbutils.widgets.text("overrides", "")
dbutils.widgets.text("pipeline_run_id", "")

# COMMAND ----------

import os
import shlex

from jobs.common.config import load_config
from jobs.common.databricks import unity_catalog_overrides
from jobs.common.tracking import PIPELINE_RUN_ID_ENV
from jobs.pipeline import run_pipeline

widget = dbutils.widgets.get
if widget("pipeline_run_id"):
    os.environ[PIPELINE_RUN_ID_ENV] = widget("pipeline_run_id")
locations = (unity_catalog_overrides(widget("catalog"), widget("schema"), widget("experiment"), widget("volume"))
             if widget("catalog") else [])
cfg = load_config([widget("config")], locations + shlex.split(widget("overrides")))
steps = [s.strip() for s in widget("steps").split(",") if s.strip()] or None
outcomes = run_pipeline(cfg, steps, force=widget("force") == "true")

# COMMAND ----------

display(spark.createDataFrame([(o.step, o.status, round(o.seconds, 1), str(o.summary)) for o in outcomes],
                              "step string, status string, seconds double, summary string"))
