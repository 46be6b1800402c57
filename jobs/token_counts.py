"""Tokenize (step ``tokenize``): train the sentencepiece tokenizer and count every document's tokens.

The tokenizer is trained inside the pipeline on a deterministic sample of the reference distribution
(pre-AI archive and human documents first), logged to MLflow as an artifact
(jobs/common/tokenizer_model.py, which detect loads it through), and used for ``n_tokens`` (the unit of
mixture budgets) and by the detectors. The module is not called ``tokenize`` because that would shadow
the standard library's module under ``spark-submit``, nor ``tokenizer``, the pure model in
udfs/tokenizer.py.
"""
from __future__ import annotations

from typing import Any

import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf

from jobs.common import gates, tables
from jobs.common.config import Config
from jobs.common.runner import Step, job_main
from jobs.common.schema import reference_sample
from jobs.common.tokenizer_model import ARTIFACT
from jobs.common.tracking import RunLog
from udfs.tokenizer import Tokenizer, count_tokens, train_tokenizer


def token_count_column(text, model_bytes: bytes):
    @pandas_udf("long")
    def count(texts: pd.Series) -> pd.Series:
        return pd.Series(count_tokens(texts.tolist(), model_bytes))

    return count(text)


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
    from jobs.pipeline import STEPS  # the entry point learns the pipeline order from the registry

    job_main(STEP, argv, STEPS)


if __name__ == "__main__":
    main()
