"""The pipeline's tokenizer as an MLflow artifact: where the tokenize step logs it, how later steps load it.

The tokenize step (jobs/token_counts.py) trains the sentencepiece model and logs its bytes under
:data:`ARTIFACT`; detect loads the latest successful run's copy (the watermark test needs the same
token ids the documents were counted with).
"""
from __future__ import annotations

from pyspark.sql import SparkSession

from jobs.common.config import Config
from jobs.common.runner import last_run_id

ARTIFACT = "tokenizer/spm.model"


def load_tokenizer(spark: SparkSession, cfg: Config) -> bytes:
    """The tokenizer of the latest successful tokenize run, from its MLflow artifacts."""
    import mlflow

    from jobs.common.tracking import configure

    configure(cfg)
    run_id = last_run_id(spark, cfg, "tokenize")
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=ARTIFACT)
    with open(path, "rb") as fh:
        return fh.read()
