"""The detector's MLflow model (jobs/common/detector_model.py): save and load, and versions it cannot load."""
from __future__ import annotations

import contextlib
import importlib
import json
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from jobs.common.detector_model import (
    SPARK_RESULT_TYPE,
    UnloadableDetectorError,
    load_detector_bundle,
    log_detector_model,
    save_detector_model,
)
from jobs.common.detector_registry import FPR_THRESHOLDS_TAG
from jobs.common.errors import CleanwellError
from jobs.common.tracking import configure
from jobs.detect import TRAINING_HASHES, LabelledData, WatermarkTest, compare_with_champion, detector_column
from udfs.classifier import SCORE_COLUMNS, DetectorBundle, DetectorTrainingError, train_detector
from udfs.detectors import prepare_texts
from udfs.tokenizer import Tokenizer, train_tokenizer
from udfs.watermark import watermark_z_score

M4 = Path(__file__).resolve().parents[1] / "data" / "m4"
MOVED_MODULE = "cleanwell_moved_wrapper"


def _domain(name: str, n: int) -> tuple[list[str], list[str]]:
    with open(M4 / f"{name}_llama2.jsonl", encoding="utf-8") as lines:
        rows = [json.loads(line) for line in lines][:n]
    return [r["human_text"] for r in rows], [r["machine_text"] for r in rows]


@pytest.fixture(scope="module")
def bundle() -> DetectorBundle:
    human, machine = _domain("wikipedia", 40)
    tokenizer_bytes = train_tokenizer(prepare_texts(human + machine), vocab_size=1000)
    return train_detector(human + machine, [0] * len(human) + [1] * len(machine), tokenizer_bytes)


@contextlib.contextmanager
def old_wrapper_arguments(bundle: DetectorBundle, code: Path, monkeypatch: pytest.MonkeyPatch):
    """pyfunc arguments that pickle the wrapper by an import path which stops resolving when the block
    ends, as models registered by cleanwell 0.1.0 refer to ``udfs.classifier.SyntheticTextDetectorModel``."""
    from jobs.common.detector_model import _pyfunc_arguments

    code.mkdir()
    module = code / f"{MOVED_MODULE}.py"
    module.write_text("from jobs.common.detector_model import SyntheticTextDetectorModel\n\n\n"
                      "class OldWrapper(SyntheticTextDetectorModel):\n    pass\n")
    monkeypatch.syspath_prepend(str(code))
    wrapper = importlib.import_module(MOVED_MODULE).OldWrapper()
    yield {**_pyfunc_arguments(bundle, str(code), None, include_code=False), "python_model": wrapper}
    module.write_text("# the wrapper moved elsewhere\n")
    monkeypatch.delitem(sys.modules, MOVED_MODULE)
    importlib.invalidate_caches()


def test_saved_model_loads_back_and_scores_like_its_bundle(bundle: DetectorBundle, tmp_path: Path) -> None:
    save_detector_model(bundle, tmp_path / "detector")
    loaded = mlflow.pyfunc.load_model(str(tmp_path / "detector"))
    human, machine = _domain("wikihow", 3)
    frame = pd.DataFrame({"text": human + machine}, index=[10, 11, 12, 13, 14, 15])
    expected = bundle.score(frame["text"].tolist())
    expected.index = frame.index
    pd.testing.assert_frame_equal(loaded.predict(frame), expected)
    pd.testing.assert_frame_equal(load_detector_bundle(str(tmp_path / "detector")).score(human), bundle.score(human))
    assert SPARK_RESULT_TYPE == ", ".join(f"{column} double" for column in SCORE_COLUMNS)
    with pytest.raises(KeyError, match="column `text` missing"):
        loaded.unwrap_python_model().predict(None, pd.DataFrame({"body": ["x"]}))


@pytest.mark.spark
def test_in_spark_the_detect_column_and_mlflow_spark_udf_score_like_the_bundle(spark, bundle: DetectorBundle,
                                                                               tmp_path: Path) -> None:
    """detect scores silver with its own pandas UDF (faster); users may serve the same model with
    ``mlflow.pyfunc.spark_udf``: both give the bundle's scores, a missing text scored as an empty one."""
    from pyspark.sql import functions as F

    save_detector_model(bundle, tmp_path / "detector")
    human, machine = _domain("wikihow", 4)
    texts = [*human, *machine, None]
    frame = spark.createDataFrame([(i, t) for i, t in enumerate(texts)], "i int, text string")
    served = mlflow.pyfunc.spark_udf(spark, str(tmp_path / "detector"), result_type=SPARK_RESULT_TYPE,
                                     env_manager="local")
    scored = (frame.withColumns({"own": detector_column(F.col("text"), bundle), "mlflow": served(F.struct("text"))})
              .orderBy("i").toPandas())
    expected = bundle.score([t or "" for t in texts])
    for route in ("own", "mlflow"):
        got = pd.DataFrame(scored[route].tolist())[list(SCORE_COLUMNS)]
        pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=1e-9)


@pytest.mark.spark
def test_the_detect_column_tests_the_watermark_on_the_ids_of_the_text_as_stored(spark, bundle: DetectorBundle) -> None:
    """detect's one UDF reuses the detector's token ids for the watermark where they are the stored
    text's (same tokenizer, text already normalised) and encodes again where not; either way the
    z-scores are the watermark test's of the stored text, and the detector's scores are unchanged."""
    from pyspark.sql import functions as F

    human, machine = _domain("wikihow", 4)
    # Normalising drops a bidi control, and sentencepiece would have encoded it: stored that way (silver
    # from before ingest normalised), a text's ids are not the detector's.
    unnormalised = ["\u202e" + text for text in machine]
    texts = [*human, *prepare_texts(machine), *unnormalised, None, ""]
    shared = bundle.tokenizer
    assert all(a.tolist() != b.tolist() for a, b in zip(shared.encode_ids(unnormalised),
                                                        shared.encode_ids(prepare_texts(unnormalised)), strict=True))
    frame = spark.createDataFrame([(i, t) for i, t in enumerate(texts)], "i int, text string")
    other = train_tokenizer(prepare_texts(human + machine), vocab_size=600)
    raw = [t or "" for t in texts]
    expected_scores = bundle.score(raw)
    for tokenizer_bytes in (bundle.tokenizer.to_bytes(), other):
        test = WatermarkTest(tokenizer_bytes, "cleanwell-test-key", 0.25)
        got = frame.withColumn("s", detector_column(F.col("text"), bundle, test)).orderBy("i").toPandas()
        got = pd.DataFrame(got["s"].tolist())
        tokenizer = Tokenizer(tokenizer_bytes)
        expected_z = watermark_z_score(tokenizer.encode_ids(raw), test.key, test.gamma, tokenizer.vocab_size)
        assert list(got.columns) == [*SCORE_COLUMNS, "watermark_z"]
        pd.testing.assert_series_equal(got["watermark_z"], pd.Series(expected_z, name="watermark_z"))
        pd.testing.assert_frame_equal(got[list(SCORE_COLUMNS)], expected_scores, check_exact=False, rtol=1e-9)


def test_a_model_whose_wrapper_class_moved_fails_with_a_message_that_says_what_to_do(
        bundle: DetectorBundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with old_wrapper_arguments(bundle, tmp_path / "code", monkeypatch) as arguments:
        mlflow.pyfunc.save_model(path=str(tmp_path / "old"), **arguments)
    with pytest.raises(UnloadableDetectorError, match="OldWrapper.*train and register a new version"):
        load_detector_bundle(str(tmp_path / "old"))
    assert issubclass(UnloadableDetectorError, DetectorTrainingError)  # what the champion comparison catches
    assert issubclass(UnloadableDetectorError, CleanwellError)  # the CLI prints it without a traceback


def _champion_and_held_back(cfg, version: str) -> tuple[str, LabelledData]:
    """Point the alias at ``version``; held-back texts (8 + 8 wikiHow) to compare a candidate with it."""
    mlflow.MlflowClient().set_registered_model_alias(cfg.detect.registered_model, cfg.detect.alias, version)
    human, machine = _domain("wikihow", 8)
    return version, LabelledData(texts=[], labels=[], held_back_human=human, held_back_machine=machine)


def test_a_champion_registered_with_the_old_wrapper_is_replaced(
        bundle: DetectorBundle, make_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = make_config()
    configure(cfg)
    with old_wrapper_arguments(bundle, tmp_path / "code", monkeypatch) as arguments, mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="synthetic_text_detector",
                                       registered_model_name=cfg.detect.registered_model, **arguments)
        mlflow.log_dict({"content_hashes": []}, TRAINING_HASHES)
    version, data = _champion_and_held_back(cfg, info.registered_model_version)

    comparison = compare_with_champion(cfg, bundle, data)

    assert comparison["champion_version"] == int(version)
    assert comparison["moves"] is True
    assert comparison["champion"] is None
    assert f"version {version} cannot be loaded" in comparison["reason"]
    assert "train and register a new version" in comparison["reason"]


def test_a_champion_without_false_positive_rate_thresholds_is_replaced(
        bundle: DetectorBundle, make_config, tmp_path: Path) -> None:
    """A version registered before thresholds were tagged cannot serve `filters.detector_target_fpr`: the
    first new version takes the alias even if it scores lower, so sampling does not fail until then."""
    cfg = make_config()
    configure(cfg)
    with mlflow.start_run():
        info = log_detector_model(bundle, registered_model_name=cfg.detect.registered_model)
        mlflow.log_dict({"content_hashes": []}, TRAINING_HASHES)
    version, data = _champion_and_held_back(cfg, info.registered_model_version)

    comparison = compare_with_champion(cfg, bundle, data)

    assert comparison["moves"] is True
    assert comparison["reason"] == f"version {version} carries no false-positive-rate thresholds"
    # the same version, tagged, is a champion like any other: the comparison is made on AUROC
    mlflow.MlflowClient().set_model_version_tag(cfg.detect.registered_model, version, FPR_THRESHOLDS_TAG, "{}")
    assert compare_with_champion(cfg, bundle, data)["reason"].startswith("held-back AUROC")
