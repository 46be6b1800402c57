"""Quality: add the basic quality signals to silver as columns (scores, not decisions).

Thresholds on these columns live in the mixture config; changing one never recomputes a signal.
"""
from __future__ import annotations

from typing import Any

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from jobs.common import gates, tables
from jobs.common.config import Config
from jobs.common.runner import Step, job_main
from jobs.common.tracking import RunLog
from udfs.quality import BASIC_SIGNALS
from udfs.spark import basic_signals_column


def run(spark: SparkSession, cfg: Config, log: RunLog) -> dict[str, Any]:
    ref = tables.table_ref(cfg, "silver")
    silver = tables.read_table(spark, ref)
    signals = basic_signals_column(F.col("text"))
    scored = silver.drop(*[c for c in (*BASIC_SIGNALS, "n_tokens") if c in silver.columns]).withColumns(
        {name: signals[name] for name in BASIC_SIGNALS})
    # Whitespace tokens until the tokenizer step provides model tokens.
    scored = scored.withColumn("n_tokens", F.col("n_words"))
    gates.publish(cfg, scored, "silver", "silver_quality", log,
                  lambda df, ref_: tables.overwrite(df, ref_, run_id=log.run_id))
    stats = tables.read_table(spark, ref).agg(
        F.count("*").alias("rows"), F.sum("n_tokens").alias("tokens"),
        F.avg("alpha_ratio").alias("mean_alpha_ratio"),
        F.avg("duplicate_line_fraction").alias("mean_duplicate_line_fraction")).first().asDict()
    for name, value in stats.items():
        log.metric(name, value or 0)
    return {"rows": stats["rows"], "tokens": stats["tokens"]}


STEP = Step(
    name="quality", run=run, inputs=("silver",), outputs=("silver",), config_sections=("quality",),
    help="Add quality signal columns to silver: n_chars, n_words, n_tokens, alpha_ratio, duplicate_line_fraction.",
)


def main(argv: list[str] | None = None) -> None:
    job_main(STEP, argv)


if __name__ == "__main__":
    main()
