"""Detect: synthetic-text scores for every silver document, from a detector served by MLflow.

The detector (udfs/classifier.py: hashed character n-gram classifier, zero-shot signals,
calibrated stacking) is trained here on labelled data — M4-format pairs from
``detect.training_files`` plus silver documents of declared origin — logged and registered in the
MLflow model registry with an alias, then loaded *by that name and alias* and applied with
``mlflow.pyfunc.spark_udf``. Columns written: ``classifier_score``, ``compression_ratio``,
``ngram_repetition``, ``type_token_ratio``, ``lm_log_likelihood``, ``lm_binoculars``,
``synthetic_probability`` and ``watermark_z``.

Scores, not decisions: only the sampling job applies a threshold to ``synthetic_probability``. The
one exception is the watermark, a hypothesis test with a configured significance: a document of
undeclared origin with ``watermark_z`` at or above ``detect.watermark_z_threshold`` becomes
``synthetic`` with provenance_method ``watermark``. Declared provenance is never overridden.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf

from jobs.common import gates, tables
from jobs.common.config import Config, resolve_conf_path
from jobs.common.errors import InputError
from jobs.common.runner import Step, job_main
from jobs.common.tracking import RunLog, configure
from jobs.tokenizer import load_tokenizer
from udfs.classifier import SCORE_COLUMNS, SPARK_RESULT_TYPE, DetectorBundle, DetectorParams, train_detector
from udfs.text import content_hash, normalize_text
from udfs.tokenizer import cached_tokenizer, train_tokenizer
from udfs.watermark import watermark_z_score

PRODUCED = (*SCORE_COLUMNS, "watermark_z")
TRAINING_HASHES = "detector/training_hashes.json"


def read_pairs(paths: list[str]) -> tuple[list[str], list[str]]:
    """(human texts, machine texts) from M4-format JSONL files, normalised as ingest normalises."""
    human, machine = [], []
    for path in paths:
        resolved = resolve_conf_path(path)
        if not resolved.is_file():
            raise InputError(f"M4-format file not found: {path}")
        with open(resolved, encoding="utf-8") as fh:
            for number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"{path} line {number} is not JSON: {exc}") from None
                for key, bucket in (("human_text", human), ("machine_text", machine)):
                    if isinstance(record.get(key), str) and record[key].strip():
                        bucket.append(normalize_text(record[key]))
    return human, machine


def training_set(cfg: Config, silver: DataFrame | None = None) -> tuple[list[str], list[int]]:
    """Labelled texts (1 = machine): configured pairs, plus declared-origin silver documents, without
    duplicate texts, capped at ``max_training_documents`` (half per label, deterministic)."""
    human, machine = read_pairs(cfg.detect.training_files)
    if silver is not None and cfg.detect.use_declared_origin:
        is_declared = (F.col("provenance_method") == "declared") & F.col("origin").isin("human", "synthetic")
        declared = (silver.where(is_declared)
                    .orderBy(F.xxhash64("doc_id"), "doc_id").select("text", "origin").toPandas())
        human += declared.loc[declared["origin"] == "human", "text"].tolist()
        machine += declared.loc[declared["origin"] == "synthetic", "text"].tolist()
    per_label = cfg.detect.max_training_documents // 2
    human, machine = list(dict.fromkeys(human))[:per_label], list(dict.fromkeys(machine))[:per_label]
    overlap = set(human) & set(machine)
    human = [t for t in human if t not in overlap]
    machine = [t for t in machine if t not in overlap]
    if len(human) < 5 or len(machine) < 5:
        raise InputError(f"too little labelled data to train the detector: {len(human)} human, {len(machine)} "
                         "machine texts; add detect.training_files or documents of declared origin")
    return human + machine, [0] * len(human) + [1] * len(machine)


def train_and_register(cfg: Config, texts: list[str], labels: list[int], tokenizer_bytes: bytes,
                       log: RunLog | None = None) -> str:
    """Train the detector, log it to the active MLflow run, register it and point the alias at it.
    Returns the model URI by name and alias."""
    import mlflow

    from udfs.classifier import log_detector_model

    bundle = train_detector(texts, labels, tokenizer_bytes, params=DetectorParams(seed=cfg.detect.seed))
    info = log_detector_model(bundle, registered_model_name=cfg.detect.registered_model)
    # Hashes of the training texts travel with the model, so evaluation can refuse to score them.
    mlflow.log_dict({"content_hashes": sorted({content_hash(t) for t in texts})}, TRAINING_HASHES)
    mlflow.MlflowClient().set_registered_model_alias(cfg.detect.registered_model, cfg.detect.alias,
                                                     info.registered_model_version)
    if log is not None:
        log.metric("training_documents", len(texts))
        log.metric("training_machine_share", float(np.mean(labels)))
        log.tags({"detector.model_version": info.registered_model_version})
    return model_uri(cfg)


def model_uri(cfg: Config) -> str:
    return f"models:/{cfg.detect.registered_model}@{cfg.detect.alias}"


def load_detector(cfg: Config) -> DetectorBundle:
    """The registered detector (by name and alias) as a bundle, for scoring outside Spark."""
    import mlflow

    configure(cfg)
    model = mlflow.pyfunc.load_model(model_uri(cfg))
    return model.unwrap_python_model().bundle


def watermark_column(text, tokenizer_bytes: bytes, key: str, gamma: float):
    @pandas_udf("double")
    def z_score(texts: pd.Series) -> pd.Series:
        tokenizer = cached_tokenizer(tokenizer_bytes)
        ids = tokenizer.encode_ids(texts.fillna("").tolist())
        return pd.Series(watermark_z_score(ids, key, gamma, tokenizer.vocab_size))

    return z_score(text)


def score(spark: SparkSession, silver: DataFrame, cfg: Config, tokenizer_bytes: bytes) -> DataFrame:
    import mlflow

    detector = mlflow.pyfunc.spark_udf(spark, model_uri(cfg), result_type=SPARK_RESULT_TYPE, env_manager="local")
    d = cfg.detect
    scored = (silver.drop(*[c for c in PRODUCED if c in silver.columns])
              .withColumn("_scores", detector(F.struct("text")))
              .withColumns({c: F.col("_scores")[c] for c in SCORE_COLUMNS}).drop("_scores")
              .withColumn("watermark_z", watermark_column(F.col("text"), tokenizer_bytes, d.watermark_key,
                                                          d.watermark_gamma)))
    watermarked = (F.col("origin") == "unknown") & (F.col("watermark_z") >= d.watermark_z_threshold)
    return scored.withColumns({
        "origin": F.when(watermarked, F.lit("synthetic")).otherwise(F.col("origin")),
        "provenance_method": F.when(watermarked, F.lit("watermark")).otherwise(F.col("provenance_method")),
    })


def run(spark: SparkSession, cfg: Config, log: RunLog) -> dict[str, Any]:
    ref = tables.table_ref(cfg, "silver")
    silver = tables.read_table(spark, ref)
    tokenizer_bytes = load_tokenizer(spark, cfg)
    texts, labels = training_set(cfg, silver)
    train_and_register(cfg, texts, labels, tokenizer_bytes, log)
    gates.publish(cfg, score(spark, silver, cfg, tokenizer_bytes), "silver", "silver_detect", log,
                  lambda df, r: tables.overwrite(df, r, run_id=log.run_id))
    published = tables.read_table(spark, ref)
    by_origin = {r["origin"]: round(r["p"], 3) for r in
                 published.groupBy("origin").agg(F.avg("synthetic_probability").alias("p")).collect()}
    watermarked = published.where(F.col("provenance_method") == "watermark").count()
    log.counts("mean_synthetic_probability", by_origin)
    log.metric("watermarked", watermarked)
    return {"training_documents": len(texts), "mean_synthetic_probability": by_origin, "watermarked": watermarked}


def train_standalone(cfg: Config) -> str:
    """Train and register the detector from ``detect.training_files`` alone (no Spark, no lake):
    the tokenizer is trained on the human texts of those files."""
    from jobs.common.tracking import tracked_run

    with tracked_run(cfg, "train-detector", params={"detect": cfg.detect.model_dump(mode="json"),
                                                    "tokenizer": cfg.tokenizer.model_dump(mode="json")}) as log:
        texts, labels = training_set(cfg)
        human = [t for t, label in zip(texts, labels, strict=True) if label == 0]
        t = cfg.tokenizer
        tokenizer_bytes = train_tokenizer(human, vocab_size=t.vocab_size, model_type=t.model_type, seed=t.seed)
        log.artifact_bytes(tokenizer_bytes, "tokenizer/spm.model")
        return train_and_register(cfg, texts, labels, tokenizer_bytes, log)


def evaluate_files(cfg: Config, paths: list[str]) -> dict[str, Any]:
    """Score M4-format files with the registered detector (training it first from the configured
    training data if none is registered) and measure each detector and the combination. Texts the
    detector was trained on are left out and counted, so the numbers are never in-sample."""
    import mlflow

    from udfs.classifier import evaluate

    configure(cfg)
    client = mlflow.MlflowClient()
    try:
        version = client.get_model_version_by_alias(cfg.detect.registered_model, cfg.detect.alias)
    except mlflow.exceptions.MlflowException:
        train_standalone(cfg)
        version = client.get_model_version_by_alias(cfg.detect.registered_model, cfg.detect.alias)
    trained_on = set(mlflow.artifacts.load_dict(f"runs:/{version.run_id}/{TRAINING_HASHES}")["content_hashes"])
    human, machine = read_pairs(paths)
    kept_human = [t for t in human if content_hash(t) not in trained_on]
    kept_machine = [t for t in machine if content_hash(t) not in trained_on]
    if not kept_human or not kept_machine:
        raise InputError(f"nothing to evaluate: {len(human)} human and {len(machine)} machine texts, of which "
                         f"{len(human) - len(kept_human) + len(machine) - len(kept_machine)} were training data")
    flat = evaluate(load_detector(cfg), kept_human, kept_machine)
    result: dict[str, Any] = {"n_human": flat.pop("n_human"), "n_machine": flat.pop("n_machine"),
                              "excluded_training_texts": len(human) + len(machine) - len(kept_human)
                              - len(kept_machine),
                              "model": f"{cfg.detect.registered_model} version {version.version}"}
    for key, value in flat.items():
        detector, _, metric = key.partition("/")
        if metric in ("auroc", "tpr_at_fpr_1pct", "tpr_at_fpr_5pct"):
            result.setdefault(detector, {})[metric] = value
    return result


STEP = Step(
    name="detect", run=run, inputs=("silver",), outputs=("silver",), config_sections=("detect",),
    help="Train the synthetic-text detector, register it in MLflow, score every silver document with it "
         "(mlflow.pyfunc.spark_udf) and test for the configured watermark.",
)


def main(argv: list[str] | None = None) -> None:
    job_main(STEP, argv)


if __name__ == "__main__":
    main()
