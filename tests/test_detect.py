"""Tokenizer and detector steps on the demo lake, the registry, the watermark, and eval-detector."""
from __future__ import annotations

import copy
import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from pyspark.sql import functions as F
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_auc_score

from jobs.cli import cli, format_evaluation
from jobs.common import tables
from jobs.common.config import load_mixture
from jobs.common.eligibility import apply_exclusions, document_exclusions, with_effective_origin
from jobs.common.labelled import read_pairs
from jobs.common.tokenizer_model import load_tokenizer
from jobs.detect import (
    HELD_BACK_MAX_PER_LABEL,
    declared_sample,
    is_held_back,
    load_detector,
    score,
    training_set,
)
from tests.conftest import REPO
from udfs.classifier import DETECTOR_COLUMNS, SCORE_COLUMNS, detection_report, expected_calibration_error
from udfs.ngram_lm import train_ngram_lm
from udfs.text import normalize_text
from udfs.tokenizer import Tokenizer
from udfs.watermark import generate_watermarked

pytestmark = pytest.mark.spark
M4 = REPO / "data" / "m4"


def silver(spark, cfg):
    return tables.read_table(spark, tables.table_ref(cfg, "silver"))


def test_n_tokens_are_the_pipeline_tokenizers_counts(spark, demo):
    cfg, _, _ = demo
    rows = silver(spark, cfg).orderBy("doc_id").limit(25).select("text", "n_tokens").toPandas()
    tokenizer = Tokenizer.from_bytes(load_tokenizer(spark, cfg))
    assert rows["n_tokens"].tolist() == tokenizer.count_tokens(rows["text"].tolist()).tolist()
    assert tokenizer.vocab_size <= cfg.tokenizer.vocab_size


def test_spark_scores_come_from_the_registered_model(spark, demo):
    cfg, _, _ = demo
    mlflow.set_tracking_uri(cfg.tracking.uri)
    version = mlflow.MlflowClient().get_model_version_by_alias(cfg.detect.registered_model, cfg.detect.alias)
    assert int(version.version) >= 1
    rows = silver(spark, cfg).orderBy("doc_id").limit(20).toPandas()
    local = load_detector(cfg).score(rows["text"].tolist())
    for column in SCORE_COLUMNS:
        np.testing.assert_allclose(rows[column].to_numpy(dtype=float), local[column].to_numpy(dtype=float),
                                   rtol=1e-6, equal_nan=True, err_msg=column)


def test_synthetic_probability_separates_declared_origins(spark, demo):
    cfg, _, _ = demo
    frame = (silver(spark, cfg).where(F.col("provenance_method") == "declared")
             .select("origin", "synthetic_probability").toPandas())
    labels = (frame["origin"] == "synthetic").astype(int)
    assert labels.sum() > 50 and (1 - labels).sum() > 50
    assert roc_auc_score(labels, frame["synthetic_probability"]) > 0.97
    assert frame["synthetic_probability"].between(0, 1).all()


def test_watermark_is_evidence_in_silver_and_the_mixture_decides_with_its_threshold(spark, demo):
    """detect writes watermark_z and keeps declared provenance (and restores provenance a 0.1.0 lake had
    rewritten); the mixture's threshold makes undeclared watermarked text synthetic, excluded with the
    reason `watermark`, and raising the threshold undoes that without rescoring."""
    cfg, _, _ = demo
    tokenizer_bytes = load_tokenizer(spark, cfg)
    tokenizer = Tokenizer.from_bytes(tokenizer_bytes)
    human = silver(spark, cfg).where(F.col("origin") == "human").limit(60).select("text").toPandas()["text"]
    lm = train_ngram_lm(tokenizer.encode_ids(human.tolist()), tokenizer.vocab_size, order=2)
    ids = generate_watermarked(lm.next_token_probs, 250, cfg.detect.watermark_key, cfg.detect.watermark_gamma,
                               2.5, tokenizer.vocab_size, seed=3)
    watermarked = tokenizer.decode_ids([ids])[0]
    plain = human.iloc[0]
    rows = [("w1", watermarked, "unknown", None), ("w2", watermarked, "human", "declared"),
            ("w3", watermarked, "synthetic", "watermark"), ("p1", plain, "unknown", None)]
    frame = spark.createDataFrame(rows, "doc_id string, text string, origin string, provenance_method string")
    scored = score(frame, cfg, tokenizer_bytes).withColumn("source", F.lit("web")).cache()
    out = {r["doc_id"]: r for r in scored.collect()}
    mixture = load_mixture(cfg.sample.mixture)
    threshold = mixture.filters.watermark_z_threshold
    assert out["w1"]["watermark_z"] >= threshold and out["p1"]["watermark_z"] < 2
    assert [(out[d]["origin"], out[d]["provenance_method"]) for d in ("w1", "w2", "w3", "p1")] == \
        [("unknown", None), ("human", "declared"), ("unknown", None), ("unknown", None)]

    def decide(threshold):
        mix = mixture.model_copy(update={"filters": mixture.filters.model_copy(
            update={"watermark_z_threshold": threshold, "max_synthetic_probability": 1.0})})
        checks = [c for c in document_exclusions(mix, scored.columns) if c.reason == "watermark"]
        judged = apply_exclusions(with_effective_origin(scored, mix), checks)
        return {r["doc_id"]: (r["effective_origin"], r["origin_decided_by"], r["exclusion_reason"],
                              r["exclusion_value"], r["exclusion_threshold"]) for r in judged.collect()}

    decided = decide(threshold)
    assert decided["w1"] == ("synthetic", "watermark", "watermark", pytest.approx(out["w1"]["watermark_z"]),
                             threshold)
    assert decided["w3"][:3] == ("synthetic", "watermark", "watermark")
    assert decided["w2"][:3] == ("human", "declared", None) and decided["p1"][:3] == ("unknown", None, None)
    assert {d: v[:3] for d, v in decide(1e6).items()}["w1"] == ("unknown", None, None)



def assert_flag_follows_the_numbers(section):
    aurocs = {column: section[column]["auroc"] for column in DETECTOR_COLUMNS}
    assert section["best_input"] == max(aurocs, key=aurocs.get)
    assert section["combination_worse_than_best_input"] == \
        (section["synthetic_probability"]["auroc"] < aurocs[section["best_input"]])
    assert 0 <= section["synthetic_probability"]["ece"] <= 1


def test_eval_detector_reports_each_detector_cross_domain(tmp_path):
    """Train on Wikipedia only (from config), evaluate on WikiHow: a domain the detector never saw; then
    per domain and per generator on relabelled wikiHow records plus the Wikipedia file."""
    args = ["eval-detector", "--input", str(M4 / "wikihow_llama2.jsonl"), "--json",
            f"tracking.uri=sqlite:///{tmp_path / 'm.db'}", f"tracking.artifact_root={tmp_path / 'art'}",
            f"detect.training_files=[{M4 / 'wikipedia_llama2.jsonl'}]"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # stdout holds exactly one JSON object
    assert (report["n_human"], report["n_machine"], report["excluded_training_texts"]) == (100, 100, 0)
    for detector in (*SCORE_COLUMNS,):
        extra = {"brier", "ece"} if detector == "synthetic_probability" else set()
        assert set(report[detector]) == {"auroc", "tpr_at_fpr_1pct", "tpr_at_fpr_5pct", *extra}
        assert 0 <= report[detector]["tpr_at_fpr_1pct"] <= report[detector]["tpr_at_fpr_5pct"] <= 1
    assert report["synthetic_probability"]["auroc"] >= 0.93
    assert_flag_follows_the_numbers(report)
    # One domain and one generator: their reports are the overall one, number for number.
    overall = {key: report[key] for key in ("n_human", "n_machine", *SCORE_COLUMNS, "best_input",
                                            "combination_worse_than_best_input")}
    assert report["by_domain"] == {"wikihow": overall} and report["by_generator"] == {"llama-2-70b-chat": overall}
    assert report["domains_not_evaluated"] == {}

    # Scoring the training file itself scores only its held-back fifth; every other text is left out.
    training_file = M4 / "wikipedia_llama2.jsonl"
    again = CliRunner().invoke(cli, args[:2] + [str(training_file)] + args[3:])
    assert again.exit_code == 0, again.output
    scored = json.loads(again.stdout)
    pairs = [json.loads(line) for line in training_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = [normalize_text(p[key]) for p in pairs for key in ("human_text", "machine_text")]
    held_back = sum(map(is_held_back, texts))
    assert (scored["n_human"] + scored["n_machine"], scored["excluded_training_texts"]) == \
        (held_back, len(texts) - held_back)

    # A file of training texts only is refused: nothing is left to evaluate.
    trained_on = tmp_path / "trained_on.jsonl"
    trained_on.write_text("".join(json.dumps(p) + "\n" for p in pairs if not is_held_back(normalize_text(
        p["human_text"])) and not is_held_back(normalize_text(p["machine_text"]))), encoding="utf-8")
    refused = CliRunner().invoke(cli, args[:2] + [str(trained_on)] + args[3:])
    assert refused.exit_code == 2 and "were training data" in refused.output

    # Per domain and per generator: wikiHow records relabelled as domains alpha and beta (and gamma, with
    # machine texts only: not evaluated) and generators gen-a and gen-b, plus the training file (only its
    # held-back fifth is scored, as domain wikipedia and generator llama-2-70b-chat).
    wikihow = [json.loads(line) for line in (M4 / "wikihow_llama2.jsonl").read_text(encoding="utf-8").splitlines()
               if line.strip()]
    for number, row in enumerate(wikihow):
        row.update(source="alpha" if number < 60 else "beta" if number < 98 else "gamma-2023",
                   model=f"gen-{'ab'[number % 2]}")
        if number >= 98:
            del row["human_text"]
    relabelled = tmp_path / "relabelled.jsonl"
    relabelled.write_text("".join(json.dumps(row) + "\n" for row in wikihow), encoding="utf-8")
    split = CliRunner().invoke(cli, args[:2] + [str(relabelled), "--input", str(training_file)] + args[3:])
    assert split.exit_code == 0, split.output
    grouped = json.loads(split.stdout)
    wiki_human = sum(is_held_back(normalize_text(p["human_text"])) for p in pairs)
    wiki_machine = sum(is_held_back(normalize_text(p["machine_text"])) for p in pairs)
    n_human = 98 + wiki_human
    assert (grouped["n_human"], grouped["n_machine"], grouped["excluded_training_texts"]) == \
        (n_human, 100 + wiki_machine, 200 - wiki_human - wiki_machine)
    assert {name: (r["n_human"], r["n_machine"]) for name, r in grouped["by_domain"].items()} == \
        {"alpha": (60, 60), "beta": (38, 38), "wikipedia": (wiki_human, wiki_machine)}
    assert grouped["domains_not_evaluated"] == {"gamma": {"n_human": 0, "n_machine": 2}}
    # a generator's machine texts are measured against every human text
    assert {name: (r["n_human"], r["n_machine"]) for name, r in grouped["by_generator"].items()} == \
        {"gen-a": (n_human, 50), "gen-b": (n_human, 50), "llama-2-70b-chat": (n_human, wiki_machine)}
    sections = {"overall": grouped, **{f"domain {d}": r for d, r in grouped["by_domain"].items()},
                **{f"generator {g}": r for g, r in grouped["by_generator"].items()}}
    for section in sections.values():
        assert_flag_follows_the_numbers(section)

    # The table: one line per domain and generator, a warning exactly where the combination is worse.
    table = format_evaluation(grouped).splitlines()
    for name in [*grouped["by_domain"], *grouped["by_generator"]]:
        assert any(line.startswith(f"{name} ") for line in table)
    assert "domain gamma not evaluated: 0 human, 2 machine texts (needs both)" in table
    warned = [s for s, r in sections.items() if r["combination_worse_than_best_input"]]
    warnings = [line for line in table if line.startswith("WARNING")]
    assert len(warnings) == len(warned) and all(f"({s})" in w for s, w in zip(warned, warnings, strict=True))
    worse = copy.deepcopy(grouped)
    alpha = worse["by_domain"]["alpha"]
    alpha["synthetic_probability"]["auroc"], alpha["combination_worse_than_best_input"] = 0.5, True
    assert f"WARNING: synthetic_probability is worse than its best input {alpha['best_input']} (domain alpha): " \
           f"AUROC 0.500 < {alpha[alpha['best_input']]['auroc']:.3f}" in format_evaluation(worse).splitlines()


def test_expected_calibration_error_matches_brute_force_and_sklearn():
    rng = np.random.default_rng(7)
    n_bins = 10
    # Every bin populated, no probability on an edge: comparable with sklearn's calibration_curve.
    per_bin = np.arange(20, 20 + n_bins)
    probabilities = np.concatenate([rng.uniform(b / n_bins + 1e-3, (b + 1) / n_bins - 1e-3, size=count)
                                    for b, count in enumerate(per_bin)])
    labels = (rng.uniform(size=probabilities.size) < probabilities ** 2).astype(int)  # over-confident
    ece = expected_calibration_error(labels, probabilities, n_bins)
    prob_true, prob_pred = calibration_curve(labels, probabilities, n_bins=n_bins, strategy="uniform")
    assert ece == pytest.approx(np.sum(per_bin / per_bin.sum() * np.abs(prob_true - prob_pred)), abs=1e-12)
    assert ece > 0.05

    def brute_force(labels, probabilities, n_bins):
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        total = 0.0
        for b in range(n_bins):  # (low, high], the first bin also holding 0
            inside = [i for i, p in enumerate(probabilities) if edges[b] < p <= edges[b + 1] or (b == 0 and p == 0)]
            if inside:
                gap = abs(np.mean([probabilities[i] for i in inside]) - np.mean([labels[i] for i in inside]))
                total += len(inside) / len(probabilities) * gap
        return total

    # Empty bins, values on edges, 0 and 1.
    edgy_labels, edgy = [0, 1, 0, 1, 1, 0, 1], [0.0, 0.1, 0.1, 0.5, 0.55, 1.0, 0.95]
    for case in ((labels, probabilities, n_bins), (edgy_labels, edgy, 10), (edgy_labels, edgy, 3)):
        assert expected_calibration_error(*case) == pytest.approx(brute_force(*case), abs=1e-12)
    assert expected_calibration_error([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.0
    assert expected_calibration_error([1, 0, 1], [1.0, 0.0, np.nan]) == 0.0   # NaN left out
    with pytest.raises(ValueError, match="lie in"):
        expected_calibration_error([1], [1.5])


def test_detection_report_names_the_best_input_and_flags_a_worse_combination():
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = pd.DataFrame({"classifier_score": [0.1, 0.2, 0.3, 0.7, 0.8, 0.9],
                           "compression_ratio": [1, 4, 2, 3, 5, 6],
                           "synthetic_probability": [0.1, 0.6, 0.2, 0.5, 0.7, 0.9]})
    report = detection_report(labels, scores)
    assert (report["n_human"], report["n_machine"], report["best_input"]) == (3, 3, "classifier_score")
    assert report["classifier_score"]["auroc"] == 1.0
    assert report["synthetic_probability"]["auroc"] == pytest.approx(8 / 9)
    assert report["combination_worse_than_best_input"] is True
    scores["synthetic_probability"] = scores["classifier_score"]   # a tie is not worse
    assert detection_report(labels, scores)["combination_worse_than_best_input"] is False


@pytest.mark.parametrize("max_training_documents", [20, 400])
def test_declared_sample_capped_in_spark_trains_on_the_texts_the_whole_table_would_give(
        spark, demo, make_config, max_training_documents):
    """training_set collects a bounded sample of silver (declared_sample); the result must equal the
    selection made from every declared-origin document on the driver (as before the cap)."""
    cfg = make_config(f"detect.max_training_documents={max_training_documents}")
    table = silver(spark, demo[0])
    data = training_set(cfg, table)
    rows = (table.where((F.col("provenance_method") == "declared") & F.col("origin").isin("human", "synthetic"))
            .orderBy(F.xxhash64("doc_id"), "doc_id").select("text", "origin").collect())
    pairs_human, pairs_machine = read_pairs(cfg.detect.training_files)
    human = list(dict.fromkeys(pairs_human + [r["text"] for r in rows if r["origin"] == "human"]))
    machine = list(dict.fromkeys(pairs_machine + [r["text"] for r in rows if r["origin"] == "synthetic"]))
    both = set(human) & set(machine)
    human, machine = [t for t in human if t not in both], [t for t in machine if t not in both]
    per_label = max_training_documents // 2
    expected_human = [t for t in human if not is_held_back(t)][:per_label]
    expected_machine = [t for t in machine if not is_held_back(t)][:per_label]
    assert data.texts == expected_human + expected_machine
    assert data.held_back_human == [t for t in human if is_held_back(t)][:HELD_BACK_MAX_PER_LABEL]
    assert data.held_back_machine == [t for t in machine if is_held_back(t)][:HELD_BACK_MAX_PER_LABEL]
    if max_training_documents == 20:  # the cap bites: the driver gets fewer rows than the table has
        assert len(declared_sample(table, per_label, 0)) < len(rows)
