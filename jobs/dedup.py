"""Dedup: bronze -> silver, one row per doc_id (exact duplicates collapsed by provenance priority).

The surviving copy of a text is chosen by provenance (pre-AI archive > human > unknown > synthetic,
then earliest date), so a text seen in an archive and in a synthetic dump stays labelled as archive
text. Nothing is lost: ``n_copies`` and ``copy_sources`` say where else the text was found, and
``origin_conflict`` flags texts whose sources disagree on who wrote them. Bronze keeps every copy.
"""
from __future__ import annotations

from typing import Any

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from jobs.common import gates, tables
from jobs.common.config import Config
from jobs.common.runner import Step, job_main
from jobs.common.schema import provenance_priority
from jobs.common.tracking import RunLog


def collapse_exact_duplicates(bronze: DataFrame) -> DataFrame:
    """One row per doc_id: the best-provenance copy, plus where the other copies came from."""
    best_first = Window.partitionBy("doc_id").orderBy(*provenance_priority())
    copies = bronze.groupBy("doc_id").agg(
        F.count("*").cast("int").alias("n_copies"),
        F.sort_array(F.collect_set("source")).alias("copy_sources"),
        (F.size(F.collect_set(F.when(F.col("origin") != "unknown", F.col("origin")))) > 1).alias("origin_conflict"),
    )
    survivors = bronze.withColumn("_rank", F.row_number().over(best_first)).where(F.col("_rank") == 1).drop("_rank")
    return survivors.join(copies, "doc_id")


def run(spark: SparkSession, cfg: Config, log: RunLog) -> dict[str, Any]:
    bronze = tables.read_table(spark, tables.table_ref(cfg, "bronze"))
    n_in = bronze.count()
    silver = collapse_exact_duplicates(bronze) if cfg.dedup.exact else bronze.withColumns(
        {"n_copies": F.lit(1), "copy_sources": F.array("source"), "origin_conflict": F.lit(False)})
    silver = silver.withColumn("dedup_run_id", F.lit(log.run_id))

    gates.publish(cfg, silver, "silver", "silver", log, lambda df, ref: tables.overwrite(df, ref, run_id=log.run_id))
    n_out = tables.read_table(spark, tables.table_ref(cfg, "silver")).count()
    removed = {"exact_duplicate": n_in - n_out}
    log.metric("rows_in", n_in)
    log.metric("rows_out", n_out)
    log.counts("removed", removed)
    return {"rows_in": n_in, "rows_out": n_out, "removed": removed}


STEP = Step(
    name="dedup", run=run, inputs=("bronze",), outputs=("silver",), config_sections=("dedup",),
    help="Build the silver table from bronze: one row per distinct text (doc_id), keeping the copy with the "
         "best provenance and recording where the other copies came from.",
)


def main(argv: list[str] | None = None) -> None:
    from jobs.pipeline import STEPS  # the entry point learns the pipeline order from the registry

    job_main(STEP, argv, STEPS)


if __name__ == "__main__":
    main()
