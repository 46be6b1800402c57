"""Near-duplicate step (jobs/neardup.py) with real Spark, Delta, GX and MLflow on small corpora.

The Spark path must give exactly the clusters of the single-process reference (udfs.lsh) on the same
input; representatives follow provenance, then quality, whatever the input order; an incremental batch
gives what a full run on the union gives; settings are recorded where results are published.
"""
from __future__ import annotations

import datetime as dt
import json
import random
from collections import Counter, defaultdict
from dataclasses import replace

import mlflow
import numpy as np
import pyarrow as pa
import pytest
from pyspark.sql import functions as F

from bench.minhash_core import exact_jaccard_pairs, near_duplicate_corpus
from jobs import neardup
from jobs.common import tables
from jobs.common.components import connected_components
from jobs.common.config import load_config
from jobs.common.runner import execute
from jobs.pipeline import STEPS
from tests.conftest import lake_overrides
from udfs.lsh import (
    band_hashes,
    candidate_pairs,
    connected_component_ids,
    near_duplicate_clusters,
    near_duplicate_pairs,
)
from udfs.minhash import exact_jaccard, is_empty_signature, minhash_signatures, shingles
from udfs.neardup import exact_jaccard_of_text_pairs, pair_similarities, paired_text_similarity_batches

pytestmark = pytest.mark.spark

SILVER_SCHEMA = ("doc_id string, text string, source string, origin string, pre_ai_archive boolean, "
                 "created_at timestamp, alpha_ratio double, duplicate_line_fraction double")
SETTINGS = neardup.LshSettings.from_config(load_config().neardup)


def silver_rows(ids, texts, **overrides):
    """Silver-shaped rows: human web documents of equal quality unless ``overrides[doc_id]`` says otherwise."""
    rows = []
    for doc_id, text in zip(ids, texts, strict=True):
        row = {"doc_id": doc_id, "text": text, "source": "web", "origin": "human", "pre_ai_archive": False,
               "created_at": dt.datetime(2024, 1, 1), "alpha_ratio": 0.8, "duplicate_line_fraction": 0.0}
        row.update(overrides.get(doc_id, {}))
        rows.append(tuple(row.values()))
    return rows


def clusters_of(mapping):
    """Non-singleton clusters of an ``id -> cluster id`` mapping, as {cluster id: sorted members}."""
    members = defaultdict(list)
    for doc_id, cluster in mapping.items():
        members[cluster].append(doc_id)
    return {cluster: sorted(docs) for cluster, docs in members.items() if len(docs) > 1}


@pytest.fixture(scope="module")
def corpus():
    generated = near_duplicate_corpus(300, seed=5)
    extra = ["!!! ... ???", "— “ ” —", "Short note.", "short, NOTE!", "Another short note here."]
    texts = generated.texts + extra
    return [f"doc-{i:04d}" for i in range(len(texts))], texts


@pytest.fixture(scope="module")
def corpus_frame(spark, corpus):
    ids, texts = corpus
    return spark.createDataFrame(list(zip(ids, texts, strict=True)), "doc_id string, text string").repartition(3)


def test_exact_jaccard_of_text_pairs_equals_jaccard_of_byte_shingles(corpus):
    ids, texts = corpus
    rng = random.Random(3)
    pairs = [(rng.randrange(len(texts)), rng.randrange(len(texts))) for _ in range(300)]
    pairs += [(i, i) for i in range(len(texts) - 5, len(texts))] + [(len(texts) - 3, len(texts) - 2)]
    texts_a, texts_b = [texts[a] for a, _ in pairs], [texts[b] for _, b in pairs]
    for ngram, kind in ((5, "word"), (3, "word"), (7, "char")):
        expected = [exact_jaccard(set(shingles(a, ngram, kind)), set(shingles(b, ngram, kind)))
                    for a, b in zip(texts_a, texts_b, strict=True)]
        assert exact_jaccard_of_text_pairs(texts_a, texts_b, ngram, kind).tolist() == expected


def test_paired_text_similarity_pairs_adjacent_rows_across_batch_boundaries(corpus):
    """Each pair's two rows (side 0, side 1) are adjacent; a pair split between two batches is completed
    from the carried row, and a pair missing one side gives nothing."""
    _, texts = corpus
    # doc_b drops the first 5*i words of doc_a: every pair has its own, non-zero similarity.
    pairs = [(f"a{i:02d}", f"b{i:02d}", texts[i], " ".join(texts[i].split()[5 * i:])) for i in range(9)]
    rows = [(a, b, side, text) for a, b, text_a, text_b in pairs for side, text in ((0, text_a), (1, text_b))]
    rows.insert(8, ("a03x", "b03x", 0, texts[20]))  # doc_b's text is missing: no similarity for this pair
    columns = list(zip(*rows, strict=True))
    table = pa.table({"doc_a": columns[0], "doc_b": columns[1], "side": pa.array(columns[2], pa.int32()),
                      "text": columns[3]})
    batches = table.to_batches(max_chunksize=3)  # boundaries fall between the two rows of several pairs
    assert any(batch.column("side")[-1].as_py() == 0 for batch in batches)
    out = pa.Table.from_batches(list(paired_text_similarity_batches(batches, SETTINGS)))
    expected = pair_similarities([p[2] for p in pairs], [p[3] for p in pairs], SETTINGS)
    assert out.column("doc_a").to_pylist() == [p[0] for p in pairs]
    assert out.column("doc_b").to_pylist() == [p[1] for p in pairs]
    assert out.column("similarity").to_pylist() == expected.tolist()
    assert len(set(expected.tolist())) == len(pairs) and min(expected) > 0


@pytest.mark.parametrize(("verification", "reference_verification"), [("exact", "shingles"),
                                                                      ("signature", "signature")])
def test_spark_clusters_equal_the_single_process_reference(corpus, corpus_frame, verification,
                                                           reference_verification):
    ids, texts = corpus  # ids are in sorted order, so "first member of a bucket" means the same in both
    settings = replace(SETTINGS, verification=verification)
    found = neardup.find_near_duplicates(corpus_frame, settings)
    spark_clusters = {r["doc_id"]: r["near_duplicate_cluster_id"] for r in found.clusters.collect()}
    spark_edges = sorted((r["doc_a"], r["doc_b"]) for r in found.edges.collect())

    signatures = minhash_signatures(texts, settings.num_perm, settings.seed, settings.ngram, settings.shingle,
                                    settings.scheme)
    options = {"verification": reference_verification, "shingle_sets": [set(shingles(t)) for t in texts],
               "max_bucket_size": settings.max_bucket_size, "scheme": settings.scheme, "seed": settings.seed}
    reference_pairs = near_duplicate_pairs(signatures, settings.threshold, settings.candidate_threshold, **options)
    reference = near_duplicate_clusters(ids, signatures, settings.threshold, settings.candidate_threshold, **options)
    datasketch = near_duplicate_clusters(ids, signatures, settings.threshold, settings.candidate_threshold,
                                         candidate_index="datasketch", **{**options, "max_bucket_size": None})

    assert spark_edges == [(ids[a], ids[b]) for a, b in reference_pairs.tolist()]
    assert clusters_of(spark_clusters) == clusters_of(reference) == clusters_of(datasketch)
    assert len(clusters_of(reference)) > 40  # the corpus plants ~90 variants
    assert "doc-0302" in spark_clusters and spark_clusters["doc-0302"] == spark_clusters["doc-0303"]
    assert "doc-0300" not in spark_clusters and "doc-0301" not in spark_clusters  # no shingles: never clustered


def test_connected_components_in_rounds_and_in_one_task_equal_the_reference(spark):
    rng = random.Random(7)
    nodes = [f"n{i:03d}" for i in range(300)]
    chains = [(nodes[i], nodes[i + 1]) for i in range(0, 24)]  # one long path: several rounds
    edges = chains + [(rng.choice(nodes[24:]), rng.choice(nodes[24:])) for _ in range(120)] + [("n250", "n250")]
    frame = spark.createDataFrame(edges, "doc_a string, doc_b string")
    in_rounds = connected_components(frame, "doc_a", "doc_b", local_finish_edges=0)
    in_one_task = connected_components(frame, "doc_a", "doc_b")
    ids = sorted({n for edge in edges for n in edge if edge[0] != edge[1]})
    position = {n: i for i, n in enumerate(ids)}
    pairs = np.array([(position[a], position[b]) for a, b in edges if a != b])
    expected = connected_component_ids(ids, pairs)
    assert in_rounds.rounds >= 3 and in_one_task.rounds == 0
    for result in (in_rounds, in_one_task):
        assert {r["node"]: r["component"] for r in result.labels.collect()} == expected


def test_giant_bucket_links_members_to_its_smallest_doc_id_only(spark, corpus):
    _, texts = corpus
    base = texts[0].split()
    # 30 texts that differ in their last word only: every band but the last few is one shared bucket.
    variants = [" ".join(base[:-1] + [f"w{i}"]) for i in range(30)]
    ids = [f"g{i:02d}" for i in range(30)]
    frame = spark.createDataFrame(list(zip(ids, variants, strict=True)), "doc_id string, text string")
    settings = replace(SETTINGS, max_bucket_size=5)
    found = neardup.find_near_duplicates(frame, settings)

    signatures = minhash_signatures(variants)
    keys = band_hashes(signatures, settings.bands, settings.rows)
    expected = candidate_pairs(keys, 5, include=~is_empty_signature(signatures))
    candidates = sorted((r["doc_a"], r["doc_b"]) for r in found.candidates.collect())
    assert candidates == [(ids[a], ids[b]) for a, b in expected.tolist()]
    assert len(candidates) < 30 * 29 // 2
    assert Counter(a for a, _ in candidates)["g00"] == 29  # the star centre of the capped buckets
    assert {r["near_duplicate_cluster_id"] for r in found.clusters.collect()} == {"g00"}
    assert found.clusters.count() == 30


# Each scenario is one cluster (variants of one text): the roles in it, and which one must be kept.
ROLES = {
    "archive": {"pre_ai_archive": True, "alpha_ratio": 0.5, "created_at": dt.datetime(2024, 6, 1)},
    "best": {"alpha_ratio": 0.9},
    "lines": {"alpha_ratio": 0.9, "duplicate_line_fraction": 0.2},
    "low": {"alpha_ratio": 0.6, "created_at": dt.datetime(2001, 1, 1)},
    "late": {"alpha_ratio": 0.6, "created_at": dt.datetime(2005, 1, 1)},
    "twin": {"alpha_ratio": 0.6, "created_at": dt.datetime(2005, 1, 1)},
    "synthetic": {"origin": "synthetic", "alpha_ratio": 0.99},
    "unknown": {"origin": "unknown", "alpha_ratio": 0.95},
}
SCENARIOS = {
    "s1": (["archive", "best", "lines", "low", "synthetic", "unknown"], "archive"),  # pre-AI archive first
    "s2": (["best", "lines", "low", "synthetic", "unknown"], "best"),  # then human, then quality
    "s3": (["lines", "synthetic", "unknown"], "lines"),  # a human beats better-scored unknown/synthetic
    "s4": (["low", "late"], "low"),  # equal quality: the earliest
    "s5": (["twin", "late"], "late"),  # equal in everything: the smallest doc_id
}


def test_representative_follows_provenance_then_quality_whatever_the_input_order(spark, corpus):
    _, texts = corpus
    rows, expected = [], {}
    for number, (scenario, (roles, kept)) in enumerate(SCENARIOS.items(), start=1):
        words = texts[number].split()
        variants = [" ".join(words[:i] + ["edited"] + words[i + 1:]) for i in range(10, 10 + 30 * len(roles), 30)]
        ids = [f"{scenario}-{role}" for role in roles]
        rows += silver_rows(ids, variants, **{f"{scenario}-{role}": ROLES[role] for role in roles})
        expected.update({doc_id: None if doc_id == f"{scenario}-{kept}" else f"{scenario}-{kept}" for doc_id in ids})
    silver = spark.createDataFrame(rows, SILVER_SCHEMA)
    found = neardup.find_near_duplicates(silver.select("doc_id", "text"), SETTINGS)
    assert found.clusters.count() == len(rows)
    for seed in (1, 2, 3):
        shuffled = silver.orderBy(F.rand(seed)).repartition(3)
        marks = {m["doc_id"]: m for m in neardup.choose_representatives(shuffled, found.clusters).collect()}
        assert {doc_id: m["duplicate_of"] for doc_id, m in marks.items()} == expected
        assert {m["duplicate_reason"] for m in marks.values() if m["duplicate_of"]} == {"near_duplicate"}
        assert all(m["near_duplicate_cluster_id"] == min(d for d in expected if d[:2] == doc_id[:2])
                   for doc_id, m in marks.items())


INDEX_COLUMNS = ("doc_id", "band", "hash", "settings_hash", "near_duplicate_cluster_id")


def two_batch_rows():
    """240 silver rows with planted near duplicates (every seventh declared synthetic): batch A is the
    first 150."""
    generated = near_duplicate_corpus(240, seed=9)
    ids = [f"inc-{i:04d}" for i in range(len(generated.texts))]
    return ids, silver_rows(ids, generated.texts, **{doc_id: {"origin": "synthetic"} for doc_id in ids[::7]})


def marks_and_index_at_once(silver, settings):
    """Silver's marks and the band index rows of one full run of the job's functions on ``silver``."""
    at_once = neardup.find_near_duplicates(silver.select("doc_id", "text"), settings)
    marked = neardup.with_marks(silver, neardup.choose_representatives(silver, at_once.clusters))
    return (sorted(tuple(r) for r in marked.select(*MARK_COLUMNS).collect()),
            sorted(tuple(r) for r in neardup.index_updates(at_once, settings, None).select(*INDEX_COLUMNS).collect()))


@pytest.fixture(scope="module")
def incremental(spark, tmp_path_factory):
    """A corpus deduplicated by the step in two batches (A, then A and B with B incremental), and the
    same union deduplicated at once by the job's functions."""
    ids, rows = two_batch_rows()
    cfg = load_config([], lake_overrides(tmp_path_factory.mktemp("incremental")))
    silver_ref = tables.table_ref(cfg, "silver")
    # Silver as the dedup and quality steps leave it: rebuilt, without near-duplicate columns.
    tables.overwrite(spark.createDataFrame(rows[:150], SILVER_SCHEMA), silver_ref)
    first = execute(neardup.STEP, spark, cfg, steps=STEPS)
    tables.overwrite(spark.createDataFrame(rows, SILVER_SCHEMA), silver_ref)
    second = execute(neardup.STEP, spark, cfg, steps=STEPS)

    at_once_marks, at_once_index = marks_and_index_at_once(spark.createDataFrame(rows, SILVER_SCHEMA), SETTINGS)
    return {"cfg": cfg, "first": first, "second": second, "ids": ids, "batch_a": {r[0] for r in rows[:150]},
            "at_once_marks": at_once_marks, "at_once_index": at_once_index}


MARK_COLUMNS = ("doc_id", *neardup.NEAR_DUPLICATE_COLUMNS)


def test_incremental_batch_equals_full_dedup_of_the_union(spark, incremental):
    cfg, first, second = incremental["cfg"], incremental["first"], incremental["second"]
    assert (first.summary["mode"], second.summary["mode"]) == ("full", "incremental")
    assert second.summary["signed"] == len(incremental["ids"]) - len(incremental["batch_a"]) == 90
    silver = tables.read_table(spark, tables.table_ref(cfg, "silver"))
    assert sorted(tuple(r) for r in silver.select(*MARK_COLUMNS).collect()) == incremental["at_once_marks"]
    index = tables.read_table(spark, tables.table_ref(cfg, "band_index"))
    assert sorted(tuple(r) for r in index.select(*INDEX_COLUMNS).collect()) == incremental["at_once_index"]
    assert second.summary["clusters"] > first.summary["clusters"]
    # The batch really met the history: clusters that hold documents of both batches.
    clusters = defaultdict(set)
    for r in silver.where(F.col("near_duplicate_cluster_id").isNotNull()).collect():
        clusters[r["near_duplicate_cluster_id"]].add(r["doc_id"] in incremental["batch_a"])
    assert sum(both == {True, False} for both in clusters.values()) >= 5


def test_settings_are_recorded_in_table_properties_and_mlflow(spark, incremental):
    cfg, outcome = incremental["cfg"], incremental["second"]
    expected = {"shingle": "word", "ngram": "5", "num_perm": "128", "bands": "16", "rows": "8", "seed": "1",
                "scheme": "affine32", "signature_bits": "32", "threshold": "0.8", "candidate_threshold": "0.65",
                "verification": "exact", "max_bucket_size": "1000", "settings_hash": SETTINGS.settings_hash,
                "index_settings_hash": SETTINGS.index_settings_hash}
    for name in ("silver", "band_index"):
        recorded = tables.properties(spark, tables.table_ref(cfg, name))
        assert {k: recorded[f"cleanwell.neardup.{k}"] for k in expected} == expected
    index = tables.read_table(spark, tables.table_ref(cfg, "band_index"))
    # A row holds band hashes: it names the settings they depend on, not the verification threshold.
    assert [r[0] for r in index.select("settings_hash").distinct().collect()] == [SETTINGS.index_settings_hash]

    mlflow.set_tracking_uri(cfg.tracking.uri)
    run = mlflow.MlflowClient().get_run(outcome.run_id)
    assert {k: run.data.params[f"neardup.{k}"] for k in ("bands", "rows", "settings_hash", "num_perm", "shingle")} \
        == {"bands": "16", "rows": "8", "settings_hash": SETTINGS.settings_hash, "num_perm": "128", "shingle": "word"}
    metrics = run.data.metrics
    assert metrics["documents_in"] == 240 and metrics["duplicates_marked"] == metrics["marked.near_duplicate"] > 0
    assert metrics["duplicate_share"] == pytest.approx(metrics["duplicates_marked"] / 240)


def test_changed_band_settings_rebuild_the_index_and_a_changed_threshold_reverifies_it(spark, incremental):
    cfg = incremental["cfg"]
    silver = tables.read_table(spark, tables.table_ref(cfg, "silver")).select("doc_id")

    def settings(*overrides):
        return neardup.LshSettings.from_config(load_config(overrides=list(overrides)).neardup)

    same = neardup.previous_index(spark, cfg, SETTINGS, silver)
    changed = neardup.previous_index(spark, cfg, settings("neardup.num_perm=64"), silver)
    lower = neardup.previous_index(spark, cfg, settings("neardup.threshold=0.7"), silver)
    estimated = neardup.previous_index(spark, cfg, settings("neardup.verification=signature"), silver)
    gone = neardup.previous_index(spark, cfg, SETTINGS, silver.where(F.col("doc_id") != incremental["ids"][0]))
    assert same.mode == "incremental" and same.index is not None
    assert (changed.mode, changed.index) == ("full", None) and "band settings changed" in changed.reason
    assert lower.mode == estimated.mode == "reverify" and lower.index is not None and "0.7" in lower.reason
    assert (gone.mode, gone.index) == ("full", None) and "no longer in silver" in gone.reason


@pytest.fixture(scope="module")
def threshold_changes(spark, tmp_path_factory):
    """The step run three times on one lake: batch A at threshold 0.8; A and B at 0.7 (new documents and a
    new threshold at once); A and B back at 0.8 (the threshold only). Silver's marks after each run, and
    the union deduplicated at once by the job's functions at each threshold."""
    ids, rows = two_batch_rows()
    root = tmp_path_factory.mktemp("threshold")
    at_08 = load_config([], lake_overrides(root))
    at_07 = load_config([], lake_overrides(root) + ["neardup.threshold=0.7"])
    silver_ref = tables.table_ref(at_08, "silver")

    def marks():
        return sorted(tuple(r) for r in tables.read_table(spark, silver_ref).select(*MARK_COLUMNS).collect())

    tables.overwrite(spark.createDataFrame(rows[:150], SILVER_SCHEMA), silver_ref)
    outcomes = [execute(neardup.STEP, spark, at_08, steps=STEPS)]
    tables.overwrite(spark.createDataFrame(rows, SILVER_SCHEMA), silver_ref)
    outcomes.append(execute(neardup.STEP, spark, at_07, steps=STEPS))
    marks_07 = marks()
    outcomes.append(execute(neardup.STEP, spark, at_08, steps=STEPS))
    union = spark.createDataFrame(rows, SILVER_SCHEMA)
    lower = neardup.LshSettings.from_config(at_07.neardup)
    return {"cfg": at_08, "outcomes": outcomes, "marks_07": marks_07, "marks_08": marks(),
            "index_08": sorted(tuple(r) for r in tables.read_table(spark, tables.table_ref(at_08, "band_index"))
                               .select(*INDEX_COLUMNS).collect()),
            "at_once_07": marks_and_index_at_once(union, lower), "at_once_08": marks_and_index_at_once(union, SETTINGS)}


@pytest.mark.slow  # three neardup runs (~55 s on a fresh clone); CI runs it
def test_changed_threshold_reverifies_every_pair_without_signing_indexed_documents(spark, threshold_changes):
    first, lowered, restored = threshold_changes["outcomes"]
    assert [o.summary["mode"] for o in threshold_changes["outcomes"]] == ["full", "reverify", "reverify"]
    assert (first.summary["signed"], lowered.summary["signed"], restored.summary["signed"]) == (150, 90, 0)
    # Identical to a full run at each threshold: pairs among indexed documents are verified again too.
    assert threshold_changes["marks_07"] == threshold_changes["at_once_07"][0]
    assert threshold_changes["marks_08"] == threshold_changes["at_once_08"][0]
    assert threshold_changes["index_08"] == threshold_changes["at_once_08"][1]
    marked_07, marked_08 = (sum(m[2] is not None for m in threshold_changes[key]) for key in ("marks_07", "marks_08"))
    assert marked_08 < marked_07  # the lower threshold merges clusters, and the raised one splits them again
    recorded = tables.properties(spark, tables.table_ref(threshold_changes["cfg"], "band_index"))
    assert (recorded["cleanwell.neardup.threshold"], recorded["cleanwell.neardup.settings_hash"]) \
        == ("0.8", SETTINGS.settings_hash)


def planted_pairs_only(clusters, by_id):
    """Every cluster is one planted pair: an injected edit (the only injected documents with a date) of a
    wikihow article or of a llama-2 text."""
    return all(sorted(by_id[d]["source"] for d in members) in (["injected", "wikihow"], ["injected", "llama2"])
               and any(by_id[d]["created_at"] is not None for d in members) for members in clusters.values())


def test_demo_pipeline_marks_the_planted_near_duplicates_and_nothing_else(spark, demo):
    cfg, _, outcomes = demo
    silver = tables.read_table(spark, tables.table_ref(cfg, "silver")).collect()
    by_id = {r["doc_id"]: r for r in silver}
    marked = clusters_of({r["doc_id"]: r["near_duplicate_cluster_id"] for r in silver
                          if r["near_duplicate_cluster_id"] is not None})

    # Ground truth by brute force: every pair of silver documents at exact Jaccard >= 0.8 (5-word shingles).
    ids = sorted(by_id)
    truth, _ = exact_jaccard_pairs([set(shingles(by_id[i]["text"])) for i in ids], 0.8)
    assert marked == clusters_of(connected_component_ids(ids, truth))
    assert len(marked) >= 5 and planted_pairs_only(marked, by_id)
    kept_sources = Counter(by_id[d]["source"] for members in marked.values() for d in members
                           if by_id[d]["duplicate_of"] is None)
    assert kept_sources["llama2"] == 0  # an undeclared edit beats the declared-synthetic original
    n_marked = sum(r["duplicate_of"] is not None for r in silver)
    assert n_marked == len(marked) == outcomes["neardup"].summary["marked"]["near_duplicate"]
    manifest = json.loads(tables.read_table(spark, tables.table_ref(cfg, "manifests")).first()["manifest"])
    assert manifest["excluded_by_reason"]["near_duplicate"] == n_marked


def test_character_shingles_find_every_planted_demo_edit(spark, demo):
    """The demo plants 30 edits at 1-6 % of words; 5-word shingles see only the lightest above 0.8 (an edit
    changes five shingles), character 5-grams see all of them, and still nothing unrelated."""
    cfg, _, _ = demo
    silver = tables.read_table(spark, tables.table_ref(cfg, "silver"))
    by_id = {r["doc_id"]: r for r in silver.collect()}
    settings = neardup.LshSettings.from_config(load_config(overrides=["neardup.shingle=char"]).neardup)
    found = neardup.find_near_duplicates(silver.select("doc_id", "text"), settings)
    clusters = clusters_of({r["doc_id"]: r["near_duplicate_cluster_id"] for r in found.clusters.collect()})
    edits = {d for d, r in by_id.items() if r["source"] == "injected" and r["created_at"] is not None}
    assert len(edits) == 30 and len(clusters) == 30 and planted_pairs_only(clusters, by_id)
    assert edits <= {d for members in clusters.values() for d in members}
