"""Detect: synthetic-text scores for every silver document, from a detector served by MLflow.

The detector (udfs/classifier.py: hashed character n-gram classifier, zero-shot signals,
calibrated stacking) is trained here on labelled data — M4-format pairs from
``detect.training_files`` plus silver documents of declared origin — logged and registered in the
MLflow model registry, then loaded *by name and alias* and applied as a pandas UDF that carries the
loaded bundle (:func:`detector_column`; ``mlflow.pyfunc.spark_udf`` serves the same model, 2x slower).
The alias (``detect.alias``, ``champion``) moves to the new version only if it scores at least as well
as the current champion on the held-back evaluation: labelled texts whose content hash falls in a fixed
fifth, which no version of the detector ever trains on. The comparison is logged with the run.
Columns written: ``classifier_score``, ``compression_ratio``, ``ngram_repetition``,
``type_token_ratio``, ``lm_log_likelihood``, ``lm_binoculars``, ``synthetic_probability`` and
``watermark_z``.

Scores, not decisions: silver's ``origin`` and ``provenance_method`` stay as declared (or inferred at
ingest). Only the sampling job applies thresholds, to ``synthetic_probability`` and to ``watermark_z``
(a hypothesis test: ``filters.watermark_z_threshold`` of the mixture), so raising a threshold takes
effect at the next sample without rescoring (jobs/common/eligibility.py).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf

from jobs.common import gates, tables, tokenizer_model
from jobs.common.config import FPR_TARGETS, Config
from jobs.common.detector_model import SPARK_RESULT_TYPE, load_detector_bundle
from jobs.common.detector_registry import FPR_THRESHOLDS_TAG, current_champion
from jobs.common.errors import InputError
from jobs.common.labelled import LabelledText, domain_name, read_labelled
from jobs.common.runner import Step, job_main
from jobs.common.tokenizer_model import load_tokenizer
from jobs.common.tracking import RunLog, configure
from udfs.classifier import (
    SCORE_COLUMNS,
    DetectorBundle,
    DetectorParams,
    DetectorTrainingError,
    cached_bundle,
    detection_report,
    evaluate,
    train_detector,
)
from udfs.text import content_hash
from udfs.tokenizer import cached_tokenizer, train_tokenizer
from udfs.watermark import watermark_z_score

PRODUCED = (*SCORE_COLUMNS, "watermark_z")
TRAINING_HASHES = "detector/training_hashes.json"
CHAMPION_COMPARISON = "detector/champion_comparison.json"
# The held-back evaluation: a text is held back when its content hash falls in bucket 0 of 5. The split
# depends on the text alone, so it is the same in every run and for every version of the detector.
HELD_BACK_BUCKETS = 5
HELD_BACK_MIN_PER_LABEL = 5
HELD_BACK_MAX_PER_LABEL = 2000  # bounds the scoring on the driver; the first ones in a deterministic order
# The alias follows the combined score's AUROC; TPR at 1 % FPR is logged but too coarse on a few hundred
# texts to decide on.
DECISION_METRIC = "synthetic_probability/auroc"


def is_held_back(text: str) -> bool:
    return int(content_hash(text)[:8], 16) % HELD_BACK_BUCKETS == 0


def declared_sample(silver: DataFrame, per_label: int, pair_texts: int) -> pd.DataFrame:
    """(text, origin, domain) of the declared-origin silver documents training can use, in training order
    (hash of doc_id), capped in Spark: per label, the first ``per_label`` outside the held-back fifth and
    the first HELD_BACK_MAX_PER_LABEL inside it, plus ``pair_texts`` of each (as many as the configured
    pairs could remove as duplicates or conflicts), so the driver receives a bounded sample and
    :func:`training_set` takes exactly the texts it would take from the whole table. A silver doc_id is
    the content hash of its text, so :func:`is_held_back` is computed from it here. The domain is the
    document's ``domain``, else its source's name."""
    is_declared = (F.col("provenance_method") == "declared") & F.col("origin").isin("human", "synthetic")
    order = [F.xxhash64("doc_id"), F.col("doc_id")]
    held = (F.conv(F.substring("doc_id", 1, 8), 16, 10).cast("long") % HELD_BACK_BUCKETS) == 0
    rank = F.row_number().over(Window.partitionBy("origin", "_held").orderBy(*order))
    cap = F.when(F.col("_held"), F.lit(HELD_BACK_MAX_PER_LABEL)).otherwise(F.lit(per_label)) + pair_texts
    domain = F.coalesce(F.col("domain"), F.col("source")).alias("domain")
    return (silver.where(is_declared).select("doc_id", "text", "origin", domain).withColumn("_held", held)
            .withColumn("_rank", rank).where(F.col("_rank") <= cap)
            .orderBy(*order).select("text", "origin", "domain").toPandas())


@dataclass(frozen=True)
class LabelledData:
    """Training texts, labels (1 = machine) and domains, and the held-back texts no detector trains on."""

    texts: list[str]
    labels: list[int]
    held_back_human: list[str]
    held_back_machine: list[str]
    domains: list[str] | None = None


def training_set(cfg: Config, silver: DataFrame | None = None) -> LabelledData:
    """Labelled texts: configured pairs, plus declared-origin silver documents, without duplicate texts
    (a text keeps the domain of its first occurrence, the pairs' first); the held-back fifth set aside,
    the rest capped at ``max_training_documents`` (half per label, deterministic)."""
    labelled = read_labelled(cfg.detect.training_files)
    per_label = cfg.detect.max_training_documents // 2
    if silver is not None and cfg.detect.use_declared_origin:
        declared = declared_sample(silver, per_label, len(labelled))
        labelled += [LabelledText(row.text, int(row.origin == "synthetic"), domain_name(row.domain, "unknown"), None)
                     for row in declared.itertuples(index=False)]
    human: dict[str, str] = {}
    machine: dict[str, str] = {}
    for item in labelled:
        (machine if item.label else human).setdefault(item.text, item.domain)
    overlap = human.keys() & machine.keys()
    human = {t: d for t, d in human.items() if t not in overlap}
    machine = {t: d for t, d in machine.items() if t not in overlap}
    held_human = [t for t in human if is_held_back(t)][:HELD_BACK_MAX_PER_LABEL]
    held_machine = [t for t in machine if is_held_back(t)][:HELD_BACK_MAX_PER_LABEL]
    train_human = [t for t in human if not is_held_back(t)][:per_label]
    train_machine = [t for t in machine if not is_held_back(t)][:per_label]
    if len(train_human) < 5 or len(train_machine) < 5:
        raise InputError(f"too little labelled data to train the detector: {len(train_human)} human, "
                         f"{len(train_machine)} machine texts; add detect.training_files or documents of "
                         "declared origin")
    if min(len(held_human), len(held_machine)) < HELD_BACK_MIN_PER_LABEL:
        raise InputError(f"too little labelled data to hold back an evaluation set: {len(held_human)} human and "
                         f"{len(held_machine)} machine texts fall in the held-back fifth (at least "
                         f"{HELD_BACK_MIN_PER_LABEL} of each are needed); add detect.training_files or documents "
                         "of declared origin")
    domain_of = {**human, **machine}
    texts = train_human + train_machine
    return LabelledData(texts, [0] * len(train_human) + [1] * len(train_machine), held_human, held_machine,
                        [domain_of[t] for t in texts])


def _training_hashes(run_id: str) -> set[str]:
    """Content hashes of the texts the detector logged by ``run_id`` was trained on."""
    import mlflow

    return set(mlflow.artifacts.load_dict(f"runs:/{run_id}/{TRAINING_HASHES}")["content_hashes"])


def _held_back_metrics(bundle: DetectorBundle, human: list[str], machine: list[str]) -> dict[str, float]:
    flat = evaluate(bundle, human, machine)
    column = DECISION_METRIC.partition("/")[0]
    return {metric: flat[f"{column}/{metric}"] for metric in ("auroc", "tpr_at_fpr_1pct", "tpr_at_fpr_5pct")}


def compare_with_champion(cfg: Config, candidate: DetectorBundle, data: LabelledData) -> dict[str, Any]:
    """Score the candidate and the current champion on the held-back texts (less any the champion was
    trained on) and decide whether the alias moves: it does when there is no champion yet, or when the
    candidate's AUROC is at least the champion's."""
    champion = current_champion(cfg)
    trained_on = _training_hashes(champion.run_id) if champion is not None else set()
    human = [t for t in data.held_back_human if content_hash(t) not in trained_on]
    machine = [t for t in data.held_back_machine if content_hash(t) not in trained_on]
    comparison: dict[str, Any] = {
        "metric": DECISION_METRIC, "alias": cfg.detect.alias, "n_human": len(human), "n_machine": len(machine),
        "champion_version": None if champion is None else int(champion.version),
        "candidate": _held_back_metrics(candidate, human, machine) if human and machine else None,
        "champion": None,
    }
    if champion is None:
        comparison.update(moves=True, reason="first registration")
        return comparison
    if comparison["candidate"] is None:
        comparison.update(moves=True, reason=f"version {champion.version} was trained on the held-back texts")
        return comparison
    try:
        bundle = load_detector_bundle(f"models:/{cfg.detect.registered_model}/{champion.version}")
    except DetectorTrainingError as exc:  # a bundle format or wrapper class this code no longer reads
        comparison.update(moves=True, reason=f"version {champion.version} cannot be loaded: {exc}")
        return comparison
    if FPR_THRESHOLDS_TAG not in (champion.tags or {}):  # registered before thresholds: mixtures cannot use it
        comparison.update(moves=True, reason=f"version {champion.version} carries no false-positive-rate thresholds")
        return comparison
    comparison["champion"] = _held_back_metrics(bundle, human, machine)
    new, old = comparison["candidate"]["auroc"], comparison["champion"]["auroc"]
    comparison.update(moves=new >= old, reason=f"held-back AUROC {new:.4f} {'>=' if new >= old else '<'} "
                                               f"{old:.4f} of version {champion.version}")
    return comparison


def _log_comparison(log: RunLog, comparison: dict[str, Any]) -> None:
    log.metric("held_back.n_human", comparison["n_human"])
    log.metric("held_back.n_machine", comparison["n_machine"])
    for role in ("candidate", "champion"):
        for metric, value in (comparison[role] or {}).items():
            log.metric(f"held_back.{role}.{metric}", value)
    log.tags({"detector.model_version": comparison["candidate_version"],
              "detector.champion_version": comparison["champion_version"] or "none",
              "detector.alias_moved": str(comparison["moves"]).lower(),
              "detector.alias_version": comparison["alias_version"],
              "detector.alias_decision": comparison["decision"]})
    log.artifact_json(comparison, CHAMPION_COMPARISON)


def train_and_register(cfg: Config, data: LabelledData, tokenizer_bytes: bytes, log: RunLog) -> dict[str, Any]:
    """Train the detector, log it to the active MLflow run and register it; the alias moves to the new
    version only if it does at least as well as the champion on the held-back texts (the first version
    always takes it). Returns the comparison, with ``decision`` saying where the alias points."""
    import mlflow

    from jobs.common.detector_model import log_detector_model

    bundle = train_detector(data.texts, data.labels, tokenizer_bytes, params=DetectorParams(seed=cfg.detect.seed),
                            domains=data.domains, processes=cfg.detect.training_processes)
    comparison = compare_with_champion(cfg, bundle, data)
    info = log_detector_model(bundle, registered_model_name=cfg.detect.registered_model)
    # Hashes of the training texts travel with the model, so evaluation can refuse to score them.
    mlflow.log_dict({"content_hashes": sorted({content_hash(t) for t in data.texts})}, TRAINING_HASHES)
    name, alias, version = cfg.detect.registered_model, cfg.detect.alias, int(info.registered_model_version)
    client = mlflow.MlflowClient()
    if comparison["moves"]:
        client.set_registered_model_alias(name, alias, version)
    alias_version = version if comparison["moves"] else comparison["champion_version"]
    verb = "->" if comparison["moves"] else "stays on"
    comparison.update(candidate_version=version, alias_version=alias_version,
                      decision=f"{alias} {verb} version {alias_version} ({comparison['reason']})")
    if comparison["candidate"] is not None:
        client.set_model_version_tag(name, str(version), "held_back_auroc", f"{comparison['candidate']['auroc']:.4f}")
    client.set_model_version_tag(name, str(version), "alias_decision", comparison["decision"])
    # The sampling job reads these to turn a target false-positive rate into a threshold (eligibility).
    client.set_model_version_tag(name, str(version), FPR_THRESHOLDS_TAG, json.dumps(fpr_thresholds(bundle)))
    summary = bundle.training_summary
    log.params({"detector.calibration": summary["calibration"],
                "detector.calibration_domains": ",".join(summary["calibration_domains"]) or "none",
                "detector.stacked_signals": ",".join(bundle.params.stack_signals) or "none",
                "detector.stacker_c": summary["stacker_c"]})
    for domain, aurocs in summary["domain_auroc"].items():
        for column, value in aurocs.items():
            log.metric(f"left_out.{domain}.{column}.auroc", value)
    log.metric("training_documents", len(data.texts))
    log.metric("training_machine_share", float(np.mean(data.labels)))
    _log_comparison(log, comparison)
    return comparison


def fpr_thresholds(bundle: DetectorBundle) -> dict[str, float]:
    """``synthetic_probability`` thresholds at the false-positive rates of :data:`FPR_TARGETS` on the
    detector's human reference (keys as strings: ``"0.01"``)."""
    return {str(rate): bundle.threshold_at_fpr(rate) for rate in FPR_TARGETS}


def model_uri(cfg: Config) -> str:
    return f"models:/{cfg.detect.registered_model}@{cfg.detect.alias}"


def load_detector(cfg: Config) -> DetectorBundle:
    """The registered detector (by name and alias) as a bundle, for scoring outside Spark."""
    configure(cfg)
    return load_detector_bundle(model_uri(cfg))


@dataclass(frozen=True)
class WatermarkTest:
    """The watermark's z-test (udfs/watermark.py) with the pipeline's tokenizer."""
    tokenizer_bytes: bytes
    key: str
    gamma: float


def detector_column(text, bundle: DetectorBundle, watermark: WatermarkTest | None = None):
    """The detector's :data:`SCORE_COLUMNS` for ``text`` as a struct column, and ``watermark_z`` when
    ``watermark`` is given.

    Not ``mlflow.pyfunc.spark_udf``: on the demo's 8 partitions it took 7-10 s a pass where this took
    3-4 s, and ~0.4 s more a task at 7k documents (docs/performance.md). The bundle travels in the UDF's
    closure (PySpark broadcasts a command over 1 MB) and is unpickled once per Python worker.

    One UDF for both: the watermark tests the ids of the text as stored, and silver's texts are stored
    normalised (ingest), so when the detector's tokenizer is the pipeline's the ids its language model
    needed are those ids: one sentencepiece pass a document instead of two (~0.1 ms). A text that
    normalising would change, or a champion trained with another tokenizer, is encoded again."""
    bundle_bytes = bundle.to_bytes()
    result_type = SPARK_RESULT_TYPE + (", watermark_z double" if watermark else "")
    # Plain values in the closure, not the dataclass: workers then need only udfs/ to unpickle it.
    test = (watermark.tokenizer_bytes, watermark.key, watermark.gamma) if watermark else None
    shared = watermark is not None and bundle.tokenizer.to_bytes() == watermark.tokenizer_bytes

    @pandas_udf(result_type)
    def scores(texts: pd.Series) -> pd.DataFrame:
        raw = texts.fillna("").tolist()
        frame, prepared, ids = cached_bundle(bundle_bytes).score_and_encode(raw)
        frame = frame.reset_index(drop=True)
        if test is not None:
            tokenizer_bytes, key, gamma = test
            tokenizer = cached_tokenizer(tokenizer_bytes)
            if shared and ids is not None:
                stale = [i for i, (r, p) in enumerate(zip(raw, prepared, strict=True)) if r != p]
                for i, encoded in zip(stale, tokenizer.encode_ids([raw[i] for i in stale]), strict=True):
                    ids[i] = encoded
            else:
                ids = tokenizer.encode_ids(raw)
            frame["watermark_z"] = watermark_z_score(ids, key, gamma, tokenizer.vocab_size)
        return frame

    return scores(text)


def score(silver: DataFrame, cfg: Config, tokenizer_bytes: bytes) -> DataFrame:
    """``silver`` with the scores of the registered detector (loaded from MLflow by name and alias) and
    the watermark's z-score."""
    bundle = load_detector_bundle(model_uri(cfg))
    d = cfg.detect
    # Evidence only: declared provenance stays as declared; the sampling job applies the watermark
    # threshold (filters.watermark_z_threshold), so changing it never needs this step to run again.
    # Lakes written by 0.1.0 let this step rewrite undeclared origin to synthetic (provenance_method
    # `watermark`); such rows get their ingest provenance back (undeclared: unknown, no method).
    rewritten = F.coalesce(F.col("provenance_method") == "watermark", F.lit(False))
    return (silver.drop(*[c for c in PRODUCED if c in silver.columns])
            .withColumns({"origin": F.when(rewritten, F.lit("unknown")).otherwise(F.col("origin")),
                          "provenance_method": F.when(rewritten, F.lit(None).cast("string"))
                          .otherwise(F.col("provenance_method"))})
            .withColumn("_scores", detector_column(F.col("text"), bundle,
                                                   WatermarkTest(tokenizer_bytes, d.watermark_key, d.watermark_gamma)))
            .withColumns({c: F.col("_scores")[c] for c in PRODUCED}).drop("_scores"))


def run(spark: SparkSession, cfg: Config, log: RunLog) -> dict[str, Any]:
    ref = tables.table_ref(cfg, "silver")
    silver = tables.read_table(spark, ref)
    tokenizer_bytes = load_tokenizer(spark, cfg)
    data = training_set(cfg, silver)
    comparison = train_and_register(cfg, data, tokenizer_bytes, log)
    gates.publish(cfg, score(silver, cfg, tokenizer_bytes), "silver", "silver_detect", log,
                  lambda df, r: tables.overwrite(df, r, run_id=log.run_id))
    by_origin = {r["origin"]: (round(r["p"], 3), r["z"]) for r in tables.read_table(spark, ref).groupBy("origin")
                 .agg(F.avg("synthetic_probability").alias("p"), F.max("watermark_z").alias("z")).collect()}
    mean_probability = {origin: p for origin, (p, _) in by_origin.items()}
    max_z = {origin: round(z, 2) for origin, (_, z) in by_origin.items() if z is not None}
    log.counts("mean_synthetic_probability", mean_probability)
    log.counts("max_watermark_z", max_z)
    held_back = comparison["n_human"] + comparison["n_machine"]
    return {"training_documents": len(data.texts), "held_back_documents": held_back, "detector": comparison["decision"],
            "mean_synthetic_probability": mean_probability, "max_watermark_z": max_z}


def train_standalone(cfg: Config) -> str:
    """Train and register the detector from ``detect.training_files`` alone (no Spark, no lake):
    the tokenizer is trained on the human training texts of those files. Returns what happened to the
    alias, in words."""
    from jobs.common.tracking import tracked_run

    with tracked_run(cfg, "train-detector", params={"detect": cfg.detect.model_dump(mode="json"),
                                                    "tokenizer": cfg.tokenizer.model_dump(mode="json")}) as log:
        data = training_set(cfg)
        human = [t for t, label in zip(data.texts, data.labels, strict=True) if label == 0]
        t = cfg.tokenizer
        tokenizer_bytes = train_tokenizer(human, vocab_size=t.vocab_size, model_type=t.model_type, seed=t.seed)
        log.artifact_bytes(tokenizer_bytes, tokenizer_model.ARTIFACT)
        comparison = train_and_register(cfg, data, tokenizer_bytes, log)
        return f"{cfg.detect.registered_model} version {comparison['candidate_version']}; {comparison['decision']}"


def evaluate_files(cfg: Config, paths: list[str]) -> dict[str, Any]:
    """Score M4-format files with the registered detector (training it first from the configured
    training data if none is registered) and measure each detector and the combination
    (:func:`udfs.classifier.detection_report`: AUROC, TPR at 1 % and 5 % FPR, the combination's Brier
    score and ECE, its best single input and whether the combination does worse than it). Texts the
    detector was trained on are left out and counted, so the numbers are never in-sample.

    Besides the overall numbers: ``by_domain``, the same report for each domain (:func:`read_labelled`)
    that has human and machine texts, on its own texts (``domains_not_evaluated`` counts the others);
    ``by_generator``, for each named generator, its machine texts against *all* human texts: M4 names a
    generator for machine texts only, so there are no human texts of a generator to compare with."""
    configure(cfg)
    version = current_champion(cfg)
    if version is None:
        train_standalone(cfg)
        version = current_champion(cfg)
    trained_on = _training_hashes(version.run_id)
    labelled = read_labelled(paths)
    kept = [t for t in labelled if content_hash(t.text) not in trained_on]
    labels = np.array([t.label for t in kept], dtype=np.int64)
    if not np.any(labels == 0) or not np.any(labels == 1):
        n_human = sum(t.label == 0 for t in labelled)
        raise InputError(f"nothing to evaluate: {n_human} human and {len(labelled) - n_human} machine texts, of "
                         f"which {len(labelled) - len(kept)} were training data")
    bundle = load_detector(cfg)
    oriented = bundle.oriented(bundle.score([t.text for t in kept]))
    overall = detection_report(labels, oriented)
    result: dict[str, Any] = {"n_human": overall.pop("n_human"), "n_machine": overall.pop("n_machine"),
                              "excluded_training_texts": len(labelled) - len(kept),
                              "model": f"{cfg.detect.registered_model} version {version.version}", **overall}
    domains = np.array([t.domain for t in kept], dtype=object)
    result["by_domain"], result["domains_not_evaluated"] = {}, {}
    for domain in sorted(set(domains.tolist())):
        rows = domains == domain
        n_human, n_machine = int(np.sum(labels[rows] == 0)), int(np.sum(labels[rows] == 1))
        if n_human and n_machine:
            result["by_domain"][domain] = detection_report(labels[rows], oriented.loc[rows])
        else:
            result["domains_not_evaluated"][domain] = {"n_human": n_human, "n_machine": n_machine}
    generators = np.array([t.generator for t in kept], dtype=object)
    result["by_generator"] = {}
    for generator in sorted({t.generator for t in kept if t.generator is not None}):
        rows = (labels == 0) | (generators == generator)
        result["by_generator"][generator] = detection_report(labels[rows], oriented.loc[rows])
    return result


STEP = Step(
    name="detect", run=run, inputs=("silver",), outputs=("silver",), config_sections=("detect",),
    help="Train the synthetic-text detector, register it in MLflow, score every silver document with it "
         "(loaded by name and alias) and test for the configured watermark.",
)


def main(argv: list[str] | None = None) -> None:
    from jobs.pipeline import STEPS  # the entry point learns the pipeline order from the registry

    job_main(STEP, argv, STEPS)


if __name__ == "__main__":
    main()
