"""Sample: silver -> a gold training mixture to a token budget, plus its manifest.

This is the only step that *decides*: thresholds on the signal columns come from the mixture config.
Selection is deterministic: documents are taken in the order of hash(doc_id, seed), so the same
config gives the same mixture and adding documents does not reshuffle the ones already chosen.
Non-synthetic documents fill each group first; synthetic ones only fill what is left, and never
beyond ``max_synthetic_share`` of the budget.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from jobs.common import gates, tables
from jobs.common.config import Config, MixtureConfig, load_mixture
from jobs.common.runner import Step, job_main
from jobs.common.tracking import RunLog

REQUIRED_COLUMNS = ("doc_id", "text", "origin", "source", "n_tokens", "n_words", "alpha_ratio",
                    "duplicate_line_fraction", "duplicate_of")


def mixture_hash(mixture: MixtureConfig) -> str:
    return hashlib.sha256(json.dumps(mixture.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


def exclusion_reason(mixture: MixtureConfig) -> F.Column:
    """The first filter a document fails, or null when it is eligible. A near duplicate (marked by the
    neardup step) is out before any threshold."""
    f = mixture.filters
    return (F.when(F.col("duplicate_of").isNotNull(), "near_duplicate")
            .when(F.col("n_words") < f.min_words, "min_words")
            .when(F.col("alpha_ratio") < f.min_alpha_ratio, "min_alpha_ratio")
            .when(F.col("duplicate_line_fraction") > f.max_duplicate_line_fraction, "max_duplicate_line_fraction"))


def select_mixture(silver: DataFrame, mixture: MixtureConfig) -> DataFrame:
    """Eligible documents chosen to the budget: per group in hash order up to the group's target,
    non-synthetic first, then synthetic documents capped globally."""
    total = sum(mixture.weights.values())
    targets = {group: mixture.token_budget * w / total for group, w in mixture.weights.items()}
    target_col = F.create_map(*[x for g, t in targets.items() for x in (F.lit(g), F.lit(float(t)))])
    is_synthetic = (F.col("origin") == "synthetic").cast("int")
    candidates = (silver.where(exclusion_reason(mixture).isNull())
                  .where(F.col(mixture.group_by).isin(list(targets)))
                  .withColumn("selection_rank", F.xxhash64(F.col("doc_id"), F.lit(mixture.seed)))
                  .withColumn("_target", target_col[F.col(mixture.group_by)]))
    in_group_order = (Window.partitionBy(mixture.group_by).orderBy(is_synthetic, "selection_rank", "doc_id")
                      .rowsBetween(Window.unboundedPreceding, Window.currentRow))
    chosen = (candidates.withColumn("_group_tokens", F.sum("n_tokens").over(in_group_order))
              .where(F.col("_group_tokens") <= F.col("_target")))
    synthetic_order = (Window.partitionBy(is_synthetic).orderBy("selection_rank", "doc_id")
                       .rowsBetween(Window.unboundedPreceding, Window.currentRow))
    cap = mixture.max_synthetic_share * mixture.token_budget
    return (chosen.withColumn("_synthetic_tokens", F.sum("n_tokens").over(synthetic_order))
            .where((F.col("origin") != "synthetic") | (F.col("_synthetic_tokens") <= F.lit(cap)))
            .drop("_target", "_group_tokens", "_synthetic_tokens"))


def _breakdown(df: DataFrame, column: str) -> dict[str, dict[str, int]]:
    rows = df.groupBy(column).agg(F.count("*").alias("documents"), F.sum("n_tokens").alias("tokens")).collect()
    return {str(r[column]): {"documents": int(r["documents"]), "tokens": int(r["tokens"] or 0)} for r in rows}


def build_manifest(spark: SparkSession, cfg: Config, mixture: MixtureConfig, gold: DataFrame, silver: DataFrame,
                   silver_version: int, excluded: dict[str, int], run_id: str) -> dict[str, Any]:
    bronze_ref = tables.table_ref(cfg, "bronze")
    tokens = int(gold.agg(F.sum("n_tokens")).first()[0] or 0)
    by_group = _breakdown(gold, mixture.group_by)
    total = sum(mixture.weights.values())
    for group, weight in mixture.weights.items():
        entry = by_group.setdefault(group, {"documents": 0, "tokens": 0})
        entry["target_tokens"] = round(mixture.token_budget * weight / total)
    synthetic_tokens = _breakdown(gold, "origin").get("synthetic", {}).get("tokens", 0)
    return {
        "mixture": mixture.name,
        "run_id": run_id,
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "config_hash": mixture_hash(mixture),
        "mixture_config": mixture.model_dump(mode="json"),
        "inputs": {
            "silver": {"location": str(tables.table_ref(cfg, "silver")), "version": silver_version},
            "bronze": {"location": str(bronze_ref), "version": tables.current_version(spark, bronze_ref)},
        },
        "token_budget": mixture.token_budget,
        "tokens": tokens,
        "documents": gold.count(),
        "synthetic_share": synthetic_tokens / mixture.token_budget,
        "eligible_documents": silver.count() - sum(excluded.values()),
        "excluded_by_reason": excluded,
        "group_by": mixture.group_by,
        "by_group": by_group,
        "by_origin": _breakdown(gold, "origin"),
        "by_source": _breakdown(gold, "source"),
    }


def write_manifest(spark: SparkSession, cfg: Config, manifest: dict[str, Any], log: RunLog) -> Path:
    folder = Path(cfg.sample.manifest_dir) / manifest["mixture"]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{manifest['run_id']}.json"
    path.write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
    (folder / "latest.json").write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    row = [(manifest["run_id"], manifest["mixture"], manifest["config_hash"], manifest["inputs"]["silver"]["version"],
            manifest["gold_version"], manifest["token_budget"], manifest["tokens"], manifest["documents"],
            json.dumps(manifest, default=str), dt.datetime.now(dt.UTC))]
    schema = ("run_id string, mixture string, config_hash string, silver_version long, gold_version long, "
              "token_budget long, tokens long, documents long, manifest string, created_at timestamp")
    tables.append(spark.createDataFrame(row, schema), tables.table_ref(cfg, "manifests"), run_id=log.run_id)
    log.artifact_file(path, "manifest")
    return path


def run(spark: SparkSession, cfg: Config, log: RunLog) -> dict[str, Any]:
    mixture = load_mixture(cfg.sample.mixture)
    log.params({"mixture": mixture.model_dump(mode="json")})
    silver_ref = tables.table_ref(cfg, "silver")
    silver_version = tables.current_version(spark, silver_ref)
    silver = tables.read_table(spark, silver_ref, version=silver_version)
    tables.require_columns(silver, REQUIRED_COLUMNS, f"silver table {silver_ref}")

    excluded = {r["reason"]: int(r["n"]) for r in silver.select(exclusion_reason(mixture).alias("reason"))
                .where(F.col("reason").isNotNull()).groupBy("reason").agg(F.count("*").alias("n")).collect()}
    gold = (select_mixture(silver, mixture)
            .withColumn("mixture", F.lit(mixture.name)).withColumn("mixture_run_id", F.lit(log.run_id)))

    gold_ref = tables.table_ref(cfg, "gold")
    replace = f"mixture = '{mixture.name}'" if tables.exists(spark, gold_ref) else None
    gold_version = gates.publish(cfg, gold, "gold", "gold", log,
                                 lambda df, ref: tables.overwrite(df, ref, run_id=log.run_id, replace_where=replace))
    published = tables.read_table(spark, gold_ref, version=gold_version).where(F.col("mixture") == mixture.name)
    manifest = build_manifest(spark, cfg, mixture, published, silver, silver_version, excluded, log.run_id)
    manifest["gold_version"] = gold_version
    path = write_manifest(spark, cfg, manifest, log)

    log.metric("tokens", manifest["tokens"])
    log.metric("documents", manifest["documents"])
    log.metric("synthetic_share", manifest["synthetic_share"])
    log.counts("excluded", excluded)
    return {"documents": manifest["documents"], "tokens": f"{manifest['tokens']}/{mixture.token_budget}",
            "synthetic_share": round(manifest["synthetic_share"], 4), "manifest": str(path)}


def mixture_fingerprint(spark: SparkSession, cfg: Config) -> dict[str, str]:
    return {"mixture": mixture_hash(load_mixture(cfg.sample.mixture))}


STEP = Step(
    name="sample", run=run, inputs=("silver",), outputs=("gold",), config_sections=("sample",),
    fingerprints=mixture_fingerprint,
    help="Build a gold training mixture to a token budget from the mixture config (weights, synthetic cap, "
         "quality thresholds) and write its manifest (Delta row + JSON).",
)


def main(argv: list[str] | None = None) -> None:
    job_main(STEP, argv)


if __name__ == "__main__":
    main()
