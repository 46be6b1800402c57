"""Sample: silver -> a gold training mixture to a token budget, its exclusions, manifest, shards and gates.

This is the only step that *decides*; everything it applies comes from the mixture config
(conf/mixtures/*.yaml, keys in docs/config.md), read top to bottom in :func:`run`:

1. Eligibility (jobs/common/eligibility.py). Every silver document is either eligible or excluded
   under the first reason it meets: duplicates, language, quality thresholds and rules, watermarked or
   synthetic documents from unvetted sources or failing validation against the human reference set,
   losers of best-of-n rejection sampling, groups without a weight. Each exclusion keeps its evidence
   (value, threshold, detail). The detector's threshold is resolved once, first
   (jobs/common/detector_registry.py): the mixture's fixed `filters.max_synthetic_probability`, else the
   registered champion's threshold for `filters.detector_target_fpr`; the manifest and the MLflow run
   record it (`detector_threshold`).
2. Allocation and selection (jobs/common/selection.py): group weights spread over embedding clusters,
   documents taken in a fixed priority and hash order, caps, a greedy fill to the budget.
3. Publication. The mixture passes the `mixture` gate (a one-row summary: synthetic share, budget,
   duplicates, weights, source share, epochs), the `exclusions` and the row-level `gold` suites before
   the gold rows, one exclusion row per excluded document, the manifest (Delta row + JSON,
   jobs/common/manifest.py) and the shards are written. A failed gate writes none of them.
"""
from __future__ import annotations

from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.common import gates, storage, tables
from jobs.common.config import Config, MixtureConfig, config_hash, load_mixture
from jobs.common.detector_registry import DetectorThreshold, resolve_detector_threshold
from jobs.common.eligibility import EVIDENCE_COLUMNS, eligibility, exclusion_rows
from jobs.common.manifest import Decisions, build_manifest, gold_cells, input_versions, mixture_summary, write_manifest
from jobs.common.runner import Step, job_main
from jobs.common.selection import allocate, judged_cells, select, with_selection_order
from jobs.common.tracking import RunLog

GOLD_DROP = ("embedding",)
MIXTURE_GATE_COLUMNS = ("budget_error", "synthetic_share", "duplicates_included", "max_weight_error",
                        "max_source_share", "copies_over_epoch_cap")


def read_silver(spark: SparkSession, cfg: Config) -> tuple[int, DataFrame]:
    """The current silver version and its rows; without embedding clusters (embed step not run) every
    document is in cluster 0."""
    ref = tables.table_ref(cfg, "silver")
    version = tables.current_version(spark, ref)
    silver = tables.read_table(spark, ref, version=version)
    return version, silver.withColumn("cluster_id", F.col("cluster_id").cast("int") if "cluster_id" in silver.columns
                                      else F.lit(0))


def check_mixture(cfg: Config, spark: SparkSession, summary: dict[str, Any], mixture: MixtureConfig,
                  log: RunLog) -> None:
    """The `mixture` suite on a one-row frame of the summary; its `${...}` bounds come from the mixture."""
    row = tables.local_frame(spark, [tuple(float(summary[c]) for c in MIXTURE_GATE_COLUMNS)],
                             ", ".join(f"{c} double" for c in MIXTURE_GATE_COLUMNS))
    params = {"budget_tolerance": mixture.budget_tolerance, "max_synthetic_share": mixture.max_synthetic_share,
              "weight_tolerance": mixture.weight_tolerance, "max_source_share": mixture.max_source_share}
    gates.check(cfg, row, "mixture", log, f"mixture {mixture.name}", params=params)


def publish(cfg: Config, mixture: MixtureConfig, gold: DataFrame, exclusions: DataFrame, excluded: int,
            log: RunLog) -> tuple[int, int]:
    """Gate the exclusion rows, then gate and write gold, then write the exclusions: (gold version,
    exclusions version). Both tables hold every mixture; this run replaces its own mixture's rows."""
    spark = gold.sparkSession
    refs = {name: tables.table_ref(cfg, name) for name in ("gold", "exclusions")}
    replace = {name: f"mixture = '{mixture.name}'" if tables.exists(spark, ref) else None for name, ref in refs.items()}
    exclusions = exclusions.cache()
    try:
        gates.check(cfg, exclusions, "exclusions", log, str(refs["exclusions"]), params={"excluded": excluded})
        gold_version = gates.publish(cfg, gold, "gold", "gold", log, lambda df, ref: tables.overwrite(
            df, ref, run_id=log.run_id, replace_where=replace["gold"]))
        exclusions_version = tables.overwrite(exclusions, refs["exclusions"], run_id=log.run_id,
                                              replace_where=replace["exclusions"])
    finally:
        exclusions.unpersist()
    return gold_version, exclusions_version


def export_shards(gold: DataFrame, cfg: Config, mixture: MixtureConfig, run_id: str) -> str | None:
    e = mixture.export
    if e.format == "none":
        return None
    path = storage.join(e.dir or storage.join(tables.lake_root(cfg), "exports"), mixture.name, run_id)
    shards = gold.select(*e.columns).repartition(e.shards, "doc_id").sortWithinPartitions("doc_id", "epoch")
    writer = shards.write.mode("overwrite")
    writer.json(path) if e.format == "jsonl" else writer.parquet(path)
    return path


def log_detector_threshold(log: RunLog, detector: DetectorThreshold) -> None:
    """The threshold as run params (where it came from) and the metric ``detector_threshold`` (its value)."""
    log.params({"detector_threshold": {key: value for key, value in detector.as_dict().items()
                                       if key != "value" and value is not None}})
    log.metric("detector_threshold", detector.value)


def run(spark: SparkSession, cfg: Config, log: RunLog) -> dict[str, Any]:
    mixture = load_mixture(cfg.sample.mixture)
    log.params({"mixture": mixture.model_dump(mode="json")})
    detector = resolve_detector_threshold(cfg, mixture)
    log_detector_threshold(log, detector)
    silver_version, silver = read_silver(spark, cfg)

    judged, validation = eligibility(silver, mixture, detector)
    # staged without the columns gold drops (the 1 KB embeddings: eligibility has used them already)
    judged = tables.stage(with_selection_order(judged, mixture).drop(*GOLD_DROP))
    corpus_cells = judged_cells(judged, mixture)
    decisions = Decisions(corpus_cells, validation, *allocate(corpus_cells, mixture), detector_threshold=detector)
    eligible = judged.where(F.col("exclusion_reason").isNull()).drop("exclusion_reason", *EVIDENCE_COLUMNS)
    gold = tables.stage(select(eligible, mixture, decisions.cell_targets)
                        .withColumns({"mixture": F.lit(mixture.name), "mixture_run_id": F.lit(log.run_id)}))
    cells = gold_cells(gold, mixture)
    summary = mixture_summary(gold, mixture, cells)
    check_mixture(cfg, spark, summary, mixture, log)

    excluded = decisions.excluded()
    gold_version, exclusions_version = publish(cfg, mixture, gold, exclusion_rows(judged, mixture.name, log.run_id),
                                               sum(excluded.values()), log)
    manifest = build_manifest(mixture, gold, cells, summary, decisions, input_versions(spark, cfg, silver_version),
                              log.run_id)
    manifest.update(gold_version=gold_version, exclusions_version=exclusions_version,
                    export=export_shards(gold, cfg, mixture, log.run_id))
    path = write_manifest(spark, cfg, manifest, log)
    judged.unpersist()
    gold.unpersist()

    for name, value in (("tokens", manifest["tokens"]), ("documents", manifest["documents"]),
                        ("synthetic_share", manifest["synthetic_share"]),
                        ("max_weight_error", summary["max_weight_error"])):
        log.metric(name, value)
    log.counts("excluded", excluded)
    return {"documents": manifest["documents"], "tokens": f"{manifest['tokens']}/{mixture.token_budget}",
            "synthetic_share": round(manifest["synthetic_share"], 4),
            "by_origin": {k: v["tokens"] for k, v in manifest["by_origin"].items()},
            "excluded": excluded, "manifest": str(path)}


def mixture_fingerprint(spark: SparkSession, cfg: Config) -> dict[str, str]:
    return {"mixture": config_hash(load_mixture(cfg.sample.mixture))}


STEP = Step(
    name="sample", run=run, inputs=("silver",), outputs=("gold", "exclusions"), config_sections=("sample",),
    fingerprints=mixture_fingerprint,
    help="Build a gold training mixture to a token budget from the mixture config (weights, caps, epochs, "
         "cluster balance, vetted synthetic data), gate it, and write its exclusions (one row per excluded "
         "document, with the reason and evidence), manifest and shards.",
)


def main(argv: list[str] | None = None) -> None:
    from jobs.pipeline import STEPS  # the entry point learns the pipeline order from the registry

    job_main(STEP, argv, STEPS)


if __name__ == "__main__":
    main()
