# Databricks notebook source
# MAGIC %md
# MAGIC # cleanwell: run the pipeline
# MAGIC
# MAGIC Runs the same job code as `cleanwell run` and the Airflow DAG, on this cluster's SparkSession
# MAGIC (cleanwell reuses it and changes none of its settings). Install the wheel on the cluster first
# MAGIC (`pip install cleanwell-*.whl`, or the `%pip` cell below); Databricks Runtime already ships Delta Lake.
# MAGIC
# MAGIC Widgets: `config` (a YAML file in the workspace or a volume), `catalog` (`catalog.schema`
# MAGIC for Unity Catalog tables; empty to use `lake.root` paths), `steps` (comma-separated subset),
# MAGIC `force` (rerun steps that are up to date).

# COMMAND ----------

# MAGIC %pip install /Volumes/main/cleanwell/wheels/cleanwell-0.1.0-py3-none-any.whl

# COMMAND ----------

dbutils.widgets.text("config", "/Workspace/Shared/cleanwell/cleanwell.yaml")
dbutils.widgets.text("catalog", "main.cleanwell")
dbutils.widgets.text("steps", "")
dbutils.widgets.dropdown("force", "false", ["false", "true"])

# COMMAND ----------

from jobs.common.config import load_config
from jobs.pipeline import run_pipeline

config_file = dbutils.widgets.get("config")
catalog = dbutils.widgets.get("catalog")
overrides = [f"lake.catalog={catalog}"] if catalog else []
steps = [s.strip() for s in dbutils.widgets.get("steps").split(",") if s.strip()] or None
cfg = load_config([config_file], overrides)
outcomes = run_pipeline(cfg, steps, force=dbutils.widgets.get("force") == "true")

# COMMAND ----------

display(spark.createDataFrame([(o.step, o.status, round(o.seconds, 1), str(o.summary)) for o in outcomes],
                              "step string, status string, seconds double, summary string"))
