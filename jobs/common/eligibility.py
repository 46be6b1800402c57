"""Eligibility: which silver documents a mixture may use, and why each other one is excluded.

The sampling job (jobs/sample.py) is the only step that decides; this module holds the decisions it
applies, as Spark column expressions built from the mixture config:

- the *effective origin* a mixture counts a document as: its declared origin, or ``synthetic`` when
  the watermark test (``filters.watermark_z_threshold``) or the detector says so; declared provenance
  in silver is never rewritten. The detector's bar is a :class:`~jobs.common.detector_registry.DetectorThreshold`
  the sampling job resolves once per run (a fixed ``filters.max_synthetic_probability``, or the registered
  champion's threshold for ``filters.detector_target_fpr``); without one, the mixture's fixed bar applies;
- the exclusion checks in the order they are reported (a document gets the first it fails), each with
  the evidence that excluded it: the value, the threshold and a detail (the duplicate kept instead,
  the language found, the source ...), written one row per excluded document to the exclusions table.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf

from jobs.common import tables
from jobs.common.config import MixtureConfig
from jobs.common.detector_registry import DetectorThreshold, fixed_detector_threshold
from udfs.diversity import distinct_n
from udfs.heuristics import QUALITY_RULES, QualityThresholds
from udfs.mixing import manifold_precision_recall

EVIDENCE_COLUMNS = ("exclusion_value", "exclusion_threshold", "exclusion_detail")


def _detector(mixture: MixtureConfig, threshold: DetectorThreshold | None) -> DetectorThreshold:
    return threshold if threshold is not None else fixed_detector_threshold(mixture)


def with_effective_origin(silver: DataFrame, mixture: MixtureConfig,
                          detector_threshold: DetectorThreshold | None = None) -> DataFrame:
    """``effective_origin`` and ``origin_decided_by``: the origin the mixture counts a document as.

    A document of undeclared origin whose watermark z-score reaches ``filters.watermark_z_threshold`` is
    synthetic (a one-sided hypothesis test: the text was generated with this lake's watermark key);
    then one not declared synthetic whose detector probability reaches ``detector_threshold``."""
    f = mixture.filters
    detector = _detector(mixture, detector_threshold)
    by_watermark = F.lit(False)
    if f.watermark_z_threshold is not None:
        by_watermark = (F.col("origin") == "unknown") & F.coalesce(
            F.col("watermark_z") >= f.watermark_z_threshold, F.lit(False))
    detected = (F.col("synthetic_probability") >= detector.value) if detector.decides else F.lit(False)
    by_detector = (F.col("origin") != "synthetic") & ~by_watermark & detected
    return silver.withColumns({
        "effective_origin": F.when(by_watermark | by_detector, F.lit("synthetic")).otherwise(F.col("origin")),
        "origin_decided_by": F.when(by_watermark, F.lit("watermark")).when(by_detector, F.lit("detector"))
                              .otherwise(F.col("provenance_method")),
    })


def _number(column: str | Column) -> Column:
    return (F.col(column) if isinstance(column, str) else column).cast("double")


def _text(column: str | Column) -> Column:
    return (F.col(column) if isinstance(column, str) else column).cast("string")


@dataclass(frozen=True)
class Exclusion:
    """One reason a mixture excludes a document: the condition, and the evidence written beside it."""
    reason: str
    fails: Column
    value: Column | None = None  # the measured number that failed (double)
    threshold: Column | float | None = None  # the bound it failed (double)
    detail: Column | None = None  # what a number cannot say: the duplicate kept, the language, the source

    def columns(self) -> dict[str, Column]:
        threshold = self.threshold if isinstance(self.threshold, Column) else F.lit(self.threshold)
        return {"exclusion_reason": F.lit(self.reason),
                "exclusion_value": F.lit(None).cast("double") if self.value is None else _number(self.value),
                "exclusion_threshold": threshold.cast("double"),
                "exclusion_detail": F.lit(None).cast("string") if self.detail is None else _text(self.detail)}


def apply_exclusions(frame: DataFrame, checks: list[Exclusion]) -> DataFrame:
    """``exclusion_reason`` and its evidence columns: the first of ``checks`` a row fails (in order),
    else whatever the row had (null before the first call: eligible)."""
    current = {name: F.col(name) if name in frame.columns else F.lit(None).cast(kind) for name, kind in
               (("exclusion_reason", "string"), ("exclusion_value", "double"), ("exclusion_threshold", "double"),
                ("exclusion_detail", "string"))}
    for check in reversed(checks):
        fails = F.coalesce(check.fails, F.lit(False))
        current = {name: F.when(fails, column).otherwise(current[name]) for name, column in check.columns().items()}
    return frame.withColumns(current)


def _rule_fails(rule, threshold) -> Column:
    value = F.col(rule.signal)
    if rule.fails_when == "flag":
        return F.coalesce(value, F.lit(False)) & F.lit(bool(threshold))
    compare = {"<": value < threshold, "<=": value <= threshold, ">": value > threshold,
               ">=": value >= threshold}[rule.fails_when]
    # A missing value (null, or NaN such as the mean word length of no words) never fails a rule,
    # as in udfs.heuristics.failed_quality_rules; Spark would otherwise order NaN above every number.
    return F.when(value.isNull() | F.isnan(value.cast("double")), F.lit(False)).otherwise(compare)


def document_exclusions(mixture: MixtureConfig, columns: list[str],
                        detector_threshold: DetectorThreshold | None = None) -> list[Exclusion]:
    """The per-document checks in the order they are reported; a document gets the first it fails."""
    f = mixture.filters
    detector = _detector(mixture, detector_threshold)
    checks: list[Exclusion] = []
    if f.exclude_duplicates:
        checks += [Exclusion(reason, F.col(column).isNotNull(), detail=F.col(column)) for reason, column in
                   (("near_duplicate", "duplicate_of"), ("semantic_duplicate", "semantic_duplicate_of"))
                   if column in columns]
    if f.languages is not None:
        checks.append(Exclusion("language", ~F.coalesce(F.col("detected_language").isin(f.languages), F.lit(False)),
                                value="language_confidence", detail=F.col("detected_language")))
    if f.min_language_confidence > 0:
        confidence = F.coalesce(F.col("language_confidence"), F.lit(0.0))
        checks.append(Exclusion("language_confidence", confidence < f.min_language_confidence, value=confidence,
                                threshold=f.min_language_confidence, detail=F.col("detected_language")))
    checks += [Exclusion("min_words", F.col("n_words") < f.min_words, value="n_words", threshold=f.min_words),
               Exclusion("min_alpha_ratio", F.col("alpha_ratio") < f.min_alpha_ratio, value="alpha_ratio",
                         threshold=f.min_alpha_ratio),
               Exclusion("max_duplicate_line_fraction",
                         F.col("duplicate_line_fraction") > f.max_duplicate_line_fraction,
                         value="duplicate_line_fraction", threshold=f.max_duplicate_line_fraction)]
    if f.quality_rules:
        thresholds = QualityThresholds.from_mapping(f.quality_thresholds)
        for rule in QUALITY_RULES:
            threshold = getattr(thresholds, rule.threshold)
            if threshold is not None:
                checks.append(Exclusion(f"quality:{rule.name}", _rule_fails(rule, threshold), value=rule.signal,
                                        threshold=float(threshold), detail=F.lit(rule.signal)))
    synthetic = F.col("effective_origin") == "synthetic"
    vetted = mixture.synthetic.vetted_sources
    unvetted = (synthetic & ~F.col("source").isin(vetted)) if vetted else synthetic
    if f.watermark_z_threshold is not None:
        checks.append(Exclusion("watermark", unvetted & (F.col("origin_decided_by") == "watermark"),
                                value="watermark_z", threshold=f.watermark_z_threshold, detail=F.col("source")))
    by_detector = F.col("origin_decided_by") == "detector"
    checks.append(Exclusion("synthetic_not_vetted", unvetted,
                            value=F.when(by_detector, F.col("synthetic_probability")) if "synthetic_probability"
                            in columns else None,
                            threshold=F.when(by_detector, F.lit(detector.value)),
                            detail=F.col("origin_decided_by")))
    checks.append(Exclusion("group_without_weight", ~F.col(mixture.group_by).isin(list(mixture.weights)),
                            detail=F.col(mixture.group_by)))
    return checks


def required_columns(mixture: MixtureConfig, detector_threshold: DetectorThreshold | None = None) -> list[str]:
    needed = ["doc_id", "text", "origin", "provenance_method", "pre_ai_archive", "source", mixture.group_by,
              "n_tokens", "n_words", "alpha_ratio", "duplicate_line_fraction"]
    f = mixture.filters
    if f.languages is not None or f.min_language_confidence > 0:
        needed += ["detected_language", "language_confidence"]
    if f.quality_rules:
        thresholds = QualityThresholds.from_mapping(f.quality_thresholds)
        needed += sorted({r.signal for r in QUALITY_RULES if getattr(thresholds, r.threshold) is not None})
    if _detector(mixture, detector_threshold).decides:
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


def eligibility(silver: DataFrame, mixture: MixtureConfig,
                detector_threshold: DetectorThreshold | None = None) -> tuple[DataFrame, dict[str, dict]]:
    """Silver with ``exclusion_reason`` (null: eligible) and its evidence (:data:`EVIDENCE_COLUMNS`),
    and the synthetic-source validation reports. ``detector_threshold``: the run's resolved bar
    (:func:`~jobs.common.detector_registry.resolve_detector_threshold`); None: the mixture's fixed one."""
    detector = _detector(mixture, detector_threshold)
    tables.require_columns(silver, required_columns(mixture, detector), "silver table (for this mixture)")
    frame = apply_exclusions(with_effective_origin(silver, mixture, detector),
                             document_exclusions(mixture, silver.columns, detector))
    reports: dict[str, dict] = {}
    synthetic = F.col("exclusion_reason").isNull() & (F.col("effective_origin") == "synthetic")
    if mixture.synthetic.vetted_sources:
        v = mixture.synthetic.validation
        reports, reference = validate_synthetic_sources(frame.where(F.col("exclusion_reason").isNull()), mixture)
        failed = [s for s, r in reports.items() if not r["passed"]]
        checks = [Exclusion("synthetic_failed_validation", synthetic & F.col("source").isin(failed),
                            detail=F.col("source"))]
        if reference.size:
            frame = frame.withColumn("_reference_similarity", max_reference_similarity(reference))
            checks.append(Exclusion("synthetic_copies_reference",
                                    synthetic & (F.col("_reference_similarity") >= v.max_reference_similarity),
                                    value=F.col("_reference_similarity"), threshold=v.max_reference_similarity,
                                    detail=F.col("source")))
        # In this order: a document of a failed source is reported as such, not as a copy.
        frame = apply_exclusions(frame, checks).drop("_reference_similarity")
    r = mixture.synthetic.rejection
    if r.group_key:
        frame = apply_exclusions(frame, [Exclusion("rejected_by_prompt", rejection_losers(mixture),
                                                   value=F.col(r.score_column), threshold=r.bar,
                                                   detail=_group_key(r.group_key))])
    return frame, reports


def exclusion_rows(judged: DataFrame, mixture: str, run_id: str) -> DataFrame:
    """One row per excluded document: why it is not in ``mixture`` (the exclusions table)."""
    return (judged.where(F.col("exclusion_reason").isNotNull())
            .select("doc_id", F.lit(mixture).alias("mixture"), F.lit(run_id).alias("run_id"), "source",
                    "effective_origin", F.col("exclusion_reason").alias("reason"),
                    F.col("exclusion_value").alias("value"), F.col("exclusion_threshold").alias("threshold"),
                    F.col("exclusion_detail").alias("detail")))
