"""The detector threshold a mixture applies (jobs/common/detector_registry.py): fixed in the mixture, or the
registered champion's threshold for a target false-positive rate, read from a real MLflow registry."""
from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest

from jobs.common.config import MixtureConfig, load_mixture
from jobs.common.detector_registry import (
    FPR_THRESHOLDS_TAG,
    DetectorThreshold,
    DetectorThresholdError,
    resolve_detector_threshold,
)
from jobs.common.errors import CleanwellError
from jobs.common.tracking import configure

DEMO = load_mixture("conf/mixtures/demo.yaml")
THRESHOLDS = {"0.005": 0.97, "0.01": 0.93, "0.02": 0.88, "0.05": 0.71, "0.1": 0.52}


class ConstantModel(mlflow.pyfunc.PythonModel):
    """A stand-in detector: the registry only needs a version to carry the tag."""

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return pd.DataFrame({"synthetic_probability": [0.5] * len(model_input)})


def register(cfg, thresholds: dict | None, alias: bool = True) -> int:
    """A new version of the configured detector, tagged with ``thresholds`` (None: untagged, as an older
    cleanwell registered them); the alias moves to it unless ``alias`` is False."""
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="detector", python_model=ConstantModel(), pip_requirements=["mlflow"],
                                       registered_model_name=cfg.detect.registered_model)
    version = int(info.registered_model_version)
    client = mlflow.MlflowClient()
    if thresholds is not None:
        client.set_model_version_tag(cfg.detect.registered_model, str(version), FPR_THRESHOLDS_TAG,
                                     json.dumps(thresholds))
    if alias:
        client.set_registered_model_alias(cfg.detect.registered_model, cfg.detect.alias, version)
    return version


def with_filters(**changes) -> MixtureConfig:
    return DEMO.model_copy(update={"filters": DEMO.filters.model_copy(update=changes)})


def test_the_champions_tag_gives_the_threshold_of_the_target_rate_and_a_fixed_one_wins(make_config):
    cfg = make_config()
    configure(cfg)
    with pytest.raises(DetectorThresholdError, match=r"no detector is registered as .*@champion.*run the detect "
                       r"step.*`filters.max_synthetic_probability`"):
        resolve_detector_threshold(cfg, DEMO)

    register(cfg, {rate: value - 0.1 for rate, value in THRESHOLDS.items()})
    champion = register(cfg, THRESHOLDS)
    register(cfg, {rate: 0.0 for rate in THRESHOLDS}, alias=False)  # newer, but not the champion

    resolved = resolve_detector_threshold(cfg, DEMO)
    assert resolved == DetectorThreshold(0.93, "target_fpr", 0.01, champion)
    assert resolved.as_dict() == {"value": 0.93, "source": "target_fpr", "target_fpr": 0.01,
                                  "model_version": champion}
    assert resolve_detector_threshold(cfg, with_filters(detector_target_fpr=0.05)).value == 0.71
    assert resolve_detector_threshold(cfg, with_filters(max_synthetic_probability=0.8,
                                                        detector_target_fpr=0.05)).as_dict() == \
        {"value": 0.8, "source": "fixed", "target_fpr": None, "model_version": None}


def test_a_champion_without_the_tag_or_the_rate_is_an_error_that_says_what_to_do(make_config):
    cfg = make_config()
    configure(cfg)
    old = register(cfg, None)
    with pytest.raises(DetectorThresholdError, match=rf"version {old} has no `fpr_thresholds` tag .*older version "
                       r"of cleanwell.*rerun the detect step.*`filters.max_synthetic_probability`"):
        resolve_detector_threshold(cfg, DEMO)
    assert issubclass(DetectorThresholdError, CleanwellError)  # the CLI prints it without a traceback

    register(cfg, {"0.05": 0.7})
    with pytest.raises(DetectorThresholdError, match=r"no finite threshold for the target false-positive rate "
                       r"0.01 \(tag `fpr_thresholds` holds 0.05\)"):
        resolve_detector_threshold(cfg, DEMO)
    # A fixed threshold never reads the registry.
    assert resolve_detector_threshold(cfg, with_filters(max_synthetic_probability=1.0)) == \
        DetectorThreshold(1.0, "fixed")


def test_only_a_fixed_one_turns_the_detector_off():
    assert not DetectorThreshold(1.0, "fixed").decides
    assert DetectorThreshold(0.9, "fixed").decides
    # Read from the registry, 1.0 is a bar like any other: a saturated probability of 1.0 reaches it.
    assert DetectorThreshold(1.0, "target_fpr", 0.01, 3).decides


@pytest.mark.spark
def test_eligibility_applies_the_resolved_threshold_and_reports_it_as_evidence(spark):
    from jobs.common.eligibility import apply_exclusions, document_exclusions, required_columns, with_effective_origin

    rows = [("a", 0.95, "unknown", None), ("b", 0.90, "unknown", None), ("c", 0.5, "human", "declared"),
            ("d", 1.0, "unknown", None)]
    frame = spark.createDataFrame(rows, "doc_id string, synthetic_probability double, origin string, "
                                        "provenance_method string")
    frame = frame.withColumn("source", frame.doc_id)  # no source is vetted
    mixture = with_filters(watermark_z_threshold=None)

    def judge(threshold: DetectorThreshold) -> dict[str, tuple]:
        checks = [c for c in document_exclusions(mixture, frame.columns, threshold)
                  if c.reason == "synthetic_not_vetted"]
        judged = apply_exclusions(with_effective_origin(frame, mixture, threshold), checks)
        return {r["doc_id"]: (r["effective_origin"], r["exclusion_reason"], r["exclusion_threshold"])
                for r in judged.collect()}

    assert judge(DetectorThreshold(0.93, "target_fpr", 0.01, 2)) == {
        "a": ("synthetic", "synthetic_not_vetted", 0.93), "b": ("unknown", None, None),
        "c": ("human", None, None), "d": ("synthetic", "synthetic_not_vetted", 0.93)}
    assert judge(DetectorThreshold(1.0, "target_fpr", 0.005, 2))["d"] == ("synthetic", "synthetic_not_vetted", 1.0)
    assert {d: v[0] for d, v in judge(DetectorThreshold(1.0, "fixed")).items()} == \
        {"a": "unknown", "b": "unknown", "c": "human", "d": "unknown"}
    assert "synthetic_probability" in required_columns(mixture, DetectorThreshold(0.93, "target_fpr", 0.01, 2))
    assert "synthetic_probability" not in required_columns(mixture, DetectorThreshold(1.0, "fixed"))
    with pytest.raises(ValueError, match="sets no `filters.max_synthetic_probability`.*resolve_detector_threshold"):
        with_effective_origin(frame, mixture)  # the demo's bar comes from the registry: it must be passed
