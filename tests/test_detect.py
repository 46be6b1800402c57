"""Tokenizer and detector steps on the demo lake, the registry, the watermark, and eval-detector."""
from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
from click.testing import CliRunner
from pyspark.sql import functions as F
from sklearn.metrics import roc_auc_score

from jobs.cli import cli
from jobs.common import tables
from jobs.detect import is_held_back, load_detector, score
from jobs.tokenizer import load_tokenizer
from tests.conftest import REPO
from udfs.classifier import SCORE_COLUMNS
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


def test_watermarked_text_of_unknown_origin_becomes_synthetic_but_declared_origin_stays(spark, demo):
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
            ("p1", plain, "unknown", None)]
    frame = spark.createDataFrame(rows, "doc_id string, text string, origin string, provenance_method string")
    out = {r["doc_id"]: r for r in score(spark, frame, cfg, tokenizer_bytes).collect()}
    assert out["w1"]["watermark_z"] >= cfg.detect.watermark_z_threshold
    assert (out["w1"]["origin"], out["w1"]["provenance_method"]) == ("synthetic", "watermark")
    assert (out["w2"]["origin"], out["w2"]["provenance_method"]) == ("human", "declared")
    assert out["p1"]["watermark_z"] < 2 and out["p1"]["origin"] == "unknown"


def test_eval_detector_reports_each_detector_cross_domain(tmp_path):
    """Train on Wikipedia only (from config), evaluate on WikiHow: a domain the detector never saw."""
    args = ["eval-detector", "--input", str(M4 / "wikihow_llama2.jsonl"), "--json",
            f"tracking.uri=sqlite:///{tmp_path / 'm.db'}", f"tracking.artifact_root={tmp_path / 'art'}",
            f"detect.training_files=[{M4 / 'wikipedia_llama2.jsonl'}]"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # stdout holds exactly one JSON object
    assert (report["n_human"], report["n_machine"], report["excluded_training_texts"]) == (100, 100, 0)
    for detector in (*SCORE_COLUMNS,):
        assert set(report[detector]) == {"auroc", "tpr_at_fpr_1pct", "tpr_at_fpr_5pct"}
        assert 0 <= report[detector]["tpr_at_fpr_1pct"] <= report[detector]["tpr_at_fpr_5pct"] <= 1
    assert report["synthetic_probability"]["auroc"] >= 0.93

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
