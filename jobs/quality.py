"""Quality: add quality signal columns to silver (scores, not decisions).

Text statistics (length, alphabetic ratio, line repetition), the published web-text rules as scores
(Gopher quality and repetition, C4, FineWeb; udfs/heuristics.py, docs/quality.md) and the detected
language. Thresholds on these columns live in the mixture config; changing one never recomputes a
signal.
"""
from __future__ import annotations

from typing import Any

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from jobs.common import gates, tables
from jobs.common.config import Config
from jobs.common.runner import Step, job_main
from jobs.common.tracking import RunLog
from udfs.heuristics import SIGNAL_COLUMNS
from udfs.quality import TEXT_STATISTICS
from udfs.spark import language_column, quality_rule_signals_column, text_statistics_column

LANGUAGE_COLUMNS = ("detected_language", "language_confidence")


def add_quality_signals(silver, cfg: Config):
    """``silver`` with every quality signal column (re)computed from ``text``."""
    produced = [*TEXT_STATISTICS, "n_tokens", *SIGNAL_COLUMNS, *LANGUAGE_COLUMNS]
    scored = silver.drop(*[c for c in produced if c in silver.columns])
    structs = {"_statistics": text_statistics_column(F.col("text"))}
    if cfg.quality.heuristics:
        structs["_rule_signals"] = quality_rule_signals_column(F.col("text"))
    if cfg.quality.language_id:
        structs["_language"] = language_column(F.col("text"), cfg.quality.language_max_chars)
    scored = scored.withColumns(structs)
    columns = {name: F.col("_statistics")[name] for name in TEXT_STATISTICS}
    if cfg.quality.heuristics:
        columns.update({name: F.col("_rule_signals")[name] for name in SIGNAL_COLUMNS})
    if cfg.quality.language_id:
        columns.update({name: F.col("_language")[name] for name in LANGUAGE_COLUMNS})
    # Whitespace tokens until the tokenizer step provides model tokens.
    columns["n_tokens"] = F.col("_statistics")["n_words"]
    return scored.withColumns(columns).drop(*structs)


def run(spark: SparkSession, cfg: Config, log: RunLog) -> dict[str, Any]:
    ref = tables.table_ref(cfg, "silver")
    scored = add_quality_signals(tables.read_table(spark, ref), cfg)
    suites = ["silver_quality"] + ["silver_heuristics"] * cfg.quality.heuristics + \
        ["silver_language"] * cfg.quality.language_id
    gates.publish(cfg, scored, "silver", suites, log,
                  lambda df, ref_: tables.overwrite(df, ref_, run_id=log.run_id))
    silver = tables.read_table(spark, ref)
    stats = silver.agg(F.count("*").alias("rows"), F.sum("n_tokens").alias("tokens"),
                       F.avg("alpha_ratio").alias("mean_alpha_ratio"),
                       F.avg("duplicate_line_fraction").alias("mean_duplicate_line_fraction")).first().asDict()
    for name, value in stats.items():
        log.metric(name, value or 0)
    summary: dict[str, Any] = {"rows": stats["rows"], "tokens": stats["tokens"]}
    if cfg.quality.language_id:
        languages = {r["detected_language"]: r["count"] for r in
                     silver.groupBy("detected_language").count().orderBy(F.desc("count")).limit(5).collect()}
        log.counts("documents_by_language", languages)
        summary["languages"] = languages
    return summary


STEP = Step(
    name="quality", run=run, inputs=("silver",), outputs=("silver",), config_sections=("quality",),
    help="Add quality signal columns to silver: length, alphabetic ratio, line repetition, Gopher/C4/FineWeb "
         "rule scores and the detected language.",
)


def main(argv: list[str] | None = None) -> None:
    from jobs.pipeline import STEPS  # the entry point learns the pipeline order from the registry

    job_main(STEP, argv, STEPS)


if __name__ == "__main__":
    main()
