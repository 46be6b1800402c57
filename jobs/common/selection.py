"""Allocation and selection: which eligible documents (and how many copies) fill a mixture's budget.

1. Allocation. Each group (source or domain) gets ``weight × budget``; inside a group the target is
   spread over embedding clusters with a temperature (UniMax-style), a cluster never taking more
   than its tokens times the epochs its sources allow.
2. Selection. Inside a cell (group × cluster) documents are taken in priority order — pre-AI
   archive, human, unknown, synthetic — and, within a class, in the order of hash(doc_id, seed);
   a repeated epoch comes after every first copy. So the same config gives the same mixture, and
   adding documents to the corpus does not reshuffle the ones already chosen. Then the synthetic
   and per-source caps are applied, and a greedy fill tops the mixture up to the budget.
"""
from __future__ import annotations

import math

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from jobs.common import tables
from jobs.common.config import MixtureConfig
from udfs.mixing import Candidate, allocate_cells, greedy_fill

FILL_CANDIDATES_PER_GROUP = 200


def priority_class() -> Column:
    """0 pre-AI archive, 1 human, 2 unknown, 3 synthetic: lower is taken first."""
    return (F.when(F.coalesce(F.col("pre_ai_archive"), F.lit(False)) & (F.col("effective_origin") != "synthetic"), 0)
            .when(F.col("effective_origin") == "human", 1).when(F.col("effective_origin") == "unknown", 2)
            .otherwise(3))



def judged_cells(judged: DataFrame, mixture: MixtureConfig) -> list[dict]:
    """Documents and tokens per (exclusion reason, group, cluster, source) of the judged corpus: one
    aggregation from which allocation, the exclusion counts and the manifest's eligible totals are
    summed on the driver."""
    return [r.asDict() for r in judged.groupBy("exclusion_reason", F.col(mixture.group_by).alias("group"),
                                               "cluster_id", "source")
            .agg(F.count("*").alias("documents"), F.sum("n_tokens").alias("tokens")).collect()]


def allocate(cells: list[dict], mixture: MixtureConfig) -> tuple[dict[str, float], dict[tuple, float]]:
    """(group -> target tokens, (group, cluster) -> target tokens) from the eligible cells of
    :func:`judged_cells`."""
    total_weight = sum(mixture.weights.values())
    group_targets = {g: mixture.token_budget * w / total_weight for g, w in mixture.weights.items()}
    tokens: dict[tuple, float] = {}
    caps: dict[tuple, float] = {}
    for row in cells:
        if row["exclusion_reason"] is not None:
            continue
        key = (row["group"], row["cluster_id"])
        tokens[key] = tokens.get(key, 0.0) + row["tokens"]
        caps[key] = caps.get(key, 0.0) + row["tokens"] * mixture.epochs(row["source"])
    cell_targets: dict[tuple, float] = {}
    for group, target in group_targets.items():
        mine = {cluster: tokens[(g, cluster)] for g, cluster in tokens if g == group}
        split = allocate_cells(target, mine, {c: caps[(group, c)] for c in mine}, mixture.cluster_temperature)
        cell_targets.update({(group, cluster): t for cluster, t in split.items()})
    return group_targets, cell_targets


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
    targets = tables.local_frame(spark, [(str(g), int(c), float(t)) for (g, c), t in cell_targets.items()],
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
    FILL_CANDIDATES_PER_GROUP rows a group, or the shortfall's worth at twice the mean document's count
    (whichever is more)."""
    budget = mixture.token_budget
    # Materialised once for the totals and the result, without a cache entry nobody would release.
    chosen = chosen.localCheckpoint(eager=True)
    totals = chosen.groupBy("_group", "source", "effective_origin").agg(F.sum("n_tokens").alias("t"),
                                                                         F.count("*").alias("n")).collect()
    total = sum(r["t"] for r in totals)
    if total >= budget * (1 - mixture.budget_tolerance):
        return chosen
    # Enough candidates a group for the whole shortfall at twice the mean document size's count: a group
    # with nothing eligible leaves its share to the others (found at 10k documents, where 200 a group left
    # the budget 1.07 % short). Bounded by the budget, not the corpus.
    mean_tokens = total / max(1, sum(r["n"] for r in totals)) or 1.0
    per_group = max(FILL_CANDIDATES_PER_GROUP, math.ceil(2 * (budget - total) / mean_tokens))
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
    rows = (ranked.where(F.col("_fill_rank") <= per_group)
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
    extra = tables.local_frame(copies.sparkSession, added, "doc_id string, epoch int")
    return chosen.unionByName(copies.join(extra, ["doc_id", "epoch"]))


def with_selection_order(judged: DataFrame, mixture: MixtureConfig) -> DataFrame:
    """``priority_class`` and ``selection_rank``, the order in which :func:`select` takes documents."""
    return judged.withColumns({"priority_class": priority_class(),
                               "selection_rank": F.xxhash64("doc_id", F.lit(mixture.seed))})
