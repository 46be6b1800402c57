"""SemDeDup within a cluster (udfs.semdedup): chunked result equals the brute-force reference; the embed
step reruns SemDeDup alone, on reused embeddings and clusters, when only its threshold changed."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jobs.common.config.settings import ClustersConfig
from udfs.embeddings import EmbeddingModel
from udfs.semdedup import semantic_duplicate_of, semantic_duplicate_of_brute_force

M4 = Path(__file__).parents[1] / "data" / "m4"


def _unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def m4_cluster() -> tuple[np.ndarray, list[str], np.ndarray]:
    """Wikipedia human texts, a re-crawled copy of every third one, and a one-word edit of every
    fifth copy: groups of 1, 2 and 3 near-duplicates among unrelated pages."""
    rows = [json.loads(line) for line in (M4 / "wikipedia_llama2.jsonl").read_text(encoding="utf-8").splitlines()]
    texts = [row["human_text"].strip() for row in rows[:60]]
    ids = [f"wiki-{i}" for i in range(len(texts))]
    for i in range(0, 60, 3):
        texts.append("Retrieved 2024.\n" + texts[i].replace("\n\n", "\n"))
        ids.append(f"wiki-{i}-recrawl")
        if i % 5 == 0:
            texts.append(texts[i].replace(" was ", " is ", 1) + "\nShare this page.")
            ids.append(f"wiki-{i}-edited")
    vectors = EmbeddingModel().fit(texts).transform(texts)
    priority = np.random.default_rng(7).permutation(len(texts)).astype(float)
    return vectors, ids, priority


def _assert_no_pair_near(vectors: np.ndarray, threshold: float, margin: float = 1e-4) -> None:
    # Rounding differs between BLAS and the Python reference: keep every pair away from the edge.
    similarity = vectors.astype(np.float64) @ vectors.astype(np.float64).T
    assert not (np.abs(similarity[np.triu_indices(len(vectors), 1)] - threshold) < margin).any()


def _threshold_between_pairs(vectors: np.ndarray, near: float) -> float:
    """The midpoint of the widest gap between pair similarities within 0.01 of ``near``."""
    similarity = vectors.astype(np.float64) @ vectors.astype(np.float64).T
    values = np.sort(similarity[np.triu_indices(len(vectors), 1)])
    values = values[(values > near - 0.01) & (values < near + 0.01)]
    widest = int(np.argmax(np.diff(values)))
    return float((values[widest] + values[widest + 1]) / 2)


def test_chunked_equals_brute_force_on_m4_near_duplicates(m4_cluster):
    vectors, ids, priority = m4_cluster
    _assert_no_pair_near(vectors, 0.9)
    chunked = semantic_duplicate_of(vectors, ids, priority, threshold=0.9, chunk_rows=16)
    reference = semantic_duplicate_of_brute_force(vectors, ids, priority, threshold=0.9)
    assert chunked.tolist() == reference.tolist()
    # 20 re-crawls and 4 edits are duplicates; the 60 originals' own cosine stays below 0.9.
    assert sum(value is not None for value in chunked) == 24


def test_chunked_equals_brute_force_on_random_clusters():
    rng = np.random.default_rng(11)
    centres = rng.normal(size=(40, 32))
    vectors = _unit(np.repeat(centres, 5, axis=0) + rng.normal(scale=rng.uniform(0.05, 0.6, size=(200, 1)),
                                                             size=(200, 32)))
    ids = [f"doc-{i:03d}" for i in range(200)]
    priority = rng.integers(0, 5, size=200)  # many ties: broken by id
    for near in (0.8, 0.95):
        threshold = _threshold_between_pairs(vectors, near)
        chunked = semantic_duplicate_of(vectors, ids, priority, threshold, chunk_rows=33)
        reference = semantic_duplicate_of_brute_force(vectors, ids, priority, threshold)
        assert chunked.tolist() == reference.tolist()
        assert 20 < sum(value is not None for value in chunked) < 160  # neither nothing nor everything


def test_chain_keeps_only_the_highest_priority_document():
    # a~b (cos 0.96), b~c (0.96), a and c below the threshold: one connected group.
    angles = np.radians([0.0, 16.0, 32.0, 90.0])
    vectors = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    result = semantic_duplicate_of(vectors, ["a", "b", "c", "d"], [2.0, 1.0, 3.0, 0.0], threshold=0.95)
    assert result.tolist() == ["b", None, "b", None]


def test_priority_ties_go_to_the_smallest_id_whatever_the_input_order():
    vectors = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    forward = semantic_duplicate_of(vectors, ["y", "x", "z"], [0, 0, 0], threshold=0.99)
    backward = semantic_duplicate_of(vectors[::-1], ["z", "x", "y"], [0, 0, 0], threshold=0.99)
    assert forward.tolist() == ["x", None, None]
    assert backward.tolist() == [None, None, "x"]


def test_zero_rows_match_nothing_and_empty_input_is_empty():
    vectors = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    assert semantic_duplicate_of(vectors, [1, 2, 3], [0, 1, 2], 0.5).tolist() == [None, None, None]
    assert semantic_duplicate_of(np.zeros((0, 4)), [], [], 0.9).tolist() == []


def test_invalid_inputs_are_errors_that_say_what_is_wrong():
    unit = np.eye(2, dtype=np.float32)
    with pytest.raises(ValueError, match="L2-normalised"):
        semantic_duplicate_of(unit * 2, ["a", "b"], [0, 1], 0.9)
    with pytest.raises(ValueError, match="unique"):
        semantic_duplicate_of(unit, ["a", "a"], [0, 1], 0.9)
    with pytest.raises(ValueError, match="one id and priority per row"):
        semantic_duplicate_of(unit, ["a"], [0, 1], 0.9)
    with pytest.raises(ValueError, match="cosine similarity"):
        semantic_duplicate_of(unit, ["a", "b"], [0, 1], 1.5)


def test_cluster_of_five_thousand_in_small_chunks():
    rng = np.random.default_rng(5)
    base = _unit(rng.normal(size=(2500, 64)))
    vectors = np.concatenate([base, _unit(base + 0.02 * rng.normal(size=base.shape))])
    ids = list(range(5000))
    result = semantic_duplicate_of(vectors, ids, np.arange(5000), threshold=0.95, chunk_rows=512)
    assert result[2500:].tolist() == list(range(2500))
    assert all(value is None for value in result[:2500])


@pytest.mark.slow  # two embed runs on a forked lake (~36 s on a fresh clone); CI runs it
@pytest.mark.spark
def test_changed_semdedup_threshold_reuses_embeddings_and_clusters_and_marks_as_a_fresh_run(spark, fork_demo):
    from delta.tables import DeltaTable

    from jobs import embed
    from jobs.common import tables
    from jobs.common.runner import execute
    from jobs.pipeline import STEPS

    # The demo's semantic duplicates are far apart from the rest: 0.5 to 0.9 mark the same 21, 0.95 fewer.
    cfg, _ = fork_demo("clusters.semdedup_threshold=0.95")
    silver_ref, clusters_ref = tables.table_ref(cfg, "silver"), tables.table_ref(cfg, "clusters")

    def published():
        silver = tables.read_table(spark, silver_ref).select("doc_id", "cluster_id", "semantic_duplicate_of",
                                                              "embedding").collect()
        clusters = tables.read_table(spark, clusters_ref).select("cluster_id", "size", "centroid").collect()
        return {r["doc_id"]: tuple(r[1:3]) + (tuple(r["embedding"]),) for r in silver}, sorted(map(tuple, clusters))

    at_090, clusters_090 = published()
    reused = execute(embed.STEP, spark, cfg, steps=STEPS)
    at_095, clusters_095 = published()
    # From scratch at 0.95: silver restored to the version the demo's embed read (the same files), embedded,
    # clustered and deduplicated again by the step.
    runs = tables.read_table(spark, tables.table_ref(cfg, "pipeline_runs")).where("step = 'embed'").collect()
    read_version = int(dict(min(runs, key=lambda r: r["finished_at"])["inputs"])["table:silver"])
    DeltaTable.forPath(spark, silver_ref.location).restoreToVersion(read_version)
    fresh = execute(embed.STEP, spark, cfg, steps=STEPS, force=True)
    fresh_095, fresh_clusters_095 = published()

    assert (reused.summary["mode"], fresh.summary["mode"]) == ("reuse", "full")
    assert at_095 == fresh_095 and clusters_095 == fresh_clusters_095 == clusters_090
    assert {d: v[0] for d, v in at_095.items()} == {d: v[0] for d, v in at_090.items()}
    marked_090, marked_095 = (sum(v[1] is not None for v in marks.values()) for marks in (at_090, at_095))
    assert 0 < marked_095 == reused.summary["marked"]["semantic_duplicate"] < marked_090


@pytest.mark.spark
def test_clusters_do_not_depend_on_how_silver_is_partitioned(spark, demo):
    """issue #13: a recovery rerun (silver rewritten into other files) gave other clusters with Spark ML's
    KMeans; the sampled fit and nearest-centroid assignment give the same ones on any partitioning."""
    from jobs.common import tables
    from jobs.embed import add_clusters

    cfg, _, _ = demo
    silver = tables.read_table(spark, tables.table_ref(cfg, "silver")).select("doc_id", "embedding")
    results = []
    for partitions in (1, 7):
        clustered, summary = add_clusters(silver.repartition(partitions), cfg)
        results.append(({r["doc_id"]: r["cluster_id"] for r in clustered.collect()},
                        sorted((r["cluster_id"], r["size"]) for r in summary.collect())))
    assert results[0] == results[1]
    assert len(results[0][1]) == cfg.clusters.k and sum(size for _, size in results[0][1]) == silver.count()


@pytest.mark.spark
def test_one_udf_embeds_and_assigns_as_embedding_then_assignment_do(spark, demo):
    """issue #16: the held pass embeds and assigns in one Python UDF (the embeddings do not go back to the
    JVM and out again); its embeddings, cluster ids and cluster sizes are those of the two UDFs."""
    from jobs.common import tables
    from jobs.embed import add_clusters, fit_embedding_model, with_embeddings, with_embeddings_and_clusters

    cfg, _, _ = demo
    silver = (tables.read_table(spark, tables.table_ref(cfg, "silver"))
              .drop("embedding", "cluster_id", "semantic_duplicate_of").repartition(3))
    model = fit_embedding_model(silver, cfg)
    results = []
    for fused in (False, True):
        clustered, summary = add_clusters(
            silver, cfg, lambda df: with_embeddings(df, cfg, model),
            embed_and_assign=(lambda df, c: with_embeddings_and_clusters(df, cfg, model, c)) if fused else None)
        assert clustered.columns == [*silver.columns, "embedding", "cluster_id"]
        results.append(({r["doc_id"]: (r["cluster_id"], list(r["embedding"])) for r in clustered.collect()},
                        sorted((r["cluster_id"], r["size"]) for r in summary.collect())))
    assert results[0] == results[1]
    assert len({cluster for cluster, _ in results[0][0].values()}) > 1


@pytest.mark.spark
def test_semdedup_splits_clusters_above_its_partition_size(spark, demo):
    """issue #16: SemDeDup is quadratic in group size (8 clusters of ~125,000 documents took ~350 s at 1 M);
    above k * semdedup_partition_size candidates a finer KMeans splits the groups, and each group is
    deduplicated on its own: the marks are those of semantic_duplicate_of run group by group."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from jobs.common import tables
    from jobs.common.schema import survivor_order
    from jobs.embed import add_semantic_duplicates, semdedup_partitions

    cfg, _, _ = demo
    settings = ClustersConfig(k=2, semdedup_partition_size=100, semdedup_threshold=0.8)
    silver = tables.read_table(spark, tables.table_ref(cfg, "silver")).drop("semantic_duplicate_of")
    marked, groups = add_semantic_duplicates(silver, settings)
    candidates = silver.where("duplicate_of IS NULL")
    group, n_groups = semdedup_partitions(candidates, settings)
    assert groups == n_groups == -(-candidates.count() // 100) > settings.k

    rows = (candidates.withColumn("_group", group)
            .withColumn("_priority", F.row_number().over(Window.partitionBy("_group").orderBy(*survivor_order())))
            .select("_group", "doc_id", "embedding", "_priority").toPandas())
    expected = {}
    for _, frame in rows.groupby("_group"):
        vectors = np.stack(frame["embedding"].to_numpy()).astype(np.float32)
        expected.update(zip(frame["doc_id"], semantic_duplicate_of(vectors, frame["doc_id"].tolist(),
                                                                  frame["_priority"].to_numpy(), 0.8), strict=True))
    marks = {r["doc_id"]: r["semantic_duplicate_of"] for r in marked.where("duplicate_of IS NULL").collect()}
    assert marks == expected and any(expected.values())
    assert len(rows["_group"].unique()) > 1


@pytest.mark.spark
def test_a_cluster_larger_than_one_arrow_batch_is_marked(spark, m4_cluster):
    """issue #16: at 100k documents embed failed with "Expected Array, got ChunkedArray" once a cluster
    outgrew one Arrow batch (its doc_id column arrived in chunks and was sent back as it came)."""
    from jobs.embed import add_semantic_duplicates

    vectors, ids, priority = m4_cluster
    rows = [(0, doc_id, [float(x) for x in vector], False, "human", float(rank), 0.0, None, "wiki")
            for doc_id, vector, rank in zip(ids, vectors, priority, strict=True)]
    clustered = spark.createDataFrame(rows, "cluster_id int, doc_id string, embedding array<float>, "
                                            "pre_ai_archive boolean, origin string, alpha_ratio double, "
                                            "duplicate_line_fraction double, created_at timestamp, source string")
    batch_key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    before = spark.conf.get(batch_key)
    spark.conf.set(batch_key, "7")
    try:
        marks = {r["doc_id"]: r["semantic_duplicate_of"]
                 for r in add_semantic_duplicates(clustered, ClustersConfig(semdedup_threshold=0.9))[0]
                 .select("doc_id", "semantic_duplicate_of").collect()}
    finally:
        spark.conf.set(batch_key, before)
    # Every other key of survivor_order ties, so alpha_ratio (descending) then doc_id ranks the documents.
    ranked = sorted(range(len(ids)), key=lambda i: (-priority[i], ids[i]))
    rank = np.empty(len(ids))
    rank[ranked] = np.arange(1, len(ids) + 1)
    expected = semantic_duplicate_of(np.asarray(vectors, dtype=np.float32), ids, rank, 0.9)
    assert marks == dict(zip(ids, expected, strict=True)) and any(expected)
