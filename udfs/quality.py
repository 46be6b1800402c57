"""Text statistics of each document (length, alphabetic share, repeated lines), vectorised over a batch of
documents (pure pandas/numpy, no Spark). The signals of the published quality rules (Gopher, C4,
FineWeb) are udfs/heuristics.py.

Scores only: thresholds on them live in the mixture config and only the sampling job applies them.
"""
from __future__ import annotations

import re
from functools import lru_cache

import numpy as np
import pandas as pd

TEXT_STATISTICS = ("n_chars", "n_words", "alpha_ratio", "duplicate_line_fraction")
# Character classes as Python's regular expressions define them (Unicode-aware): a letter is ``[^\W\d_]``,
# whitespace ``\s``; words are what ``str.split()`` separates.
_ALPHA = re.compile(r"[^\W\d_]")
_SPACE = re.compile(r"\s")
_BMP = 0x10000


@lru_cache(maxsize=1)
def _bmp_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(is letter, is regex whitespace, is str.split whitespace) for every code point below U+10000."""
    chars = [chr(code) for code in range(_BMP)]
    return (np.fromiter((_ALPHA.match(c) is not None for c in chars), dtype=bool, count=_BMP),
            np.fromiter((_SPACE.match(c) is not None for c in chars), dtype=bool, count=_BMP),
            np.fromiter((c.isspace() for c in chars), dtype=bool, count=_BMP))


def text_statistics(texts: pd.Series) -> pd.DataFrame:
    """Per document: characters, whitespace words, share of non-space characters that are alphabetic,
    and share of non-empty lines that repeat an earlier line of the same document.

    Characters are classified by table lookup over the code points of the whole batch, not by a regular
    expression per document: ``str.count`` of the two classes took four fifths of this function
    (~0.2 ms a document; issue #16). The tables come from the same expressions, so the counts are equal.
    """
    values = texts.fillna("").astype(str).tolist()
    codes = [np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32) for text in values]
    n_chars = np.fromiter(map(len, codes), dtype=np.int64, count=len(codes))
    stream = np.concatenate(codes) if codes else np.zeros(0, dtype=np.uint32)
    document = np.repeat(np.arange(len(values)), n_chars)
    alpha, space, split_space = _classify(stream)
    # A word starts at a non-space character that opens its document or follows a space.
    after_space = np.concatenate([[True], split_space[:-1]])
    after_space[(np.cumsum(n_chars) - n_chars)[n_chars > 0]] = True
    starts_word = ~split_space & after_space
    n_words = np.bincount(document[starts_word], minlength=len(values)).astype(np.int64)
    non_space = n_chars - np.bincount(document[space], minlength=len(values))
    alphas = np.bincount(document[alpha], minlength=len(values))
    alpha_ratio = np.divide(alphas, non_space, out=np.zeros(len(values)), where=non_space > 0)
    return pd.DataFrame({
        "n_chars": n_chars,
        "n_words": n_words,
        "alpha_ratio": alpha_ratio,
        "duplicate_line_fraction": [_duplicate_line_fraction(t) for t in values],
    })


def _classify(stream: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three character classes of every code point in ``stream``; code points above the BMP (rare)
    are classified one by one."""
    alpha_table, space_table, split_table = _bmp_tables()
    low = np.minimum(stream, _BMP - 1)
    alpha, space, split_space = alpha_table[low], space_table[low], split_table[low]
    for position in np.flatnonzero(stream >= _BMP).tolist():
        char = chr(int(stream[position]))
        alpha[position] = _ALPHA.match(char) is not None
        space[position] = _SPACE.match(char) is not None
        split_space[position] = char.isspace()
    return alpha, space, split_space


def _duplicate_line_fraction(text: str) -> float:
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    return 1.0 - len(set(lines)) / len(lines) if lines else 0.0
