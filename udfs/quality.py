"""Text statistics of each document (length, alphabetic share, repeated lines), vectorised over a batch of
documents (pure pandas/numpy, no Spark). The signals of the published quality rules (Gopher, C4,
FineWeb) are udfs/heuristics.py.

Scores only: thresholds on them live in the mixture config and only the sampling job applies them.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

TEXT_STATISTICS = ("n_chars", "n_words", "alpha_ratio", "duplicate_line_fraction")


def text_statistics(texts: pd.Series) -> pd.DataFrame:
    """Per document: characters, whitespace words, share of non-space characters that are alphabetic,
    and share of non-empty lines that repeat an earlier line of the same document."""
    texts = texts.fillna("").astype(str)
    n_chars = texts.str.len().to_numpy(dtype=np.int64)
    n_words = texts.str.split().str.len().fillna(0).to_numpy(dtype=np.int64)
    non_space = n_chars - texts.str.count(r"\s").to_numpy(dtype=np.int64)
    alpha = texts.str.count(r"[^\W\d_]").to_numpy(dtype=np.int64)
    alpha_ratio = np.divide(alpha, non_space, out=np.zeros(len(texts)), where=non_space > 0)
    return pd.DataFrame({
        "n_chars": n_chars,
        "n_words": n_words,
        "alpha_ratio": alpha_ratio,
        "duplicate_line_fraction": [_duplicate_line_fraction(t) for t in texts],
    })


def _duplicate_line_fraction(text: str) -> float:
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    return 1.0 - len(set(lines)) / len(lines) if lines else 0.0
