"""Mixture files (``conf/mixtures/*.yaml``, chosen by ``sample.mixture``): what a training mixture holds.

Only the sample step reads them; :func:`load_mixture` validates one with the same key-naming errors as
the pipeline config.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationError, field_validator

from jobs.common.config.hashing import OUTPUT_LOCATION
from jobs.common.config.loading import format_validation_error, read_yaml
from jobs.common.config.settings import Model
from jobs.common.errors import ConfigError

# False-positive rates on the detector's human reference whose thresholds every registered detector version
# carries (model-version tag `fpr_thresholds`, jobs/common/detector_registry.py): the values
# `filters.detector_target_fpr` may take.
FPR_TARGETS = (0.005, 0.01, 0.02, 0.05, 0.1)


class MixtureFilters(Model):
    """Which silver documents a mixture may use. Every exclusion is counted under its reason."""

    exclude_duplicates: bool = Field(True, description="Leave out documents marked as near duplicates "
                                     "(`duplicate_of`) or semantic duplicates (`semantic_duplicate_of`).")
    languages: list[str] | None = Field(None, description="Keep only these detected languages (ISO 639-1); "
                                        "null keeps all.")
    min_language_confidence: float = Field(0.0, ge=0, le=1, description="Minimum language-id confidence.")
    min_words: int = Field(0, ge=0, description="Exclude documents with fewer whitespace words.")
    min_alpha_ratio: float = Field(0.0, ge=0, le=1, description="Exclude documents whose share of alphabetic "
                                   "non-space characters is lower.")
    max_duplicate_line_fraction: float = Field(1.0, ge=0, le=1, description="Exclude documents with a larger "
                                               "share of repeated lines.")
    quality_rules: bool = Field(False, description="Apply the Gopher/C4/FineWeb rules (docs/quality.md) with "
                                "`quality_thresholds`; each failing rule is an exclusion reason.")
    quality_thresholds: dict[str, float | bool | None] = Field(
        default_factory=dict, description="Overrides of the rule thresholds (names in docs/quality.md); null "
        "turns a rule off.")
    max_synthetic_probability: float | None = Field(
        None, ge=0, le=1, description="A fixed detector threshold: a document not declared synthetic whose "
        "`synthetic_probability` reaches this is treated as synthetic (origin decided by `detector`): it counts "
        "against the synthetic cap and must come from a vetted source. 1.0 turns the detector decision off. "
        "Null: the threshold comes from `detector_target_fpr`; set, it overrides that.")
    detector_target_fpr: float = Field(
        0.01, description="Used when `max_synthetic_probability` is null: the threshold is the one at which "
        "this share of the detector's human reference (held-out scores of human training texts) is called "
        "synthetic, read from the registered champion (model-version tag `fpr_thresholds`, written by the "
        "detect step). One of " + ", ".join(map(str, FPR_TARGETS)) + ". The manifest records the value "
        "applied (`detector_threshold`).")
    watermark_z_threshold: float | None = Field(
        4.0, gt=0, description="A document of undeclared origin whose `watermark_z` (detect step) reaches this "
        "is treated as synthetic (origin decided by `watermark`); excluded with the reason `watermark` unless "
        "its source is vetted. 4.0 is a one-sided p of about 3e-5; null turns the test off.")

    @field_validator("detector_target_fpr")
    @classmethod
    def _known_target(cls, value: float) -> float:
        if value not in FPR_TARGETS:
            raise ValueError(f"must be one of {', '.join(map(str, FPR_TARGETS))} (the false-positive rates whose "
                             "thresholds each registered detector carries)")
        return value

    @field_validator("quality_thresholds")
    @classmethod
    def _known_thresholds(cls, value: dict) -> dict:
        from udfs.heuristics import QualityThresholds, UnknownThresholdError

        try:
            QualityThresholds.from_mapping(value)
        except UnknownThresholdError as exc:
            raise ValueError(str(exc)) from None
        return value


class SyntheticValidation(Model):
    """Checks a vetted synthetic source must pass against the human reference set."""

    k: int = Field(3, ge=1, description="Neighbourhood size of the precision/recall manifolds "
                   "(Kynkäänniemi et al., 2019).")
    sample: int = Field(2000, ge=10, description="Documents sampled from each side for the checks.")
    min_precision: float = Field(0.5, ge=0, le=1, description="Share of synthetic documents that must lie in "
                                 "the human manifold (realism).")
    min_recall: float = Field(0.0, ge=0, le=1, description="Share of human documents the synthetic manifold "
                              "must cover (coverage).")
    min_distinct_ratio: float = Field(0.5, ge=0, description="distinct-2 of the synthetic set divided by that of "
                                      "an equal-size human sample must reach this (lexical diversity).")
    max_reference_similarity: float = Field(0.95, gt=0, le=1, description="A synthetic document whose cosine "
                                            "similarity to any reference document reaches this is left out "
                                            "(a near copy of human data adds nothing).")


class RejectionSampling(Model):
    """Best-of-n selection among synthetic documents generated for the same prompt."""

    group_key: str | None = Field(None, description="Column, or `metadata.<key>`, that groups synthetic documents "
                                  "by prompt; null turns rejection sampling off.")
    score_column: str = Field("ngram_repetition", description="Silver column that ranks documents of a group.")
    higher_is_better: bool = Field(False, description="Direction of `score_column`.")
    keep_per_group: int = Field(1, ge=1, description="Best documents kept per group.")
    bar: float | None = Field(None, description="Documents must also score at least this well (null: no bar).")


class SyntheticConfig(Model):
    vetted_sources: list[str] = Field(default_factory=list, description="Sources whose synthetic documents may "
                                      "enter the mixture; synthetic documents of any other source are left out.")
    reference_origins: list[str] = Field(default_factory=lambda: ["human"], description="Origins of the human "
                                         "reference set the synthetic sources are validated against.")
    validation: SyntheticValidation = SyntheticValidation()
    rejection: RejectionSampling = RejectionSampling()


class ExportConfig(Model):
    format: Literal["jsonl", "parquet", "none"] = Field("jsonl", description="Shards for a trainer, or none.")
    shards: int = Field(4, ge=1, description="Number of shard files.")
    dir: str | None = Field(None, description="Shards go to <dir>/<mixture>/<run_id>/; unset: <lake.root>/exports, "
                            "so the shards follow the lake.", json_schema_extra=OUTPUT_LOCATION)
    columns: list[str] = Field(default_factory=lambda: ["doc_id", "text", "source", "origin", "effective_origin",
                                                        "license", "n_tokens", "epoch"],
                               description="Columns written to the shards.")


class MixtureConfig(Model):
    """A training mixture (conf/mixtures/*.yaml)."""

    name: str = Field(description="Mixture name; gold rows and manifests carry it.")
    token_budget: int = Field(gt=0, description="Tokens (`n_tokens`) the mixture should hold.")
    budget_tolerance: float = Field(0.01, ge=0, lt=1, description="Gate: achieved tokens within this relative "
                                    "distance of the budget.")
    seed: int = Field(0, description="Seed of the deterministic selection order hash(doc_id, seed).")
    group_by: Literal["source", "domain"] = Field("source", description="Column the weights refer to.")
    weights: dict[str, float] = Field(description="Group value -> share of the budget (normalised to sum 1).")
    weight_tolerance: float = Field(0.05, ge=0, le=1, description="Gate: each group's achieved share of the "
                                    "mixture within this many share points of its target.")
    max_synthetic_share: float = Field(0.10, ge=0, le=1, description="Most tokens of synthetic origin "
                                       "(declared, watermark or detector), as a share of the budget.")
    max_source_share: float = Field(1.0, gt=0, le=1, description="Most tokens any one source may contribute, as "
                                    "a share of the budget.")
    max_epochs: int = Field(1, ge=1, description="How often a document may repeat (per source default).")
    source_max_epochs: dict[str, int] = Field(default_factory=dict, description="Source -> epochs, overriding "
                                              "`max_epochs` (e.g. up-sample a small archive).")
    cluster_temperature: float = Field(0.5, ge=0, description="Spread of each group's budget over embedding "
                                       "clusters: share proportional to cluster tokens ** temperature "
                                       "(0: uniform, UniMax-style; 1: natural sizes).")
    filters: MixtureFilters = MixtureFilters()
    synthetic: SyntheticConfig = SyntheticConfig()
    export: ExportConfig = ExportConfig()

    @field_validator("weights")
    @classmethod
    def _positive(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in value.items() if v < 0}
        if bad or not value or sum(value.values()) <= 0:
            raise ValueError(f"weights must be non-negative with a positive sum, got {value}")
        return value

    @field_validator("source_max_epochs")
    @classmethod
    def _epochs(cls, value: dict[str, int]) -> dict[str, int]:
        bad = {k: v for k, v in value.items() if v < 1}
        if bad:
            raise ValueError(f"epochs must be >= 1, got {bad}")
        return value

    def epochs(self, source: str) -> int:
        return self.source_max_epochs.get(source, self.max_epochs)


def load_mixture(path: str) -> MixtureConfig:
    try:
        return MixtureConfig.model_validate(read_yaml(path))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, f"mixture {path}")) from None
