"""Sample: silver -> a gold training mixture to a token budget, its manifest, shards and gates.

This is the only step that *decides*; everything it applies comes from the mixture config
(conf/mixtures/*.yaml, keys in docs/config.md):

1. Eligibility. Every silver document is either eligible or excluded under the first reason it
   meets: duplicates, language, quality thresholds and rules, synthetic documents from unvetted
   sources or failing validation against the human reference set, losers of best-of-n rejection
   sampling, groups without a weight. A document not declared synthetic whose
   ``synthetic_probability`` reaches the configured bar is treated as synthetic (``detector``).
2. Allocation. Each group (source or domain) gets ``weight × budget``; inside a group the target is
   spread over embedding clusters with a temperature (UniMax-style), a cluster never taking more
   than its tokens times the epochs its sources allow.
3. Selection. Inside a cell (group × cluster) documents are taken in priority order — pre-AI
   archive, human, unknown, synthetic — and, within a class, in the order of hash(doc_id, seed);
   a repeated epoch comes after every first copy. So the same config gives the same mixture, and
   adding documents to the corpus does not reshuffle the ones already chosen. Then the synthetic
   and per-source caps are applied, and a greedy fill tops the mixture up to the budget.
4. Publication. The mixture passes two gates (row-level `gold` suite, and the `mixture` suite on a
   one-row summary: synthetic share, budget, duplicates, weights, source share, epochs) before the
   gold table, the manifest (Delta row + JSON) and the shards are written. A failed gate writes none.
"""
from __future__ import annotations

import datetime as dt
import json
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf

from jobs.common import gates, storage, tables
from jobs.common.config import Config, MixtureConfig, config_hash, load_mixture
from jobs.common.runner import Step, job_main
from jobs.common.tracking import RunLog
from udfs.diversity import distinct_n
from udfs.heuristics import QUALITY_RULES, QualityThresholds
from udfs.mixing import Candidate, allocate_cells, greedy_fill, manifold_precision_recall

GOLD_DROP = ("embedding",)
FILL_CANDIDATES_PER_GROUP = 200


# --- 1. eligibility ---------------------------------------------------------------------------

def with_effective_origin(silver: DataFrame, mixture: MixtureConfig) -> DataFrame:
    """``effective_origin`` and ``origin_decided_by``: the origin the mixture counts a document as."""
    bar = mixture.filters.max_synthetic_probability
    detected = (F.col("synthetic_probability") >= bar) if bar < 1.0 else F.lit(False)
    by_detector = (F.col("origin") != "synthetic") & detected
    return silver.withColumns({
        "effective_origin": F.when(by_detector, F.lit("synthetic")).otherwise(F.col("origin")),
        "origin_decided_by": F.when(by_detector, F.lit("detector")).otherwise(F.col("provenance_method")),
    })


def priority_class() -> Column:
    """0 pre-AI archive, 1 human, 2 unknown, 3 synthetic: lower is taken first."""
    return (F.when(F.coalesce(F.col("pre_ai_archive"), F.lit(False)) & (F.col("effective_origin") != "synthetic"), 0)
            .when(F.col("effective_origin") == "human", 1).when(F.col("effective_origin") == "unknown", 2)
            .otherwise(3))


def _rule_fails(rule, threshold) -> Column:
    value = F.col(rule.signal)
    if rule.fails_when == "flag":
        return F.coalesce(value, F.lit(False)) & F.lit(bool(threshold))
    compare = {"<": value < threshold, "<=": value <= threshold, ">": value > threshold,
               ">=": value >= threshold}[rule.fails_when]
    # A missing value (null, or NaN such as the mean word length of no words) never fails a rule,
    # as in udfs.heuristics.failed_quality_rules; Spark would otherwise order NaN above every number.
    return F.when(value.isNull() | F.isnan(value.cast("double")), F.lit(False)).otherwise(compare)


def document_exclusions(mixture: MixtureConfig, columns: list[str]) -> list[tuple[str, Column]]:
    """(reason, failing condition) in the order they are reported; a document gets the first."""
    f = mixture.filters
    checks: list[tuple[str, Column]] = []
    if f.exclude_duplicates:
        checks += [(reason, F.col(column).isNotNull()) for reason, column in
                   (("near_duplicate", "duplicate_of"), ("semantic_duplicate", "semantic_duplicate_of"))
                   if column in columns]
    if f.languages is not None:
        checks.append(("language", ~F.coalesce(F.col("detected_language").isin(f.languages), F.lit(False))))
    if f.min_language_confidence > 0:
        checks.append(("language_confidence", F.coalesce(F.col("language_confidence"), F.lit(0.0))
                       < f.min_language_confidence))
    checks += [("min_words", F.col("n_words") < f.min_words),
               ("min_alpha_ratio", F.col("alpha_ratio") < f.min_alpha_ratio),
               ("max_duplicate_line_fraction", F.col("duplicate_line_fraction") > f.max_duplicate_line_fraction)]
    if f.quality_rules:
        thresholds = QualityThresholds.from_mapping(f.quality_thresholds)
        for rule in QUALITY_RULES:
            threshold = getattr(thresholds, rule.threshold)
            if threshold is not None:
                checks.append((f"quality:{rule.name}", _rule_fails(rule, threshold)))
    vetted = mixture.synthetic.vetted_sources
    checks.append(("synthetic_not_vetted", (F.col("effective_origin") == "synthetic") & ~F.col("source").isin(vetted)
                   if vetted else F.col("effective_origin") == "synthetic"))
    checks.append(("group_without_weight", ~F.col(mixture.group_by).isin(list(mixture.weights))))
    return checks


def first_reason(checks: list[tuple[str, Column]]) -> Column:
    reason = F.lit(None).cast("string")
    for name, fails in reversed(checks):
        reason = F.when(F.coalesce(fails, F.lit(False)), F.lit(name)).otherwise(reason)
    return reason


def required_columns(mixture: MixtureConfig) -> list[str]:
    needed = ["doc_id", "text", "origin", "provenance_method", "pre_ai_archive", "source", mixture.group_by,
              "n_tokens", "n_words", "alpha_ratio", "duplicate_line_fraction"]
    f = mixture.filters
    if f.languages is not None or f.min_language_confidence > 0:
        needed += ["detected_language", "language_confidence"]
    if f.quality_rules:
        thresholds = QualityThresholds.from_mapping(f.quality_thresholds)
        needed += sorted({r.signal for r in QUALITY_RULES if getattr(thresholds, r.threshold) is not None})
    if f.max_synthetic_probability < 1.0:
        needed.append("synthetic_probability")
    if mixture.synthetic.vetted_sources:
        needed.append("embedding")
    if mixture.synthetic.rejection.group_key:
        needed.append(mixture.synthetic.rejection.score_column)
    return list(dict.fromkeys(needed))


def _group_key(name: str) -> Column:
    return F.col("metadata")[name.split(".", 1)[1]] if name.startswith("metadata.") else F.col(name)


def rejection_losers(mixture: MixtureConfig) -> Column:
    """True for eligible synthetic documents that lose best-of-n selection within their prompt group
    (ranked only among themselves, so other documents of the group never take a place)."""
    r = mixture.synthetic.rejection
    if not r.group_key:
        return F.lit(False)
    score = F.col(r.score_column)
    contender = (F.col("exclusion_reason").isNull() & (F.col("effective_origin") == "synthetic")
                 & _group_key(r.group_key).isNotNull())
    better_first = score.desc_nulls_last() if r.higher_is_better else score.asc_nulls_last()
    rank = F.row_number().over(Window.partitionBy(contender, _group_key(r.group_key)).orderBy(better_first, "doc_id"))
    below_bar = F.lit(False) if r.bar is None else F.coalesce((score < r.bar) if r.higher_is_better
                                                              else (score > r.bar), F.lit(True))
    return contender & ((rank > r.keep_per_group) | below_bar)


def _embeddings(frame: DataFrame, limit: int, seed: int) -> tuple[list[str], np.ndarray]:
    rows = (frame.orderBy(F.xxhash64("doc_id", F.lit(seed)), "doc_id").limit(limit)
            .select("doc_id", "embedding", "text").toPandas())
    vectors = np.stack(rows["embedding"].to_numpy()).astype(np.float32) if len(rows) else np.zeros((0, 1))
    return rows["text"].tolist(), vectors


def validate_synthetic_sources(eligible: DataFrame, mixture: MixtureConfig) -> tuple[dict[str, dict], np.ndarray]:
    """Per vetted source: precision/recall against the human reference manifold and the distinct-2
    ratio, and whether it passes. Also returns the reference embeddings (for the near-copy check)."""
    v = mixture.synthetic.validation
    reference = eligible.where(F.col("effective_origin").isin(mixture.synthetic.reference_origins))
    ref_texts, ref_vectors = _embeddings(reference, v.sample, mixture.seed)
    reports: dict[str, dict] = {}
    for source in mixture.synthetic.vetted_sources:
        texts, vectors = _embeddings(eligible.where((F.col("source") == source)
                                                    & (F.col("effective_origin") == "synthetic")), v.sample,
                                     mixture.seed)
        if len(texts) <= v.k or len(ref_texts) <= v.k:
            reports[source] = {"documents_checked": len(texts), "passed": len(texts) == 0,
                               "note": "too few documents to validate"}
            continue
        precision, recall = manifold_precision_recall(ref_vectors, vectors, k=v.k)
        same_size = ref_texts[:len(texts)]
        distinct_ratio = distinct_n(texts, max_n=2)[2] / max(distinct_n(same_size, max_n=2)[2], 1e-12)
        passed = precision >= v.min_precision and recall >= v.min_recall and distinct_ratio >= v.min_distinct_ratio
        reports[source] = {"documents_checked": len(texts), "precision": precision, "recall": recall,
                           "distinct_2_ratio": distinct_ratio, "passed": passed}
    return reports, ref_vectors


def max_reference_similarity(reference: np.ndarray) -> Column:
    """Largest cosine similarity of each document's embedding to the reference sample."""
    matrix = reference.T.copy()

    @pandas_udf("double")
    def similarity(embeddings: pd.Series) -> pd.Series:
        if not len(embeddings) or not matrix.size:
            return pd.Series(np.zeros(len(embeddings)))
        return pd.Series((np.stack(embeddings.to_numpy()) @ matrix).max(axis=1).astype(float))

    return similarity(F.col("embedding"))


def eligibility(silver: DataFrame, mixture: MixtureConfig) -> tuple[DataFrame, dict[str, dict]]:
    """Silver with ``exclusion_reason`` (null: eligible) and the synthetic-source validation reports."""
    tables.require_columns(silver, required_columns(mixture), "silver table (for this mixture)")
    frame = with_effective_origin(silver, mixture)
    frame = frame.withColumn("exclusion_reason", first_reason(document_exclusions(mixture, silver.columns)))
    reports: dict[str, dict] = {}
    if mixture.synthetic.vetted_sources:
        frame = frame.cache()
        reports, reference = validate_synthetic_sources(frame.where(F.col("exclusion_reason").isNull()), mixture)
        failed = [s for s, r in reports.items() if not r["passed"]]
        synthetic = F.col("exclusion_reason").isNull() & (F.col("effective_origin") == "synthetic")
        frame = frame.withColumn("exclusion_reason", F.when(
            synthetic & F.col("source").isin(failed), F.lit("synthetic_failed_validation")).otherwise(
            F.col("exclusion_reason")))
        if reference.size:
            copies = synthetic & (max_reference_similarity(reference)
                                  >= mixture.synthetic.validation.max_reference_similarity)
            frame = frame.withColumn("exclusion_reason", F.when(copies, F.lit("synthetic_copies_reference"))
                                     .otherwise(F.col("exclusion_reason")))
    if mixture.synthetic.rejection.group_key:
        frame = frame.withColumn("exclusion_reason", F.when(rejection_losers(mixture), F.lit("rejected_by_prompt"))
                                 .otherwise(F.col("exclusion_reason")))
    return frame, reports


# --- 2. allocation ------------------------------------------------------------------------------

def allocate(eligible: DataFrame, mixture: MixtureConfig) -> tuple[dict[str, float], dict[tuple, float]]:
    """(group -> target tokens, (group, cluster) -> target tokens) from per-cell totals."""
    total_weight = sum(mixture.weights.values())
    group_targets = {g: mixture.token_budget * w / total_weight for g, w in mixture.weights.items()}
    cells = (eligible.groupBy(F.col(mixture.group_by).alias("group"), "cluster_id", "source")
             .agg(F.sum("n_tokens").alias("tokens")).collect())
    tokens: dict[tuple, float] = {}
    caps: dict[tuple, float] = {}
    for row in cells:
        key = (row["group"], row["cluster_id"])
        tokens[key] = tokens.get(key, 0.0) + row["tokens"]
        caps[key] = caps.get(key, 0.0) + row["tokens"] * mixture.epochs(row["source"])
    cell_targets: dict[tuple, float] = {}
    for group, target in group_targets.items():
        mine = {cluster: tokens[(g, cluster)] for g, cluster in tokens if g == group}
        split = allocate_cells(target, mine, {c: caps[(group, c)] for c in mine}, mixture.cluster_temperature)
        cell_targets.update({(group, cluster): t for cluster, t in split.items()})
    return group_targets, cell_targets


# --- 3. selection -------------------------------------------------------------------------------

def epochs_allowed(mixture: MixtureConfig) -> Column:
    """How many copies of each document its source allows."""
    allowed = F.lit(mixture.max_epochs)
    for source, epochs in mixture.source_max_epochs.items():
        allowed = F.when(F.col("source") == source, F.lit(epochs)).otherwise(allowed)
    return allowed


def _copies(frame: DataFrame, mixture: MixtureConfig) -> DataFrame:
    """One row per allowed epoch of each document (epoch 0 .. its source's epochs - 1)."""
    return frame.withColumn("epoch", F.explode(F.sequence(F.lit(0), epochs_allowed(mixture) - 1)))


def _running(order: list, partition: list | None = None) -> Window:
    window = Window.partitionBy(*partition) if partition else Window.partitionBy(F.lit(0))
    return window.orderBy(*order).rowsBetween(Window.unboundedPreceding, Window.currentRow)


def select(eligible: DataFrame, mixture: MixtureConfig, cell_targets: dict[tuple, float]) -> DataFrame:
    """Chosen (doc_id, epoch) rows with the columns of ``eligible``."""
    spark = eligible.sparkSession
    targets = spark.createDataFrame([(str(g), int(c), float(t)) for (g, c), t in cell_targets.items()],
                                    "_group string, cluster_id int, _cell_target double")
    order = ["epoch", "priority_class", "selection_rank", "doc_id"]
    copies = (_copies(eligible, mixture).withColumn("_group", F.col(mixture.group_by).cast("string"))
              .join(targets, ["_group", "cluster_id"]))
    in_cell = copies.withColumn("_cell_tokens", F.sum("n_tokens").over(_running(order, ["_group", "cluster_id"])))
    chosen = in_cell.where(F.col("_cell_tokens") <= F.col("_cell_target"))
    is_synthetic = F.col("effective_origin") == "synthetic"
    synthetic = (chosen.where(is_synthetic)
                 .withColumn("_synthetic_tokens", F.sum("n_tokens").over(_running(order)))
                 .where(F.col("_synthetic_tokens") <= mixture.max_synthetic_share * mixture.token_budget)
                 .drop("_synthetic_tokens"))
    chosen = chosen.where(~is_synthetic).unionByName(synthetic)
    chosen = (chosen.withColumn("_source_tokens", F.sum("n_tokens").over(_running(order, ["source"])))
              .where(F.col("_source_tokens") <= mixture.max_source_share * mixture.token_budget)
              .drop("_cell_tokens", "_source_tokens"))
    return _fill(copies, chosen, mixture).drop("_group", "_cell_target")


def _fill(copies: DataFrame, chosen: DataFrame, mixture: MixtureConfig) -> DataFrame:
    """Top the mixture up to the budget: the greedy fill (udfs.mixing.greedy_fill) sees, per group,
    the first documents after those chosen, in the same order; it runs on the driver over at most
    FILL_CANDIDATES_PER_GROUP rows a group."""
    budget = mixture.token_budget
    chosen = chosen.cache()
    totals = chosen.groupBy("_group", "source", "effective_origin").agg(F.sum("n_tokens").alias("t")).collect()
    total = sum(r["t"] for r in totals)
    if total >= budget * (1 - mixture.budget_tolerance):
        return chosen
    group_tokens: dict[str, float] = {}
    source_tokens: dict[str, float] = {}
    synthetic = 0.0
    for r in totals:
        group_tokens[r["_group"]] = group_tokens.get(r["_group"], 0.0) + r["t"]
        source_tokens[r["source"]] = source_tokens.get(r["source"], 0.0) + r["t"]
        synthetic += r["t"] if r["effective_origin"] == "synthetic" else 0.0
    rest = copies.join(chosen.select("doc_id", "epoch"), ["doc_id", "epoch"], "left_anti")
    ranked = rest.withColumn("_fill_rank", F.row_number().over(
        Window.partitionBy("_group").orderBy("epoch", "priority_class", "selection_rank", "doc_id")))
    rows = (ranked.where(F.col("_fill_rank") <= FILL_CANDIDATES_PER_GROUP)
            .select("doc_id", "epoch", "_group", "source", "n_tokens", "effective_origin", "_fill_rank")
            .orderBy("_fill_rank", "_group").collect())
    candidates = [Candidate((r["doc_id"], r["epoch"]), r["_group"], r["source"], int(r["n_tokens"]),
                            r["effective_origin"] == "synthetic") for r in rows]
    share_cap = mixture.max_source_share * budget
    room = {s: share_cap - source_tokens.get(s, 0.0) for s in {c.source for c in candidates} | set(source_tokens)}
    targets = {g: budget * w / sum(mixture.weights.values()) for g, w in mixture.weights.items()}
    added = greedy_fill(candidates, total, budget, mixture.budget_tolerance, group_tokens, targets,
                        mixture.max_synthetic_share * budget - synthetic, room)
    if not added:
        return chosen
    extra = copies.sparkSession.createDataFrame(added, "doc_id string, epoch int")
    return chosen.unionByName(copies.join(extra, ["doc_id", "epoch"]))


# --- 4. gates, manifest, publication --------------------------------------------------------------

def gold_cells(gold: DataFrame, mixture: MixtureConfig) -> list[dict[str, Any]]:
    """Rows and tokens of ``gold`` per (group, source, cluster, origin, epoch, duplicate marks): one
    aggregation (a few hundred cells) from which the gate's numbers and every manifest breakdown are
    summed on the driver, instead of a Spark job per number."""
    marks = {f"_{c}": F.col(c).isNotNull() if c in gold.columns else F.lit(False)
             for c in ("duplicate_of", "semantic_duplicate_of")}
    marks["_over_epoch_cap"] = F.col("epoch") >= epochs_allowed(mixture)  # per-source caps: a column
    keys = [F.col(mixture.group_by).cast("string").alias("_group"), "source", "cluster_id", "effective_origin",
            "epoch", *(mark.alias(name) for name, mark in marks.items())]
    return [r.asDict() for r in gold.groupBy(*keys).agg(F.count("*").alias("_rows"),
                                                        F.sum("n_tokens").alias("_tokens")).collect()]


def _sum_by(cells: list[dict[str, Any]], key: str, value: str = "_tokens") -> dict[Any, int]:
    totals: dict[Any, int] = {}
    for cell in cells:
        totals[cell[key]] = totals.get(cell[key], 0) + int(cell[value] or 0)
    return totals


def mixture_summary(gold: DataFrame, mixture: MixtureConfig,
                    cells: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The numbers the `mixture` gate checks, from the rows about to be published."""
    cells = gold_cells(gold, mixture) if cells is None else cells
    budget = mixture.token_budget
    tokens = sum(int(c["_tokens"] or 0) for c in cells)
    by_group = _sum_by(cells, "_group")
    by_source = _sum_by(cells, "source")
    synthetic = sum(int(c["_tokens"] or 0) for c in cells if c["effective_origin"] == "synthetic")
    duplicates = sum(c["_rows"] * (int(c["_duplicate_of"]) + int(c["_semantic_duplicate_of"])) for c in cells)
    total_weight = sum(mixture.weights.values())
    weight_errors = {g: abs(by_group.get(g, 0) / max(tokens, 1) - w / total_weight) for g, w in mixture.weights.items()}
    epochs_over = sum(c["_rows"] for c in cells if c["_over_epoch_cap"])
    return {"tokens": tokens, "budget_error": abs(tokens / budget - 1), "synthetic_share": synthetic / budget,
            "duplicates_included": duplicates, "max_weight_error": max(weight_errors.values()),
            "max_source_share": max(by_source.values(), default=0) / budget, "copies_over_epoch_cap": epochs_over,
            "weight_errors": weight_errors}


MIXTURE_GATE_COLUMNS = ("budget_error", "synthetic_share", "duplicates_included", "max_weight_error",
                        "max_source_share", "copies_over_epoch_cap")


def check_mixture(cfg: Config, spark: SparkSession, summary: dict[str, Any], mixture: MixtureConfig,
                  log: RunLog) -> None:
    """The `mixture` suite on a one-row frame of the summary; its `${...}` bounds come from the mixture."""
    row = spark.createDataFrame([tuple(float(summary[c]) for c in MIXTURE_GATE_COLUMNS)],
                                ", ".join(f"{c} double" for c in MIXTURE_GATE_COLUMNS))
    params = {"budget_tolerance": mixture.budget_tolerance, "max_synthetic_share": mixture.max_synthetic_share,
              "weight_tolerance": mixture.weight_tolerance, "max_source_share": mixture.max_source_share}
    gates.check(cfg, row, "mixture", log, f"mixture {mixture.name}", params=params)


def build_manifest(spark: SparkSession, cfg: Config, mixture: MixtureConfig, gold: DataFrame,
                   eligible: DataFrame, inputs: dict[str, dict], excluded: dict[str, int], summary: dict[str, Any],
                   group_targets: dict[str, float], cell_targets: dict[tuple, float], validation: dict[str, dict],
                   run_id: str, cells: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    cells = gold_cells(gold, mixture) if cells is None else cells

    def breakdown(key: str) -> dict[str, dict[str, int]]:
        """Rows ("documents": copies, as before) and tokens per value of ``key``."""
        rows, tokens = _sum_by(cells, key, "_rows"), _sum_by(cells, key)
        return {str(k): {"documents": rows[k], "tokens": tokens[k]} for k in rows}

    by_group = breakdown("_group")
    for group, target in group_targets.items():
        by_group.setdefault(group, {"documents": 0, "tokens": 0})["target_tokens"] = round(target)
    by_cluster = breakdown("cluster_id")
    available = {str(r["cluster_id"]): {"documents": int(r["d"]), "tokens": int(r["t"] or 0)} for r in
                 eligible.groupBy("cluster_id").agg(F.count("*").alias("d"), F.sum("n_tokens").alias("t")).collect()}
    for (_, cluster), target in cell_targets.items():
        entry = by_cluster.setdefault(str(cluster), {"documents": 0, "tokens": 0})
        entry["target_tokens"] = entry.get("target_tokens", 0) + round(target)
    for cluster, entry in by_cluster.items():
        entry["eligible_tokens"] = available.get(cluster, {}).get("tokens", 0)
    by_origin = breakdown("effective_origin")
    by_origin.setdefault("synthetic", {"documents": 0, "tokens": 0})["cap_tokens"] = round(
        mixture.max_synthetic_share * mixture.token_budget)
    return {
        "mixture": mixture.name, "run_id": run_id, "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "config_hash": config_hash(mixture), "mixture_config": mixture.model_dump(mode="json"),
        "inputs": inputs, "token_budget": mixture.token_budget, "tokens": summary["tokens"],
        "documents": gold.select("doc_id").distinct().count(), "rows": sum(c["_rows"] for c in cells),
        "synthetic_share": summary["synthetic_share"], "excluded_by_reason": excluded,
        "eligible_documents": sum(v["documents"] for v in available.values()), "synthetic_validation": validation,
        "group_by": mixture.group_by, "by_group": by_group, "by_source": breakdown("source"),
        "by_origin": by_origin, "by_cluster": by_cluster, "by_epoch": breakdown("epoch"),
        "gate_summary": {k: v for k, v in summary.items() if k != "weight_errors"},
    }


def write_manifest(spark: SparkSession, cfg: Config, manifest: dict[str, Any], log: RunLog) -> str:
    folder = storage.join(cfg.sample.manifest_dir, manifest["mixture"])
    path = storage.join(folder, f"{manifest['run_id']}.json")
    text = json.dumps(manifest, indent=2, default=str)
    storage.write_text(path, text)
    storage.write_text(storage.join(folder, "latest.json"), text)
    row = [(manifest["run_id"], manifest["mixture"], manifest["config_hash"], manifest["inputs"]["silver"]["version"],
            manifest["gold_version"], manifest["token_budget"], manifest["tokens"], manifest["documents"],
            json.dumps(manifest, default=str), dt.datetime.now(dt.UTC))]
    schema = ("run_id string, mixture string, config_hash string, silver_version long, gold_version long, "
              "token_budget long, tokens long, documents long, manifest string, created_at timestamp")
    tables.append(spark.createDataFrame(row, schema), tables.table_ref(cfg, "manifests"), run_id=log.run_id)
    log.artifact_text(text, f"manifest/{manifest['run_id']}.json")
    return path


def export_shards(gold: DataFrame, cfg: Config, mixture: MixtureConfig, run_id: str) -> str | None:
    e = mixture.export
    if e.format == "none":
        return None
    path = storage.join(e.dir or storage.join(tables.lake_root(cfg), "exports"), mixture.name, run_id)
    shards = gold.select(*e.columns).repartition(e.shards, "doc_id").sortWithinPartitions("doc_id", "epoch")
    writer = shards.write.mode("overwrite")
    writer.json(path) if e.format == "jsonl" else writer.parquet(path)
    return path


def input_versions(spark: SparkSession, cfg: Config, silver_version: int) -> dict[str, dict]:
    inputs = {"silver": {"location": str(tables.table_ref(cfg, "silver")), "version": silver_version}}
    for name in ("bronze", "clusters"):
        ref = tables.table_ref(cfg, name)
        version = tables.current_version(spark, ref)
        if version is not None:
            inputs[name] = {"location": str(ref), "version": version}
    return inputs


def run(spark: SparkSession, cfg: Config, log: RunLog) -> dict[str, Any]:
    mixture = load_mixture(cfg.sample.mixture)
    log.params({"mixture": mixture.model_dump(mode="json")})
    silver_ref = tables.table_ref(cfg, "silver")
    silver_version = tables.current_version(spark, silver_ref)
    silver = tables.read_table(spark, silver_ref, version=silver_version)
    # Without embedding clusters (embed step not run) every document is in one cluster.
    silver = silver.withColumn("cluster_id", F.col("cluster_id").cast("int") if "cluster_id" in silver.columns
                               else F.lit(0))

    judged, validation = eligibility(silver, mixture)
    judged = judged.withColumns({"priority_class": priority_class(),
                                 "selection_rank": F.xxhash64("doc_id", F.lit(mixture.seed))}).cache()
    excluded = {r["exclusion_reason"]: int(r["count"]) for r in
                judged.where(F.col("exclusion_reason").isNotNull()).groupBy("exclusion_reason").count().collect()}
    eligible = judged.where(F.col("exclusion_reason").isNull()).drop("exclusion_reason")
    group_targets, cell_targets = allocate(eligible, mixture)
    gold = (select(eligible, mixture, cell_targets).drop(*GOLD_DROP)
            .withColumns({"mixture": F.lit(mixture.name), "mixture_run_id": F.lit(log.run_id)}))
    gold = gold.cache()
    cells = gold_cells(gold, mixture)
    summary = mixture_summary(gold, mixture, cells)
    check_mixture(cfg, spark, summary, mixture, log)

    gold_ref = tables.table_ref(cfg, "gold")
    replace = f"mixture = '{mixture.name}'" if tables.exists(spark, gold_ref) else None
    gold_version = gates.publish(cfg, gold, "gold", "gold", log,
                                 lambda df, ref: tables.overwrite(df, ref, run_id=log.run_id, replace_where=replace))
    manifest = build_manifest(spark, cfg, mixture, gold, eligible, input_versions(spark, cfg, silver_version),
                              excluded, summary, group_targets, cell_targets, validation, log.run_id, cells)
    manifest["gold_version"] = gold_version
    manifest["export"] = export_shards(gold, cfg, mixture, log.run_id)
    path = write_manifest(spark, cfg, manifest, log)
    judged.unpersist()
    gold.unpersist()

    log.metric("tokens", manifest["tokens"])
    log.metric("documents", manifest["documents"])
    log.metric("synthetic_share", manifest["synthetic_share"])
    log.metric("max_weight_error", summary["max_weight_error"])
    log.counts("excluded", excluded)
    return {"documents": manifest["documents"], "tokens": f"{manifest['tokens']}/{mixture.token_budget}",
            "synthetic_share": round(manifest["synthetic_share"], 4),
            "by_origin": {k: v["tokens"] for k, v in manifest["by_origin"].items()},
            "excluded": excluded, "manifest": str(path)}


def mixture_fingerprint(spark: SparkSession, cfg: Config) -> dict[str, str]:
    return {"mixture": config_hash(load_mixture(cfg.sample.mixture))}


STEP = Step(
    name="sample", run=run, inputs=("silver",), outputs=("gold",), config_sections=("sample",),
    fingerprints=mixture_fingerprint,
    help="Build a gold training mixture to a token budget from the mixture config (weights, caps, epochs, "
         "cluster balance, vetted synthetic data), gate it, and write its manifest and shards.",
)


def main(argv: list[str] | None = None) -> None:
    job_main(STEP, argv)


if __name__ == "__main__":
    main()
