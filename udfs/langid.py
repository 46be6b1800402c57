"""Language identification for the silver table's ``language`` and ``language_confidence`` columns.

Backed by py3langid (a maintained fork of Lui & Baldwin's langid.py: naive Bayes over
byte n-grams, 140 languages, see :func:`supported_languages`), whose
model ships inside the wheel: nothing is downloaded, at install or at run time, so executors with no
network can run it. This module only scores: it names the most likely language and its probability;
which languages and which minimum confidence a mixture accepts is the sampling job's decision.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache

import numpy as np
from py3langid.langid import MODEL_FILE, LanguageIdentifier

UNDETERMINED = "und"  # ISO 639-2 code for "undetermined": empty or letterless text
# Language evidence saturates long before the end of a document, and py3langid walks every byte
# in Python; the first 2,000 characters keep the cost per document bounded.
DEFAULT_MAX_CHARS = 2000


@lru_cache(maxsize=8)
def _identifier(languages: tuple[str, ...] | None) -> LanguageIdentifier:
    # norm_probs: softmax over classes so the confidence is a probability in [0, 1], not a log score.
    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    if languages is not None:
        identifier.set_languages(list(languages))
    return identifier


def supported_languages() -> list[str]:
    """ISO 639-1 codes the bundled model can return (besides ``und``)."""
    return list(_identifier(None).labels)


def detect_language(
    texts: Iterable[str | None],
    max_chars: int = DEFAULT_MAX_CHARS,
    languages: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Most likely language of each text and its probability.

    Returns ``(codes, confidences)``: an object array of ISO 639-1 codes (``"und"`` with
    confidence 0.0 for empty, missing or letterless text) and a float64 array of probabilities in [0, 1].
    ``languages`` restricts the candidates (e.g. a crawl known to be European) and raises
    ValueError for a code the model does not know. Only the first ``max_chars`` characters count.
    """
    if max_chars <= 0:
        raise ValueError(f"max_chars must be positive, got {max_chars}")
    identifier = _identifier(tuple(sorted(languages)) if languages is not None else None)
    codes: list[str] = []
    confidences: list[float] = []
    for text in texts:
        sample = text[:max_chars] if isinstance(text, str) else ""
        if not any(character.isalpha() for character in sample):
            codes.append(UNDETERMINED)
            confidences.append(0.0)
            continue
        code, confidence = identifier.classify(sample)
        codes.append(code)
        confidences.append(float(confidence))
    return np.array(codes, dtype=object), np.array(confidences, dtype=np.float64)
