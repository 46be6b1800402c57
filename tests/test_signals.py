"""Silver signal columns on the demo lake: quality rules, language, embeddings, clusters, SemDeDup."""
from __future__ import annotations

import mlflow
import numpy as np
import pytest
from pyspark.sql import functions as F

from jobs.common import tables
from udfs.heuristics import SIGNAL_COLUMNS, quality_rule_signals
from udfs.langid import detect_language
from udfs.semdedup import semantic_duplicate_of_brute_force

pytestmark = pytest.mark.spark


def silver(spark, cfg):
    return tables.read_table(spark, tables.table_ref(cfg, "silver"))


def test_spark_quality_columns_equal_the_pure_functions(spark, demo):
    cfg, _, _ = demo
    rows = silver(spark, cfg).orderBy("doc_id").limit(40).toPandas()
    expected = quality_rule_signals(rows["text"].tolist())
    for column in SIGNAL_COLUMNS:
        np.testing.assert_allclose(rows[column].to_numpy(dtype=float), expected[column].to_numpy(dtype=float),
                                   equal_nan=True, err_msg=column)
    codes, confidences = detect_language(rows["text"].tolist(), max_chars=cfg.quality.language_max_chars)
    assert rows["detected_language"].tolist() == codes.tolist()
    np.testing.assert_allclose(rows["language_confidence"], confidences)


def test_every_silver_row_has_every_signal(spark, demo):
    cfg, _, _ = demo
    frame = silver(spark, cfg)
    for column in ("n_tokens", "alpha_ratio", "gopher_word_count", "fineweb_short_line_fraction",
                   "detected_language", "embedding", "cluster_id"):
        assert frame.where(F.col(column).isNull()).count() == 0, column
    assert frame.where(F.size("embedding") != cfg.embeddings.dim).count() == 0
    assert frame.where(F.col("detected_language") == "en").count() >= 0.95 * frame.count()


def test_cluster_table_accounts_for_every_document(spark, demo):
    cfg, _, _ = demo
    clusters = tables.read_table(spark, tables.table_ref(cfg, "clusters")).collect()
    assert len(clusters) == cfg.clusters.k
    assert sum(r["size"] for r in clusters) == silver(spark, cfg).count()
    assert all(len(r["centroid"]) == cfg.embeddings.dim for r in clusters)


def test_semantic_dedup_equals_brute_force_within_each_cluster(spark, demo):
    cfg, _, _ = demo
    from pyspark.sql import Window

    from jobs.common.schema import survivor_order

    frame = silver(spark, cfg)
    if "duplicate_of" in frame.columns:
        frame = frame.where(F.col("duplicate_of").isNull())
    ranked = frame.withColumn("_priority", F.row_number().over(
        Window.partitionBy("cluster_id").orderBy(*survivor_order()))).toPandas()
    marked = 0
    for _, part in ranked.groupby("cluster_id"):
        expected = semantic_duplicate_of_brute_force(np.stack(part["embedding"].to_numpy()), part["doc_id"].tolist(),
                                                     part["_priority"].to_numpy(), cfg.clusters.semdedup_threshold)
        got = [x if isinstance(x, str) else None for x in part["semantic_duplicate_of"]]
        assert got == list(expected)
        marked += sum(e is not None for e in expected)
    assert marked > 0  # the demo's planted near-duplicates are also semantic duplicates


def test_semantic_duplicates_point_at_kept_documents_with_better_provenance(spark, demo):
    cfg, _, _ = demo
    frame = silver(spark, cfg)
    dups = frame.alias("d").where(F.col("semantic_duplicate_of").isNotNull()).join(
        frame.alias("k"), F.col("d.semantic_duplicate_of") == F.col("k.doc_id")).select(
        "d.doc_id", "d.origin", "k.origin", "k.semantic_duplicate_of", "d.cluster_id", "k.cluster_id").collect()
    assert dups
    rank = {"human": 0, "unknown": 1, "synthetic": 2}
    for doc_id, dup_origin, kept_origin, kept_mark, dup_cluster, kept_cluster in dups:
        assert kept_mark is None and dup_cluster == kept_cluster and doc_id
        assert rank[kept_origin] <= rank[dup_origin]


def test_diversity_metrics_are_logged_for_the_silver_version(demo):
    cfg, _, outcomes = demo
    mlflow.set_tracking_uri(cfg.tracking.uri)
    metrics = mlflow.MlflowClient().get_run(outcomes["embed"].run_id).data.metrics
    assert 0 < metrics["diversity.cluster_entropy"] <= 1
    assert 0 < metrics["diversity.top_source_share"] <= 1
    assert 1 <= metrics["diversity.vendi_score"]
    assert 0 < metrics["diversity.distinct_1"] < metrics["diversity.distinct_4"] <= 1
