"""udfs.quality.text_statistics against the plain per-document definitions (str.split, regular expressions)."""
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from udfs.quality import text_statistics

M4 = Path(__file__).resolve().parents[1] / "data" / "m4"


def _reference(text: str) -> tuple[int, int, float, float]:
    non_space = len(text) - len(re.findall(r"\s", text))
    alpha = len(re.findall(r"[^\W\d_]", text))
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    return (len(text), len(text.split()), alpha / non_space if non_space else 0.0,
            1.0 - len(set(lines)) / len(lines) if lines else 0.0)


def test_text_statistics_equal_the_per_document_definitions():
    rows = [json.loads(line) for line in (M4 / "wikihow_llama2.jsonl").read_text(encoding="utf-8").splitlines()[:50]]
    hostile = ["", " ", "\n\n", "word", "  two   words ", "a\u00a0b\u2003c\u3000d", "½ ² ٣ _ x1", "\x1c\x1d\x1e\x1fz",
               "𝐀𝐁 𝟏 😀 \U00020000", "e\u0301 ß Ω ж 中文", "tab\tsep\x0bv\x0cf\rr", "line\nline\n x\nline"]
    texts = [r["human_text"] for r in rows] + [r["machine_text"] for r in rows] + hostile
    result = text_statistics(pd.Series([*texts, None]))
    expected = pd.DataFrame([_reference(t) for t in [*texts, ""]], columns=list(result.columns))
    assert result["n_chars"].tolist() == expected["n_chars"].tolist()
    assert result["n_words"].tolist() == expected["n_words"].tolist()
    np.testing.assert_allclose(result["alpha_ratio"], expected["alpha_ratio"], rtol=1e-15)
    np.testing.assert_allclose(result["duplicate_line_fraction"], expected["duplicate_line_fraction"], rtol=1e-15)
    assert result["n_words"].iloc[len(rows) * 2 + 5] == 4  # no-break, em and ideographic spaces split words


def test_text_statistics_of_an_empty_batch():
    result = text_statistics(pd.Series([], dtype=object))
    assert len(result) == 0 and list(result.columns) == ["n_chars", "n_words", "alpha_ratio", "duplicate_line_fraction"]
