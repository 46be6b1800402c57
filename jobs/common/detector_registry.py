"""The registered detector as the sampling job sees it: the version the alias points at, and the
``synthetic_probability`` threshold a mixture applies.

Each detector version that detect registers carries the model-version tag :data:`FPR_THRESHOLDS_TAG`: a
JSON object mapping false-positive rates on the detector's human reference (held-out scores of human
training texts), written as strings (``"0.01"``, one per :data:`jobs.common.config.FPR_TARGETS`), to
thresholds: a document scoring at least the threshold is called synthetic, and at most that share of the
human reference is.
A mixture either fixes the threshold (``filters.max_synthetic_probability``) or names a target rate
(``filters.detector_target_fpr``); :func:`resolve_detector_threshold` turns that into one number per
sample run, which eligibility applies and the manifest records with where it came from.

MLflow is imported inside functions, so that importing this module stays cheap.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from jobs.common.config import Config, MixtureConfig
from jobs.common.errors import CleanwellError

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

# The model-version tag: JSON {rate as a string, one per jobs.common.config.FPR_TARGETS: threshold}.
FPR_THRESHOLDS_TAG = "fpr_thresholds"


class DetectorThresholdError(CleanwellError):
    """The mixture asks for a target false-positive rate and the registry cannot give its threshold."""


@dataclass(frozen=True)
class DetectorThreshold:
    """The ``synthetic_probability`` bar of one sample run, and where it came from (the manifest's
    ``detector_threshold``)."""

    value: float
    source: Literal["fixed", "target_fpr"]
    target_fpr: float | None = None  # the rate on the human reference (source `target_fpr`)
    model_version: int | None = None  # the registered version whose tag gave the value (source `target_fpr`)

    @property
    def decides(self) -> bool:
        """Whether the detector decides any origin: a fixed 1.0 turns it off. A threshold read from the
        registry always applies (it may be exactly 1.0, and a saturated score reaches it)."""
        return self.source == "target_fpr" or self.value < 1.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def current_champion(cfg: Config) -> ModelVersion | None:
    """The detector version ``detect.alias`` points at, or None when the model or the alias does not
    exist yet. MLflow must be configured for ``cfg`` (every step run is)."""
    import mlflow

    try:
        return mlflow.MlflowClient().get_model_version_by_alias(cfg.detect.registered_model, cfg.detect.alias)
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
            return None
        raise


def read_fpr_thresholds(version: ModelVersion) -> dict[str, float]:
    """The version's :data:`FPR_THRESHOLDS_TAG`: target rate (as written, ``"0.01"``) -> threshold.

    Raises :class:`DetectorThresholdError` when the tag is missing (a version registered by an older
    cleanwell) or is not a JSON object of numbers."""
    where = f"detector {version.name} version {version.version}"
    text = (version.tags or {}).get(FPR_THRESHOLDS_TAG)
    if text is None:
        raise DetectorThresholdError(
            f"{where} has no `{FPR_THRESHOLDS_TAG}` tag (it was registered by an older version of cleanwell), so "
            "the mixture's `filters.detector_target_fpr` has no threshold; rerun the detect step so that a new "
            "version carrying the thresholds holds the alias, or set `filters.max_synthetic_probability` in the "
            "mixture")
    try:
        thresholds = json.loads(text)
        if not isinstance(thresholds, dict):
            raise ValueError("not a JSON object")
        return {str(rate): float(value) for rate, value in thresholds.items()}
    except (ValueError, TypeError) as exc:
        raise DetectorThresholdError(f"{where}: tag `{FPR_THRESHOLDS_TAG}` is not a JSON object of rate -> "
                                     f"threshold ({exc}): {text[:200]!r}") from None


def resolve_detector_threshold(cfg: Config, mixture: MixtureConfig) -> DetectorThreshold:
    """The bar of this sample run: ``filters.max_synthetic_probability`` when the mixture sets it, else
    the champion's threshold for ``filters.detector_target_fpr`` (read from the registry once, so the
    whole run applies one number even if the alias moves meanwhile)."""
    f = mixture.filters
    if f.max_synthetic_probability is not None:
        return DetectorThreshold(f.max_synthetic_probability, "fixed")
    name, alias = cfg.detect.registered_model, cfg.detect.alias
    version = current_champion(cfg)
    if version is None:
        raise DetectorThresholdError(
            f"mixture {mixture.name}: no detector is registered as {name}@{alias}, so "
            f"`filters.detector_target_fpr` ({f.detector_target_fpr}) has no threshold; run the detect step "
            "first, or set `filters.max_synthetic_probability` in the mixture")
    thresholds = read_fpr_thresholds(version)
    key = str(f.detector_target_fpr)
    value = thresholds.get(key)
    if value is None or not math.isfinite(value):
        raise DetectorThresholdError(
            f"detector {name} version {version.version} has no finite threshold for the target false-positive "
            f"rate {key} (tag `{FPR_THRESHOLDS_TAG}` holds {', '.join(sorted(thresholds)) or 'none'}); choose one of "
            "those as `filters.detector_target_fpr`, rerun the detect step, or set "
            "`filters.max_synthetic_probability`")
    return DetectorThreshold(value, "target_fpr", f.detector_target_fpr, int(version.version))


def fixed_detector_threshold(mixture: MixtureConfig) -> DetectorThreshold:
    """The mixture's own fixed bar, for callers that never read the registry (a mixture that leaves
    ``max_synthetic_probability`` unset needs :func:`resolve_detector_threshold`)."""
    value = mixture.filters.max_synthetic_probability
    if value is None:
        raise ValueError(f"mixture {mixture.name} sets no `filters.max_synthetic_probability`; its detector "
                         "threshold comes from the registry: pass resolve_detector_threshold(cfg, mixture)")
    return DetectorThreshold(value, "fixed")
