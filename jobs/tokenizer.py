"""Tokenize (step ``tokenize``): train the sentencepiece tokenizer and count every document's tokens.

The tokenizer is trained inside the pipeline on a deterministic sample of the reference distribution
(pre-AI archive and human documents first), logged to MLflow as an artifact, and used for
``n_tokens`` (the unit of mixture budgets) and by the detectors. The module is not called
``tokenize`` because that would shadow the standard library's module under ``spark-submit``.
"""
from __future__ import annotations

from typing import Any

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf

from jobs.common import gates, tables
from jobs.common.config import Config
from jobs.common.runner import Step, job_main, last_run_id
from jobs.common.schema import reference_first
from jobs.common.tracking import RunLog
from udfs.tokenizer import Tokenizer, count_tokens, train_tokenizer

ARTIFACT = "tokenizer/spm.model"


def reference_sample(silver: DataFrame, size: int) -> list[str]:
    """``size`` texts of the reference distribution (pre-AI archive, then human, …), deterministic."""
    return silver.orderBy(*reference_first()).limit(size).select("text").toPandas()["text"].tolist()


def token_count_column(text, model_bytes: bytes):
    @pandas_udf("long")
    def count(texts: pd.Series) -> pd.Series:
        return pd.Series(count_tokens(texts.tolist(), model_bytes))

    return count(text)


def load_tokenizer(spark: SparkSession, cfg: Config) -> bytes:
    """The tokenizer of the latest successful tokenize run, from its MLflow artifacts."""
    import mlflow

    from jobs.common.tracking import configure

    configure(cfg)
    run_id = last_run_id(spark, cfg, "tokenize")
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=ARTIFACT)
    with open(path, "rb") as fh:
        return fh.read()


def run(spark: SparkSession, cfg: Config, log: RunLog) -> dict[str, Any]:
    ref = tables.table_ref(cfg, "silver")
    silver = tables.read_table(spark, ref)
    t = cfg.tokenizer
    model = train_tokenizer(reference_sample(silver, t.train_sample), vocab_size=t.vocab_size,
                            model_type=t.model_type, seed=t.seed)
    log.artifact_bytes(model, ARTIFACT)
    vocab = Tokenizer.from_bytes(model).vocab_size
    counted = silver.withColumn("n_tokens", token_count_column(F.col("text"), model))
    gates.publish(cfg, counted, "silver", "silver_tokens", log,
                  lambda df, r: tables.overwrite(df, r, run_id=log.run_id))
    tokens = tables.read_table(spark, ref).agg(F.sum("n_tokens")).first()[0]
    log.metric("vocab_size", vocab)
    log.metric("tokens", tokens)
    return {"vocab_size": vocab, "tokens": tokens}


STEP = Step(
    name="tokenize", run=run, inputs=("silver",), outputs=("silver",), config_sections=("tokenizer",),
    help="Train the sentencepiece tokenizer on the human/pre-AI part of silver (logged to MLflow) and set "
         "n_tokens, the unit of mixture budgets.",
)


def main(argv: list[str] | None = None) -> None:
    job_main(STEP, argv)


if __name__ == "__main__":
    main()
