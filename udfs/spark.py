"""Thin pandas-UDF wrappers that put the pure functions of udfs/ on Spark columns.

Each wrapper only converts between Arrow batches and the pure function's pandas/numpy types; the
logic and its tests live in the pure modules. Types are built as objects, not DDL strings: parsing
DDL needs a live SparkContext at import time.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import Column
from pyspark.sql.functions import pandas_udf
from pyspark.sql.types import (
    ArrayType,
    BooleanType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
)

from udfs.heuristics import SIGNAL_DTYPES, quality_rule_signals
from udfs.langid import detect_language
from udfs.quality import text_statistics

TEXT_STATISTICS_TYPE = StructType([
    StructField("n_chars", LongType()), StructField("n_words", LongType()),
    StructField("alpha_ratio", DoubleType()), StructField("duplicate_line_fraction", DoubleType()),
])
LANGUAGE_TYPE = StructType([StructField("detected_language", StringType()),
                            StructField("language_confidence", DoubleType())])


_SPARK_TYPES = {"int64": LongType(), "bool": BooleanType(), "float64": DoubleType()}
QUALITY_RULE_SIGNALS_TYPE = StructType([StructField(name, _SPARK_TYPES[dtype])
                                        for name, dtype in SIGNAL_DTYPES.items()])


@pandas_udf(TEXT_STATISTICS_TYPE)
def _text_statistics_udf(texts: pd.Series) -> pd.DataFrame:
    return text_statistics(texts)


@pandas_udf(QUALITY_RULE_SIGNALS_TYPE)
def _quality_rule_signals_udf(texts: pd.Series) -> pd.DataFrame:
    return quality_rule_signals(texts)


def text_statistics_column(text: Column) -> Column:
    """Struct column of the text statistics of ``text`` (udfs/quality.py)."""
    return _text_statistics_udf(text)


def quality_rule_signals_column(text: Column) -> Column:
    """Struct column of the Gopher, C4 and FineWeb quality rule signals of ``text`` (udfs/heuristics.py)."""
    return _quality_rule_signals_udf(text)


def language_column(text: Column, max_chars: int) -> Column:
    """Struct (detected_language, language_confidence) of ``text``."""

    @pandas_udf(LANGUAGE_TYPE)
    def detect(texts: pd.Series) -> pd.DataFrame:
        codes, confidences = detect_language(texts.tolist(), max_chars=max_chars)
        return pd.DataFrame({"detected_language": codes, "language_confidence": confidences})

    return detect(text)


def _embedding_model(model_bytes: bytes | None, model_path: str | None):
    from udfs.embeddings import EmbeddingModel, SentenceTransformerEmbedder

    return EmbeddingModel.from_bytes(model_bytes) if model_bytes else SentenceTransformerEmbedder(model_path)


def embedding_column(text: Column, model_bytes: bytes | None = None, model_path: str | None = None) -> Column:
    """array<float> embedding of ``text``: a fitted hashed-TF-IDF model (shipped as bytes), or a local
    sentence-transformers model folder (``model_path``, present on every executor)."""

    @pandas_udf(ArrayType(FloatType()))
    def embed(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:
        model = _embedding_model(model_bytes, model_path)  # once per task, not per batch
        for texts in batches:
            vectors = model.transform(texts.tolist())
            yield pd.Series(list(vectors.astype(np.float32, copy=False)))

    return embed(text)


EMBEDDING_AND_CLUSTER_TYPE = StructType([StructField("embedding", ArrayType(FloatType())),
                                         StructField("cluster_id", IntegerType())])


def embedding_and_cluster_column(text: Column, centroids: np.ndarray, model_bytes: bytes | None = None,
                                 model_path: str | None = None) -> Column:
    """struct(embedding, cluster_id): :func:`embedding_column` and :func:`nearest_centroid_column` of it in
    one Python pass, so the embeddings (1 KB a document) are not sent back to the JVM and out again to be
    assigned. The same values as the two columns (float32 embeddings in both)."""

    @pandas_udf(EMBEDDING_AND_CLUSTER_TYPE)
    def embed(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        from udfs.kmeans import nearest_centroid

        model = _embedding_model(model_bytes, model_path)
        for texts in batches:
            vectors = model.transform(texts.tolist()).astype(np.float32, copy=False)  # float32 already: no copy
            yield pd.DataFrame({"embedding": list(vectors), "cluster_id": nearest_centroid(vectors, centroids)})

    return embed(text)


def nearest_centroid_column(embedding: Column, centroids: np.ndarray) -> Column:
    """int index of the nearest of ``centroids`` (shipped with the UDF) to each ``embedding``."""

    @pandas_udf(IntegerType())
    def nearest(vectors: pd.Series) -> pd.Series:
        from udfs.kmeans import nearest_centroid

        rows = np.stack(vectors.to_numpy()) if len(vectors) else np.zeros((0, centroids.shape[1]))
        return pd.Series(nearest_centroid(rows, centroids))

    return nearest(embedding)
