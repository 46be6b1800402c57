# Databricks notebook source
# MAGIC %md
# MAGIC # cleanwell: inspect the lake
# MAGIC
# MAGIC What was quarantined and why, what dedup collapsed, which gates failed, and the Delta history
# MAGIC of each table. Reads tables through `jobs.common.tables`, the same I/O the jobs use, by the same
# MAGIC Unity Catalog names as `run_pipeline` (`catalog.schema.<table>`; empty `catalog`: the config's `lake.root`).

# COMMAND ----------

dbutils.widgets.text("config", "/Volumes/main/cleanwell/cleanwell/conf/cleanwell.yaml")
dbutils.widgets.text("catalog", "main")
dbutils.widgets.text("schema", "cleanwell")

# COMMAND ----------

from pyspark.sql import functions as F

from jobs.common import tables
from jobs.common.config import load_config
from jobs.common.databricks import unity_catalog_overrides

widget = dbutils.widgets.get
cfg = load_config([widget("config")], unity_catalog_overrides(widget("catalog"), widget("schema"))
                  if widget("catalog") else [])


def table(name, version=None):
    return tables.read_table(spark, tables.table_ref(cfg, name), version)

# COMMAND ----------

# Quarantined records by source and reason, with an example of each.
display(table("quarantine").groupBy("source", "reason")
        .agg(F.count("*").alias("records"), F.first("detail").alias("example_detail")).orderBy("source", "reason"))

# COMMAND ----------

# Texts found in several sources, and texts whose sources disagree on who wrote them.
display(table("silver").where("n_copies > 1 OR origin_conflict")
        .select("doc_id", "source", "origin", "provenance_method", "n_copies", "copy_sources", "origin_conflict"))

# COMMAND ----------

# Gate outcomes, failures first.
display(table("gate_results").orderBy("success", F.col("evaluated_at").desc()))

# COMMAND ----------

for name in ("bronze", "silver", "gold"):
    display(tables.history(spark, tables.table_ref(cfg, name))
            .select("version", "timestamp", "operation", "userMetadata", "operationMetrics"))
