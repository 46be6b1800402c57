"""The synthetic-text detector as an MLflow model: the pyfunc wrapper detect registers, serves and loads.

udfs/classifier.py trains and scores a :class:`~udfs.classifier.DetectorBundle` without MLflow; this
module wraps the bundle for MLflow and loads it back (detect loads the champion by name and alias and
scores silver with its own pandas UDF, ``jobs.detect.detector_column``; ``mlflow.pyfunc.spark_udf`` serves
the same model to users).

Models are logged with ``python_model=`` an instance, so MLflow pickles a reference to
:class:`SyntheticTextDetectorModel` by its import path. Versions registered before the wrapper moved
here (cleanwell 0.1.0 logged ``udfs.classifier.SyntheticTextDetectorModel``) cannot be unpickled any
more: :func:`load_detector_bundle` raises :class:`UnloadableDetectorError` for them, which detect treats
as "no usable champion" (docs/detectors.md, "Models registered by older versions").
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from jobs.common.errors import CleanwellError
from udfs.classifier import SCORE_COLUMNS, DetectorBundle, DetectorTrainingError

# The scores as a Spark struct: ``result_type`` for ``mlflow.pyfunc.spark_udf`` and detect's own UDF's type.
SPARK_RESULT_TYPE = ", ".join(f"{column} double" for column in SCORE_COLUMNS)


class UnloadableDetectorError(DetectorTrainingError, CleanwellError):
    """A registered detector version that this version of cleanwell cannot load (the CLI prints the message
    without a traceback)."""


class SyntheticTextDetectorModel(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc around a :class:`DetectorBundle`.

    Input: a DataFrame with a string column ``text``. Output: a DataFrame with the float columns
    :data:`SCORE_COLUMNS`, one row per input row, so ``mlflow.pyfunc.spark_udf(..., result_type=...)``
    can return a struct of scores.
    """

    def __init__(self) -> None:
        self.bundle: DetectorBundle | None = None

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.bundle = DetectorBundle.from_bytes(Path(context.artifacts["detector_bundle"]).read_bytes())

    def predict(self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        if self.bundle is None:
            raise RuntimeError("the detector bundle is not loaded; load the model with mlflow.pyfunc.load_model")
        if "text" not in model_input.columns:
            found = ", ".join(map(str, model_input.columns))
            raise KeyError(f"column `text` missing in the detector input; found: {found}")
        texts = ["" if text is None or (isinstance(text, float) and np.isnan(text)) else str(text)
                 for text in model_input["text"]]
        scores = self.bundle.score(texts)
        scores.index = model_input.index
        return scores


def _model_signature() -> mlflow.models.ModelSignature:
    from mlflow.types.schema import ColSpec, Schema
    return mlflow.models.ModelSignature(
        inputs=Schema([ColSpec("string", "text")]),
        outputs=Schema([ColSpec("double", column) for column in SCORE_COLUMNS]),
    )


def _default_pip_requirements() -> list[str]:
    from importlib.metadata import version
    return [f"{package}=={version(package)}" for package in
            ("numpy", "pandas", "scipy", "scikit-learn", "sentencepiece", "xxhash", "mlflow")]


def _code_paths() -> list[str]:
    """The packages the pickled model refers to: ``jobs`` (this wrapper) and ``udfs`` (the bundle)."""
    root = Path(__file__).resolve().parents[2]
    return [str(root / "jobs"), str(root / "udfs")]


def _pyfunc_arguments(bundle: DetectorBundle, scratch: str, pip_requirements: list[str] | None,
                      include_code: bool) -> dict[str, Any]:
    bundle_file = Path(scratch) / "detector_bundle.pkl"
    bundle_file.write_bytes(bundle.to_bytes())
    arguments: dict[str, Any] = {
        "python_model": SyntheticTextDetectorModel(),
        "artifacts": {"detector_bundle": str(bundle_file)},
        "signature": _model_signature(),
        "input_example": pd.DataFrame({"text": ["A short example document to score."]}),
        "pip_requirements": pip_requirements or _default_pip_requirements(),
    }
    if include_code:
        arguments["code_paths"] = _code_paths()
    return arguments


def save_detector_model(bundle: DetectorBundle, path: str | os.PathLike[str],
                        pip_requirements: list[str] | None = None, include_code: bool = False) -> None:
    """Save ``bundle`` as an MLflow pyfunc model folder at ``path``.

    The model unpickles classes of ``jobs`` and ``udfs``, so it loads where cleanwell is installed (the
    jobs' environment, ``spark_udf(env_manager="local")``). ``include_code=True`` copies both packages
    into the model instead, for environments without cleanwell; note that MLflow then re-imports them
    from that copy in the loading process.
    """
    with tempfile.TemporaryDirectory() as scratch:
        mlflow.pyfunc.save_model(path=str(path), **_pyfunc_arguments(bundle, scratch, pip_requirements, include_code))


def log_detector_model(bundle: DetectorBundle, name: str = "synthetic_text_detector",
                       registered_model_name: str | None = None, pip_requirements: list[str] | None = None,
                       include_code: bool = False) -> mlflow.models.model.ModelInfo:
    """Log ``bundle`` to the active MLflow run (and register it when ``registered_model_name`` is
    given); returns its ModelInfo, whose ``model_uri`` feeds ``mlflow.pyfunc.spark_udf`` with
    ``result_type=SPARK_RESULT_TYPE``. ``include_code``: as in :func:`save_detector_model`."""
    with tempfile.TemporaryDirectory() as scratch:
        return mlflow.pyfunc.log_model(name=name, registered_model_name=registered_model_name,
                                       **_pyfunc_arguments(bundle, scratch, pip_requirements, include_code))


def load_detector_bundle(model_uri: str) -> DetectorBundle:
    """The bundle of the detector model at ``model_uri`` (a ``models:/`` URI, a run's or a folder).

    Raises :class:`UnloadableDetectorError` (a :class:`DetectorTrainingError`, which detect's champion
    comparison reads as "cannot be loaded") when the model's wrapper class no longer exists at the path
    it was pickled with, as for versions registered by cleanwell 0.1.0."""
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except (AttributeError, ImportError) as exc:  # pickle's "Can't get attribute …" / a module that moved
        raise UnloadableDetectorError(
            f"the detector at {model_uri} was saved by another version of cleanwell and cannot be loaded by "
            f"this one ({exc}); train and register a new version (`cleanwell train-detector`, or the detect "
            "step, which moves the alias past it)") from exc
    return model.unwrap_python_model().bundle
