"""Language identification for the silver table's ``language`` and ``language_confidence`` columns.

Backed by py3langid (a maintained fork of Lui & Baldwin's langid.py: naive Bayes over
byte n-grams, 140 languages, see :func:`supported_languages`), whose
model ships inside the wheel: nothing is downloaded, at install or at run time, so executors with no
network can run it. This module only scores: it names the most likely language and its probability;
which languages and which minimum confidence a mixture accepts is the sampling job's decision.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from py3langid.langid import MODEL_FILE, LanguageIdentifier

from udfs.sparse_counts import count_matrix

UNDETERMINED = "und"  # ISO 639-2 code for "undetermined": empty or letterless text
# Language evidence saturates long before the end of a document, and py3langid walks every byte
# in Python; the first 2,000 characters keep the cost per document bounded.
DEFAULT_MAX_CHARS = 2000
# Documents walked together by :func:`_classify_batch`: bounds the (document, feature) visits held at once
# (~16 bytes x documents x bytes each), while keeping numpy's per-call overhead small per document.
_BATCH_DOCS = 1024


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
    model = _batch_model(tuple(sorted(languages)) if languages is not None else None)
    samples = [text[:max_chars] if isinstance(text, str) else "" for text in texts]
    codes = np.full(len(samples), UNDETERMINED, dtype=object)
    confidences = np.zeros(len(samples), dtype=np.float64)
    lettered = np.flatnonzero([any(character.isalpha() for character in sample) for sample in samples])
    for start in range(0, len(lettered), _BATCH_DOCS):
        chosen = lettered[start:start + _BATCH_DOCS]
        probabilities = _classify_batch(model, [LanguageIdentifier._encode(samples[i]) for i in chosen])
        best = probabilities.argmax(axis=1)
        codes[chosen] = model.labels[best]
        confidences[chosen] = probabilities[np.arange(len(chosen)), best]
    return codes, confidences


# ---- py3langid's classify, over a batch of documents at once ------------------------------------------
# py3langid walks each document's bytes through its tokenizer automaton in a Python loop and then scores
# one document at a time: ~1.6 ms for a 1,100-character document, most of the quality step's time. Here
# the automaton advances every document of a batch one byte per numpy step, the visited features become
# one sparse (documents x features) count matrix, and one sparse-dense product scores the batch. Same
# model, same arithmetic (log1p of the counts, naive Bayes, softmax at temperature sqrt(bytes), aliased
# labels folded): tests/test_heuristics.py checks codes and confidences against py3langid's classify.


@dataclass(frozen=True)
class _BatchModel:
    next_state: np.ndarray  # the automaton's transitions, indexed by row_base[state] + byte
    row_base: np.ndarray
    feature_of_state: np.ndarray  # the feature a state emits, -1 for none
    class_log_prob: np.ndarray  # (features, classes) float32
    prior: np.ndarray  # (classes,) float32
    labels: np.ndarray  # (classes,) object: the label of each class column
    alias_pairs: tuple[tuple[int, int], ...]  # (first, duplicate) columns of one label


@lru_cache(maxsize=8)
def _batch_model(languages: tuple[str, ...] | None) -> _BatchModel:
    # py3langid's own arrays and alias pairs (set by set_languages), not a recomputation of them.
    identifier = _identifier(languages)
    return _BatchModel(next_state=np.frombuffer(identifier.tk_nextmove, dtype=f"u{identifier.tk_nextmove.itemsize}"),
                       row_base=np.asarray(identifier._rowbase, dtype=np.int64),
                       feature_of_state=np.asarray(identifier.tk_output, dtype=np.int64),
                       class_log_prob=np.asarray(identifier.nb_ptc, dtype=np.float32),
                       prior=np.asarray(identifier.nb_pc, dtype=np.float32),
                       labels=np.asarray(identifier.nb_classes, dtype=object),
                       alias_pairs=tuple(identifier._alias_pairs))


def _classify_batch(model: _BatchModel, encoded: list[bytes]) -> np.ndarray:
    """(documents, classes) probabilities of ``encoded`` (non-empty UTF-8 byte strings)."""
    n = len(encoded)
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=n)
    # Longest first, so the documents still walking at any byte position are a prefix of the batch.
    order = np.argsort(-lengths, kind="stable")
    lengths = lengths[order]
    width = int(lengths[0]) if n else 0
    flat = np.frombuffer(b"".join(encoded[i] for i in order), dtype=np.uint8)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    by_position = np.zeros((width, n), dtype=np.uint8)  # at most 8 kB x documents
    by_position[np.arange(len(flat)) - np.repeat(starts, lengths), np.repeat(np.arange(n), lengths)] = flat
    walking = np.searchsorted(-lengths, -np.arange(1, width + 1), side="right")  # documents longer than i
    state = np.zeros(n, dtype=np.int64)
    documents, features = [], []
    for position in range(width):
        k = walking[position]
        state[:k] = model.next_state[model.row_base[state[:k]] + by_position[position, :k]]
        emitted = model.feature_of_state[state[:k]]
        hit = np.flatnonzero(emitted >= 0)
        documents.append(hit)
        features.append(emitted[hit])
    rows = np.concatenate(documents) if documents else np.zeros(0, dtype=np.int64)
    columns = np.concatenate(features) if features else np.zeros(0, dtype=np.int64)
    counts = count_matrix(rows, columns, (n, model.class_log_prob.shape[0]), dtype=np.float32)
    counts.data = np.log1p(counts.data)
    scores = np.asarray(counts @ model.class_log_prob, dtype=np.float32) + model.prior
    scores[np.diff(counts.indptr) == 0] = 0.0  # no feature at all: py3langid abstains (uniform)
    scores *= (1.0 / np.sqrt(np.maximum(lengths, 1)))[:, None].astype(np.float32)
    np.exp(scores - scores.max(axis=1, keepdims=True), out=scores)
    scores /= scores.sum(axis=1, keepdims=True)
    for first, duplicate in model.alias_pairs:
        scores[:, first] += scores[:, duplicate]
        scores[:, duplicate] = 0.0
    unsorted = np.empty_like(scores)
    unsorted[order] = scores
    return unsorted
