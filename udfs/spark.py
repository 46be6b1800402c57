"""Thin pandas-UDF wrappers that put the pure functions of udfs/ on Spark columns.

Each wrapper only converts between Arrow batches and the pure function's pandas/numpy types; the
logic and its tests live in the pure modules.
"""
from __future__ import annotations

import pandas as pd
from pyspark.sql import Column
from pyspark.sql.functions import pandas_udf
from pyspark.sql.types import DoubleType, LongType, StructField, StructType

from udfs.quality import basic_signals

# Types as objects, not DDL strings: parsing DDL needs a live SparkContext at import time.
BASIC_SIGNALS_TYPE = StructType([
    StructField("n_chars", LongType()), StructField("n_words", LongType()),
    StructField("alpha_ratio", DoubleType()), StructField("duplicate_line_fraction", DoubleType()),
])


@pandas_udf(BASIC_SIGNALS_TYPE)
def _basic_signals_udf(texts: pd.Series) -> pd.DataFrame:
    return basic_signals(texts)


def basic_signals_column(text: Column) -> Column:
    """Struct column of the basic quality signals of ``text``."""
    return _basic_signals_udf(text)
