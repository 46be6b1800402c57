"""Supervised synthetic-text detector and its calibrated combination with the zero-shot signals.

Pure core (numpy, scikit-learn, pandas; no Spark). One call, :func:`train_detector`, turns labelled
texts into a :class:`DetectorBundle` that holds everything needed to score new text: tokenizer,
human reference n-gram model, hashed character n-gram classifier and the stacker. The bundle
scores a batch into a DataFrame with one column per detector plus ``synthetic_probability``;
jobs/common/detector_model.py wraps it for MLflow (this module knows no MLflow).

How the combination is trained (so that nothing is scored on data it was fitted on):

1. Every training document gets a classifier score from a classifier that never saw it: with two or
   more labelled domains (``domains=``), from one trained on the *other domains* (leave-one-domain-out),
   else from one trained on the other stratified folds. The reference LM (when none is given) is
   cross-fitted over the folds likewise.
2. The stacker, a logistic regression over [classifier logit, zero-shot signals], is fitted on those
   held-out values, so its output ``synthetic_probability`` is calibrated the way the classifier will be
   met on new text: out of domain when domains are given. Only signals whose weight points the way the
   signal alone points are kept (a monotone combination; the rest are dropped one by one).
3. The human texts' held-out probabilities are the *human reference*: a target false-positive rate
   turns into a threshold on it (:meth:`DetectorBundle.threshold_at_fpr`).
4. The final classifier and LM are refitted on all training documents.

This module scores; it never decides. Thresholds on ``synthetic_probability`` live in ``conf/``.
"""
from __future__ import annotations

import functools
import multiprocessing
import pickle
import threading
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.feature_extraction.text import TfidfTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from udfs.detectors import (
    LM_SIGNALS,
    ZERO_SHOT_SIGNALS,
    prepare_texts,
    stylometric_features,
    text_signals,
)
from udfs.ngram_lm import NGramLM, lm_signals, train_ngram_lm
from udfs.sparse_counts import column_lookup, count_matrix, document_frequency, select
from udfs.tokenizer import Tokenizer, train_tokenizer

DETECTOR_COLUMNS = ("classifier_score", *ZERO_SHOT_SIGNALS)
SCORE_COLUMNS = (*DETECTOR_COLUMNS, "synthetic_probability")
_BUNDLE_FORMAT_VERSION = 1
# A domain is left out for calibration only with at least this many texts of each label.
MIN_DOMAIN_TEXTS_PER_LABEL = 5
# Stacker regularisation tried when there are domains to leave out (DetectorParams.stacker_c otherwise).
STACKER_C_CANDIDATES = (0.01, 0.1, 1.0, 10.0)


class DetectorTrainingError(ValueError):
    """Labelled data or arguments cannot train a detector."""


@dataclass(frozen=True)
class DetectorParams:
    """Choices of :func:`train_detector`. The defaults are the configuration reported in
    docs/detectors.md; each was chosen by the cross-domain check described there, not per domain."""

    n_folds: int = 5
    seed: int = 0
    lm_order: int = 3
    # Character 2–5-grams, hashed (no vocabulary to store): they see punctuation, typography and
    # morphology, and transferred across M4 domains better than word or sentencepiece n-grams,
    # which learn topic words.
    char_ngram_range: tuple[int, int] = (2, 5)
    hash_features: int = 2**20
    # Hashed n-grams seen in fewer training documents than this are dropped: they are mostly
    # names and topic words of a single document; dropping them roughly halves the model.
    min_document_frequency: int = 2
    classifier_c: float = 10.0
    # Weight of the standardised stylometric + zero-shot block appended to the unit-norm n-gram
    # vector. 0 leaves it out: stylometric rates encode the register of the training domain, so any
    # weight tried lowered cross-domain AUROC (measurements in docs/detectors.md).
    dense_feature_weight: float = 0.0
    stacker_c: float = 1.0
    # Zero-shot signals stacked with the classifier logit. The LM signals are scored and reported
    # but not stacked: their direction flips between domains (human wikiHow text is *more*
    # predictable than llama-2's, human Wikipedia text less), so stacking them lowered the worse
    # cross-domain AUROC.
    stack_signals: tuple[str, ...] = ("compression_ratio", "ngram_repetition", "type_token_ratio")


@dataclass
class _NgramClassifier:
    """Logistic regression over TF-IDF of hashed character n-grams (+ optional dense block)."""

    ngram_columns: np.ndarray
    ngram_idf: TfidfTransformer
    dense_medians: np.ndarray | None
    dense_scaler: StandardScaler | None
    dense_feature_weight: float
    model: LogisticRegression

    @classmethod
    def fit(cls, counts: sparse.csr_matrix, dense: np.ndarray | None, labels: np.ndarray,
            params: DetectorParams, rows: np.ndarray | None = None) -> _NgramClassifier:
        """Fit on ``rows`` (default: all) of ``counts``, ``dense`` and ``labels``."""
        if rows is not None:
            dense, labels = _rows(dense, rows), labels[rows]
        frequency = document_frequency(counts, rows)
        columns = np.flatnonzero(frequency >= params.min_document_frequency).astype(np.int32)
        # once: the IDF and the model's features both need it; float64 whatever the counts' type
        selected = select(counts, columns, rows, dtype=np.float64)
        idf = TfidfTransformer(sublinear_tf=True).fit(selected)
        medians = scaler = None
        if dense is not None:
            medians = _column_medians(dense)
            scaler = StandardScaler().fit(_impute(dense, medians))
        # liblinear's dual problem: far fewer documents than hashed n-gram columns, so it converges in
        # about 60 % of the primal's time to the same optimum (logits within 1e-3; docs/performance.md).
        # Its coordinate descent visits rows in a random order: seeded, so a retrain is reproducible.
        model = LogisticRegression(C=params.classifier_c, solver="liblinear", dual=True, random_state=params.seed)
        classifier = cls(columns, idf, medians, scaler, params.dense_feature_weight, model)
        features = classifier._features_of_selected(selected, dense)
        del selected  # the n-gram counts need not stay in memory beside their TF-IDF copy while liblinear fits
        classifier.model.fit(features, labels)
        return classifier

    def _features(self, counts: sparse.csr_matrix, dense: np.ndarray | None,
                  rows: np.ndarray | None = None) -> sparse.csr_matrix:
        selected = select(counts, self.ngram_columns, rows, dtype=np.float64)
        return self._features_of_selected(selected, dense if rows is None else _rows(dense, rows))

    def _features_of_selected(self, selected: sparse.csr_matrix, dense: np.ndarray | None) -> sparse.csr_matrix:
        ngrams = self.ngram_idf.transform(selected, copy=False)  # every caller hands in counts it drops after
        if self.dense_scaler is None:
            return ngrams
        scaled = self.dense_scaler.transform(_impute(dense, self.dense_medians)) * self.dense_feature_weight
        return sparse.hstack([ngrams, sparse.csr_matrix(scaled)], format="csr")

    def logit(self, counts: sparse.csr_matrix, dense: np.ndarray | None, rows: np.ndarray | None = None) -> np.ndarray:
        """Logits of ``rows`` (default: all) of ``counts`` and ``dense``."""
        return self.model.decision_function(self._features(counts, dense, rows))

    def logit_of_texts(self, prepared: list[str], dense: np.ndarray | None, params: DetectorParams) -> np.ndarray:
        """:meth:`logit` of prepared texts, counting only the selected n-gram columns."""
        selected = hashed_char_ngram_counts(prepared, params.char_ngram_range, params.hash_features,
                                            columns=self.ngram_columns)
        return self.model.decision_function(self._features_of_selected(selected, dense))


@dataclass
class DetectorBundle:
    """Everything needed to score text; picklable (:meth:`to_bytes`, :meth:`from_bytes`)."""

    tokenizer: Tokenizer
    lm: NGramLM
    params: DetectorParams
    classifier: _NgramClassifier
    # training medians of the zero-shot signals: stand-ins for a signal that is NaN (empty text)
    signal_medians: dict[str, float]
    stacker: Pipeline
    # +1 where a higher raw value went with machine text in the training data, -1 where lower did
    orientation: dict[str, float]
    training_summary: dict[str, Any] = field(default_factory=dict)
    # ``synthetic_probability`` of the human training texts, each scored by a classifier that did not
    # see it (its domain, or its fold), sorted: the reference for :meth:`threshold_at_fpr`.
    human_reference_scores: np.ndarray | None = None

    def score(self, texts: Sequence[str]) -> pd.DataFrame:
        """One row per text, columns :data:`SCORE_COLUMNS`.

        Zero-shot signals are in their natural units (see :mod:`udfs.detectors`);
        ``classifier_score`` and ``synthetic_probability`` are probabilities in [0, 1].
        """
        return self.score_and_encode(texts)[0]

    def score_and_encode(self, texts: Sequence[str]) -> tuple[pd.DataFrame, list[str], list[np.ndarray] | None]:
        """:meth:`score`, with the prepared texts and, when the language model needed them, their token
        ids (so a caller that also tokenises, e.g. the watermark test, need not encode them again)."""
        prepared = prepare_texts(texts)
        ids = self.tokenizer.encode_ids(prepared) if self.lm is not None else None
        signals = _zero_shot(prepared, ids, self.lm)
        logit = self.classifier.logit_of_texts(prepared, _dense_features(prepared, signals, self.params), self.params)
        return _score_frame(logit, signals, self.stacker, self.params.stack_signals, self.signal_medians), prepared, ids

    def threshold_at_fpr(self, target_fpr: float) -> float:
        """The ``synthetic_probability`` threshold that calls at most ``target_fpr`` of the human reference
        synthetic (:func:`threshold_at_fpr`)."""
        if self.human_reference_scores is None:
            raise DetectorTrainingError("this detector was trained before thresholds were stored; retrain it")
        return threshold_at_fpr(self.human_reference_scores, target_fpr)

    def oriented(self, scores: pd.DataFrame) -> pd.DataFrame:
        """``scores`` with each column turned so that higher means more synthetic."""
        return pd.DataFrame({column: scores[column] * self.orientation[column] for column in SCORE_COLUMNS},
                            index=scores.index)

    def to_bytes(self) -> bytes:
        """Pickle of the bundle (tokenizer and LM pickle as their own byte formats). Loading needs
        the same scikit-learn version, like any pickled scikit-learn model."""
        return pickle.dumps((_BUNDLE_FORMAT_VERSION, self), protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def from_bytes(cls, data: bytes) -> DetectorBundle:
        version, bundle = pickle.loads(data)
        if version != _BUNDLE_FORMAT_VERSION:
            raise DetectorTrainingError(f"detector bundle format {version} is not supported "
                                        f"(expected {_BUNDLE_FORMAT_VERSION}); retrain the detector")
        return bundle


@functools.lru_cache(maxsize=2)
def cached_bundle(data: bytes) -> DetectorBundle:
    """The bundle of ``data`` (:meth:`DetectorBundle.to_bytes`), unpickled once per process: a pandas UDF
    calls its function once per Arrow batch."""
    return DetectorBundle.from_bytes(data)


# ---- features ----------------------------------------------------------------------------------

_FNV_PRIME = np.uint64(0x100000001B3)
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
# Documents hashed per chunk: bounds the temporary arrays (~16 bytes x characters x n-gram sizes).
_HASH_CHUNK_DOCS = 256


def hashed_char_ngram_counts(texts: Sequence[str], ngram_range: tuple[int, int] = (2, 5),
                             n_features: int = 2**20, columns: np.ndarray | None = None,
                             dtype: type = np.float64) -> sparse.csr_matrix:
    """Counts of hashed character n-grams, one row per text, ``n_features`` columns.

    The features of scikit-learn's ``HashingVectorizer(analyzer="char")`` (lowercased, whitespace
    runs folded to one space), hashed with numpy over the whole batch (FNV-1a over code points,
    then a multiplicative mix) instead of a Python loop per n-gram: ~4x faster.

    ``columns`` (strictly increasing): only these columns, numbered 0.. in that order; the same as
    ``select`` of the full counts, but n-grams of other columns are dropped before counting
    (scoring needs only the columns the classifier selected). ``dtype``: of the counts (float32 holds
    them exactly and takes a third less memory than float64 with the int32 column indices).
    """
    low, high = ngram_range
    lookup = None if columns is None else column_lookup(columns, n_features)
    width = n_features if columns is None else len(columns)
    power_of_two = n_features & (n_features - 1) == 0
    blocks = []
    for start in range(0, len(texts), _HASH_CHUNK_DOCS):
        chunk = [" ".join(text.lower().split()) for text in texts[start:start + _HASH_CHUNK_DOCS]]
        codes = [np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32) for text in chunk]
        lengths = np.fromiter((c.size for c in codes), dtype=np.int64, count=len(codes))
        stream = np.concatenate(codes).astype(np.uint64)
        doc_of_char = np.repeat(np.arange(len(chunk)), lengths)
        rows, bucket_lists = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
        for n in range(low, high + 1):
            windows = stream.size - n + 1
            if windows <= 0:
                continue
            hashes = np.full(windows, _FNV_OFFSET ^ np.uint64(n), dtype=np.uint64)
            for k in range(n):  # in place: a fresh array per operation cost a fifth of the hashing
                np.bitwise_xor(hashes, stream[k:k + windows], out=hashes)
                np.multiply(hashes, _FNV_PRIME, out=hashes)
            hashes ^= hashes >> np.uint64(29)
            hashes *= np.uint64(0xBF58476D1CE4E5B9)
            hashes ^= hashes >> np.uint64(32)
            if power_of_two:
                hashes &= np.uint64(n_features - 1)
            else:
                hashes %= np.uint64(n_features)
            kept = doc_of_char[:windows] == doc_of_char[n - 1:]  # the n-gram lies inside one document
            if lookup is None:
                buckets = hashes[kept].astype(np.int64)
            else:  # one gather over every window, then one compaction for both conditions
                buckets = lookup[hashes]
                kept &= buckets >= 0
                buckets = buckets[kept]
            rows.append(doc_of_char[:windows][kept])
            bucket_lists.append(buckets)
        blocks.append(count_matrix(np.concatenate(rows), np.concatenate(bucket_lists), (len(chunk), width), dtype))
    if not blocks:
        return sparse.csr_matrix((0, width), dtype=dtype)
    return sparse.vstack(blocks, format="csr")


def _zero_shot(prepared: list[str], ids: list[np.ndarray] | None, lm: NGramLM | None) -> dict[str, np.ndarray]:
    """The zero-shot signals of already prepared texts (the LM ones, from their token ``ids``, only when
    ``lm`` is given)."""
    signals = text_signals(prepared)
    if lm is not None:
        signals.update(_lm_signals(ids, lm))
    return signals


def _lm_signals(ids: list[np.ndarray], lm: NGramLM) -> dict[str, np.ndarray]:
    log_likelihood, binoculars = lm_signals(ids, lm)
    return {"lm_log_likelihood": log_likelihood, "lm_binoculars": binoculars}


def _dense_features(prepared: list[str], signals: dict[str, np.ndarray], params: DetectorParams) -> np.ndarray | None:
    if params.dense_feature_weight == 0:
        return None
    return np.column_stack([stylometric_features(prepared), *(signals[name] for name in ZERO_SHOT_SIGNALS)])


def _column_medians(matrix: np.ndarray) -> np.ndarray:
    finite = np.where(np.isfinite(matrix), matrix, np.nan)
    medians = np.array([np.nanmedian(column) if np.isfinite(column).any() else 0.0 for column in finite.T])
    return medians


def _impute(matrix: np.ndarray, medians: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(matrix), matrix, medians)


def _stack_matrix(classifier_logit: np.ndarray, signals: dict[str, np.ndarray], stack_signals: Sequence[str],
                  signal_medians: dict[str, float]) -> np.ndarray:
    columns = [classifier_logit]
    columns += [np.where(np.isfinite(signals[name]), signals[name], signal_medians[name]) for name in stack_signals]
    return np.column_stack(columns)


def _score_frame(classifier_logit: np.ndarray, signals: dict[str, np.ndarray], stacker: Pipeline,
                 stack_signals: Sequence[str], signal_medians: dict[str, float]) -> pd.DataFrame:
    frame = {"classifier_score": 1.0 / (1.0 + np.exp(-classifier_logit))}
    frame.update({name: signals[name] for name in ZERO_SHOT_SIGNALS})
    stack = _stack_matrix(classifier_logit, signals, stack_signals, signal_medians)
    frame["synthetic_probability"] = stacker.predict_proba(stack)[:, 1]
    return pd.DataFrame(frame)


# ---- training ----------------------------------------------------------------------------------

def _human_lm(ids: list[np.ndarray], labels: np.ndarray, rows: np.ndarray, vocab_size: int, order: int) -> NGramLM:
    return train_ngram_lm([ids[i] for i in rows if labels[i] == 0], vocab_size, order)


def _rows(matrix: np.ndarray | None, rows: np.ndarray) -> np.ndarray | None:
    return None if matrix is None else matrix[rows]


def domain_folds(domains: Sequence[str] | None, labels: np.ndarray,
                 min_per_label: int = MIN_DOMAIN_TEXTS_PER_LABEL) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Leave-one-domain-out folds: ``(domain, train_rows, held_out_rows)`` for every domain with at least
    ``min_per_label`` texts of each label, when there are at least two such domains (else ``[]``). The
    training rows of a fold are every row of another domain, one-label domains included (they train
    but cannot be evaluated)."""
    if domains is None:
        return []
    domains = np.asarray(domains, dtype=object)
    if domains.size != labels.size:
        raise DetectorTrainingError(f"{domains.size} domains but {labels.size} labels")
    usable = [d for d in sorted(set(domains.tolist()))
              if min(np.sum((domains == d) & (labels == 0)), np.sum((domains == d) & (labels == 1))) >= min_per_label]
    if len(usable) < 2:
        return []
    return [(d, np.flatnonzero(domains != d), np.flatnonzero(domains == d)) for d in usable]


def threshold_at_fpr(human_scores: np.ndarray, target_fpr: float) -> float:
    """The lowest threshold ``t`` such that at most ``target_fpr`` of ``human_scores`` are ``>= t``
    (a document scoring ``>= t`` is called synthetic). Above every score when the target allows none."""
    if not 0 <= target_fpr < 1:
        raise DetectorTrainingError(f"target false-positive rate must be in [0, 1), got {target_fpr}")
    scores = np.sort(np.asarray(human_scores, dtype=float)[np.isfinite(human_scores)])[::-1]
    if scores.size == 0:
        raise DetectorTrainingError("no human reference scores to set a threshold from")
    allowed = int(np.floor(target_fpr * scores.size + 1e-9))
    return float(np.nextafter(scores[allowed], np.inf)) if allowed < scores.size else float(scores[-1])


def train_detector(texts: Sequence[str], labels: Sequence[int], tokenizer_bytes: bytes, lm: NGramLM | None = None,
                   params: DetectorParams | None = None, domains: Sequence[str] | None = None,
                   processes: int = 1) -> DetectorBundle:
    """Train the classifier and the calibrated combination on labelled ``texts``.

    ``labels``: 1 for machine-generated, 0 for human. ``tokenizer_bytes``: a model from
    :func:`udfs.tokenizer.train_tokenizer`. ``lm``: a human reference n-gram model (same tokenizer)
    that has *not* seen these texts; when None, one is trained here on the human texts, cross-fitted
    so that each document's LM signals come from a model that never saw it. ``domains``: one label
    per text (e.g. ``wikipedia``); with two or more domains that hold both labels, the stacker is
    fitted on *out-of-domain* classifier scores (:func:`domain_folds`), so it weighs the classifier
    by how well it transfers, not by how well it does on the domains it learned. ``processes``: how many
    of the classifier fits (one per fold, one final) run at once, in forked processes
    (:func:`_fit_classifiers`); the bundle is the same whatever it is.
    """
    params = params or DetectorParams()
    y = np.asarray(labels, dtype=np.int64)
    if len(texts) != y.size:
        raise DetectorTrainingError(f"{len(texts)} texts but {y.size} labels")
    if not set(np.unique(y).tolist()) <= {0, 1}:
        raise DetectorTrainingError("labels must be 0 (human) or 1 (machine-generated)")
    n_human, n_machine = int(np.sum(y == 0)), int(np.sum(y == 1))
    if min(n_human, n_machine) < params.n_folds:
        raise DetectorTrainingError(f"need at least n_folds={params.n_folds} texts of each class; "
                                    f"got {n_human} human and {n_machine} machine")
    unknown = set(params.stack_signals) - set(ZERO_SHOT_SIGNALS)
    if unknown:
        raise DetectorTrainingError(f"unknown stack signals {sorted(unknown)}; choose from {ZERO_SHOT_SIGNALS}")

    tokenizer = Tokenizer(tokenizer_bytes)
    prepared = prepare_texts(texts)
    ids = tokenizer.encode_ids(prepared)
    signals = _zero_shot(prepared, None, None)
    folds = list(StratifiedKFold(params.n_folds, shuffle=True, random_state=params.seed).split(prepared, y))

    if lm is None:
        signals.update({name: np.full(y.size, np.nan) for name in LM_SIGNALS})
        for train_rows, held_out in folds:
            fold_lm = _human_lm(ids, y, train_rows, tokenizer.vocab_size, params.lm_order)
            for name, values in _lm_signals([ids[i] for i in held_out], fold_lm).items():
                signals[name][held_out] = values
        lm = _human_lm(ids, y, np.arange(y.size), tokenizer.vocab_size, params.lm_order)
    elif lm.vocab_size != tokenizer.vocab_size:
        raise DetectorTrainingError(f"the language model has vocab_size {lm.vocab_size} but the tokenizer "
                                    f"{tokenizer.vocab_size}: train the model on this tokenizer's ids")
    else:
        signals.update(_lm_signals(ids, lm))

    # float32: every fold's features are float64 selections of these (sparse_counts.select)
    counts = hashed_char_ngram_counts(prepared, params.char_ngram_range, params.hash_features, dtype=np.float32)
    dense = _dense_features(prepared, signals, params)
    by_domain = domain_folds(domains, y)
    # Stacking rows and the classifier logit each of them gets from a classifier that never saw it:
    # from one that never saw its domain when there are domains to leave out, else from one that never
    # saw its fold. Rows of one-label domains train every fold's classifier but are not stacked.
    stack_folds = [(train_rows, held_out) for _, train_rows, held_out in by_domain] or folds
    stack_rows = np.sort(np.concatenate([held_out for _, held_out in stack_folds]))
    held_out_logit = np.full(y.size, np.nan)
    # the final classifier (every row, the longest fit) first, so the last fits to start are short ones
    fitted = _fit_classifiers(counts, dense, y, params, [(None, None), *stack_folds], processes)
    classifier = fitted[0][0]
    for (_, held_out), (_, logit) in zip(stack_folds, fitted[1:], strict=True):
        held_out_logit[held_out] = logit

    signal_medians = {name: float(np.nanmedian(signals[name])) if np.isfinite(signals[name]).any() else 0.0
                      for name in ZERO_SHOT_SIGNALS}
    stacked = {name: values[stack_rows] for name, values in signals.items()}
    params = _monotone_stack_signals(held_out_logit[stack_rows], stacked, y[stack_rows], params, signal_medians)
    c_selection: dict[str, float] = {}
    if by_domain:  # the stacker's regularisation: the best worst left-out domain (ties: the stronger)
        for c in STACKER_C_CANDIDATES:
            per_domain = _domain_auroc(by_domain, y, held_out_logit, signals, {}, replace(params, stacker_c=c),
                                       signal_medians, combination_only=True)
            c_selection[str(c)] = round(min(aurocs["synthetic_probability"] for aurocs in per_domain.values()), 4)
        best = max(STACKER_C_CANDIDATES, key=lambda c: (c_selection[str(c)], -c))
        params = replace(params, stacker_c=best)
    stack = _stack_matrix(held_out_logit[stack_rows], stacked, params.stack_signals, signal_medians)
    stacker = _fit_stacker(stack, y[stack_rows], params)

    held_out_scores = _score_frame(held_out_logit[stack_rows], stacked, stacker, params.stack_signals, signal_medians)
    stack_labels = y[stack_rows]
    orientation = {column: _orientation(stack_labels, held_out_scores[column].to_numpy())
                   for column in ZERO_SHOT_SIGNALS}
    orientation.update(classifier_score=1.0, synthetic_probability=1.0)
    human_reference = held_out_scores["synthetic_probability"].to_numpy()[stack_labels == 0]
    summary = {
        "n_human": n_human,
        "n_machine": n_machine,
        "calibration": "leave-one-domain-out" if by_domain else f"{params.n_folds}-fold",
        "calibration_domains": [name for name, _, _ in by_domain],
        "held_out_classifier_auroc": float(roc_auc_score(stack_labels, held_out_logit[stack_rows])),
        "stacker_coefficients": dict(zip(("classifier_logit", *params.stack_signals),
                                         stacker[-1].coef_[0].round(4).tolist(), strict=True)),
        "domain_auroc": _domain_auroc(by_domain, y, held_out_logit, signals, orientation, params, signal_medians),
        "stacker_c": params.stacker_c,
        "stacker_c_worst_domain_auroc": c_selection,
    }
    return DetectorBundle(tokenizer, lm, params, classifier, signal_medians, stacker, orientation, summary,
                          np.sort(human_reference))


# What forked fitting processes read: set before the fork, so the count matrix reaches them copy-on-write
# instead of pickled. The lock keeps two trainings in threads of one process from forking with each
# other's inputs (they take turns; each would want both cores anyway).
_FORK_INPUTS: tuple | None = None
_FORK_LOCK = threading.Lock()


# The final fit's classifier (no held-out rows), or a fold's held-out logits: a fold's classifier is not
# kept (nor sent back from a fitting process), only what it says of the rows it did not see.
_Fitted = tuple[_NgramClassifier | None, np.ndarray | None]


def _fit_and_score(counts: sparse.csr_matrix, dense: np.ndarray | None, labels: np.ndarray, params: DetectorParams,
                   train_rows: np.ndarray | None, held_out: np.ndarray | None) -> _Fitted:
    classifier = _NgramClassifier.fit(counts, dense, labels, params, rows=train_rows)
    if held_out is None:
        return classifier, None
    return None, classifier.logit(counts, dense, rows=held_out)


def _fit_forked(index: int) -> _Fitted:
    counts, dense, labels, params, fits = _FORK_INPUTS
    return _fit_and_score(counts, dense, labels, params, *fits[index])


def _fit_classifiers(counts: sparse.csr_matrix, dense: np.ndarray | None, labels: np.ndarray, params: DetectorParams,
                     fits: list[tuple[np.ndarray | None, np.ndarray | None]],
                     processes: int) -> list[_Fitted]:
    """One fit per ``(train_rows, held_out)`` of ``fits`` (None: every row / no held-out rows): its
    classifier when nothing is held out, else the logits of its held-out rows; ``processes`` fits at a
    time.

    liblinear's fits are single-threaded and hold most of the training's time (72 of 89 s at 20,000
    documents in one process, while the driver's other core idles); they are independent, so they run
    in forked processes that read the count matrix copy-on-write. Processes, not threads: liblinear
    draws its coordinate order from one generator per process (sklearn's ``set_seed``, seeded at each
    fit), so concurrent threads would interleave their draws and a retrain would not be reproducible;
    a process per fit gives the sequential result exactly. Each running fit holds its float64 TF-IDF
    features and liblinear's copy of them (~1 GiB at 20,000 training documents). Where fork is
    unavailable the fits run here."""
    global _FORK_INPUTS
    processes = min(processes, len(fits))
    if processes <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        return [_fit_and_score(counts, dense, labels, params, *fit) for fit in fits]
    with _FORK_LOCK:
        _FORK_INPUTS = (counts, dense, labels, params, fits)
        try:
            with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork")) as pool:
                return list(pool.map(_fit_forked, range(len(fits))))
        finally:
            _FORK_INPUTS = None


def _monotone_stack_signals(logit: np.ndarray, signals: dict[str, np.ndarray], labels: np.ndarray,
                            params: DetectorParams, signal_medians: dict[str, float]) -> DetectorParams:
    """``params`` with only the stack signals whose stacker weight has the sign of their own direction
    (the sign their AUROC alone gives on the stacking rows), the classifier's included: a weight against a
    signal's own direction exploits a correlation between inputs in the training domains, which need not
    hold elsewhere. The most negative such signal is dropped and the stacker refitted until none is left;
    the classifier logit is always kept."""
    kept = list(params.stack_signals)
    while True:
        candidate = replace(params, stack_signals=tuple(kept))
        stack = _stack_matrix(logit, signals, candidate.stack_signals, signal_medians)
        weights = _fit_stacker(stack, labels, candidate)[-1].coef_[0][1:]  # per-signal weights after the classifier's
        agreement = {name: weight * _orientation(labels, signals[name])
                     for name, weight in zip(kept, weights, strict=True)}
        against = [name for name, value in agreement.items() if value < 0]
        if not against:
            return candidate
        kept.remove(min(against, key=agreement.get))


def _fit_stacker(stack: np.ndarray, labels: np.ndarray, params: DetectorParams) -> Pipeline:
    return make_pipeline(StandardScaler(), LogisticRegression(C=params.stacker_c)).fit(stack, labels)


def _domain_auroc(by_domain: list[tuple[str, np.ndarray, np.ndarray]], y: np.ndarray, held_out_logit: np.ndarray,
                  signals: dict[str, np.ndarray], orientation: dict[str, float], params: DetectorParams,
                  signal_medians: dict[str, float], combination_only: bool = False) -> dict[str, dict[str, float]]:
    """Per left-out domain, the AUROC of the classifier, of each stacked signal and of a combination whose
    stacker was fitted on the other domains' rows only (their classifier scores, in turn, come from
    classifiers that saw this domain: with two domains nothing cleaner is possible). Evidence for the
    training summary, not a selection."""
    result = {}
    stacked_rows = np.concatenate([held_out for _, _, held_out in by_domain]) if by_domain else np.zeros(0, int)
    for name, _, held_out in by_domain:
        others = np.setdiff1d(stacked_rows, held_out)
        def stack_of(rows):
            return _stack_matrix(held_out_logit[rows], {k: v[rows] for k, v in signals.items()},
                                 params.stack_signals, signal_medians)
        stacker = _fit_stacker(stack_of(others), y[others], params)
        combination = stacker.predict_proba(stack_of(held_out))[:, 1]
        labels = y[held_out]
        if combination_only:
            result[name] = {"synthetic_probability": float(roc_auc_score(labels, combination))}
            continue
        aurocs = {"classifier_score": roc_auc_score(labels, held_out_logit[held_out])}
        for signal in params.stack_signals:
            values = signals[signal][held_out] * orientation[signal]
            aurocs[signal] = roc_auc_score(labels, np.where(np.isfinite(values), values, np.nanmin(values)))
        aurocs["synthetic_probability"] = roc_auc_score(labels, combination)
        result[name] = {column: round(float(value), 4) for column, value in aurocs.items()}
    return result


def _orientation(labels: np.ndarray, values: np.ndarray) -> float:
    """+1 if higher values went with machine text in the training labels, else -1."""
    filled = np.where(np.isfinite(values), values, np.nanmedian(values))
    return 1.0 if roc_auc_score(labels, filled) >= 0.5 else -1.0


# ---- evaluation --------------------------------------------------------------------------------

def evaluate(bundle: DetectorBundle, human_texts: Sequence[str], machine_texts: Sequence[str]) -> dict[str, float]:
    """Detection quality of every score column on labelled texts the bundle was not trained on.

    Returns a flat dict (ready for ``mlflow.log_metrics``): ``n_human``, ``n_machine``; for
    each column ``c`` of :data:`SCORE_COLUMNS`, ``c/auroc``, ``c/tpr_at_fpr_1pct`` and
    ``c/tpr_at_fpr_5pct``; and ``synthetic_probability/brier`` (mean squared error of the
    probability) and ``synthetic_probability/ece`` (:func:`expected_calibration_error`), checks of its
    calibration. Positives are machine texts. Each signal is first oriented with the sign
    learned on the *training* data (:attr:`DetectorBundle.orientation`), so a signal whose
    direction flips between domains shows AUROC < 0.5 here rather than being silently re-flipped.
    A missing value (empty text) ranks as the least synthetic.
    """
    if not human_texts or not machine_texts:
        raise DetectorTrainingError("evaluation needs at least one human and one machine text")
    labels = np.r_[np.zeros(len(human_texts)), np.ones(len(machine_texts))]
    return detection_metrics(labels, bundle.oriented(bundle.score([*human_texts, *machine_texts])))


def detection_metrics(labels: np.ndarray, oriented_scores: pd.DataFrame) -> dict[str, float]:
    """The metrics of :func:`evaluate` for already oriented scores (higher = more synthetic)."""
    labels = np.asarray(labels)
    metrics: dict[str, float] = {"n_human": int(np.sum(labels == 0)), "n_machine": int(np.sum(labels == 1))}
    for column in oriented_scores.columns:
        values = oriented_scores[column].to_numpy(dtype=float)
        least_synthetic = np.nanmin(values) - 1.0 if np.isfinite(values).any() else 0.0
        values = np.where(np.isnan(values), least_synthetic, values)
        false_positive_rate, true_positive_rate, _ = roc_curve(labels, values)
        metrics[f"{column}/auroc"] = float(roc_auc_score(labels, values))
        for target, name in ((0.01, "tpr_at_fpr_1pct"), (0.05, "tpr_at_fpr_5pct")):
            metrics[f"{column}/{name}"] = float(true_positive_rate[false_positive_rate <= target].max())
    if "synthetic_probability" in oriented_scores.columns:
        probability = oriented_scores["synthetic_probability"].to_numpy(dtype=float)
        metrics["synthetic_probability/brier"] = float(np.nanmean((probability - labels) ** 2))
        metrics["synthetic_probability/ece"] = expected_calibration_error(labels, probability)
    return metrics


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, n_bins: int = 10) -> float:
    """Expected calibration error of probabilities of the positive class (label 1): over ``n_bins``
    equal-width bins of [0, 1], |mean probability - share of positives| of each bin, weighted by the bin's
    share of the texts. 0 is perfect calibration. The bins are those of scikit-learn's
    ``calibration_curve(strategy="uniform")`` (a probability on an inner edge falls in the lower bin);
    NaN probabilities are left out."""
    labels, probabilities = np.asarray(labels, dtype=float), np.asarray(probabilities, dtype=float)
    if labels.shape != probabilities.shape:
        raise ValueError(f"{labels.size} labels but {probabilities.size} probabilities")
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    known = ~np.isnan(probabilities)
    labels, probabilities = labels[known], probabilities[known]
    if probabilities.size == 0:
        raise ValueError("no probabilities to measure calibration on")
    if probabilities.min() < 0 or probabilities.max() > 1:
        raise ValueError("probabilities must lie in [0, 1]")
    bins = np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], probabilities)
    # sum over bins of (n_b / n) * |sum_b(p) / n_b - sum_b(y) / n_b|, without dividing by empty bins
    gaps = np.abs(np.bincount(bins, probabilities, n_bins) - np.bincount(bins, labels, n_bins))
    return float(gaps.sum() / probabilities.size)


def detection_report(labels: np.ndarray, oriented_scores: pd.DataFrame) -> dict[str, Any]:
    """:func:`detection_metrics` nested by column (``n_human``, ``n_machine``, ``{column: {metric:
    value}}``), plus ``best_input``: the column other than ``synthetic_probability`` with the highest
    AUROC (the first in column order on a tie), and ``combination_worse_than_best_input``: whether
    ``synthetic_probability`` has a lower AUROC than that input."""
    flat = detection_metrics(labels, oriented_scores)
    report: dict[str, Any] = {"n_human": flat.pop("n_human"), "n_machine": flat.pop("n_machine")}
    for key, value in flat.items():
        column, _, metric = key.partition("/")
        report.setdefault(column, {})[metric] = value
    inputs = [column for column in oriented_scores.columns if column != "synthetic_probability"]
    if "synthetic_probability" not in report or not inputs:
        raise ValueError("a detection report needs synthetic_probability and at least one input column")
    best = max(inputs, key=lambda column: report[column]["auroc"])
    report["best_input"] = best
    report["combination_worse_than_best_input"] = report["synthetic_probability"]["auroc"] < report[best]["auroc"]
    return report


def in_domain_evaluation(human_texts: Sequence[str], machine_texts: Sequence[str], n_folds: int = 5,
                         vocab_size: int = 8000, params: DetectorParams | None = None) -> dict[str, float]:
    """k-fold cross-validated :func:`evaluate` within one domain.

    Each outer fold trains its own tokenizer and detector on the other folds only; the oriented
    held-out scores of all folds are pooled before the metrics are computed (so TPR at 1% FPR is
    measured over every human text, not over one fold's handful).
    """
    texts = [*human_texts, *machine_texts]
    labels = np.r_[np.zeros(len(human_texts), dtype=np.int64), np.ones(len(machine_texts), dtype=np.int64)]
    seed = (params or DetectorParams()).seed
    pooled: list[pd.DataFrame] = []
    for train_index, held_out in StratifiedKFold(n_folds, shuffle=True, random_state=seed + 1).split(texts, labels):
        train_texts = [texts[i] for i in train_index]
        tokenizer_bytes = train_tokenizer(prepare_texts(train_texts), vocab_size=vocab_size, seed=seed)
        bundle = train_detector(train_texts, labels[train_index], tokenizer_bytes, None, params)
        scores = bundle.oriented(bundle.score([texts[i] for i in held_out]))
        scores.index = held_out
        pooled.append(scores)
    oriented = pd.concat(pooled).sort_index()
    return detection_metrics(labels, oriented)


def cross_domain_evaluation(train_human: Sequence[str], train_machine: Sequence[str], test_human: Sequence[str],
                            test_machine: Sequence[str], vocab_size: int = 8000,
                            params: DetectorParams | None = None) -> dict[str, float]:
    """:func:`evaluate` on one domain of a detector (tokenizer, LM, classifier) trained on another."""
    train_texts = [*train_human, *train_machine]
    labels = [0] * len(train_human) + [1] * len(train_machine)
    tokenizer_bytes = train_tokenizer(prepare_texts(train_texts), vocab_size=vocab_size,
                                      seed=(params or DetectorParams()).seed)
    bundle = train_detector(train_texts, labels, tokenizer_bytes, None, params)
    return evaluate(bundle, test_human, test_machine)


def leave_one_domain_out_evaluation(texts: Sequence[str], labels: Sequence[int], domains: Sequence[str],
                                    vocab_size: int = 8000,
                                    params: DetectorParams | None = None) -> dict[str, dict[str, Any]]:
    """For every domain with both labels (:func:`domain_folds`), train the whole detector (tokenizer,
    reference LM, classifier, stacker, and the choices :func:`train_detector` makes from data: which
    signals to stack, how to calibrate) on the *other* domains only, and measure it on the left-out one.

    Returns ``{domain: {"metrics": evaluate(...) flat dict, "best_input": column, "best_input_auroc": x,
    "combination_auroc": y, "combination_at_least_best_input": bool}}``. Nothing of the left-out domain
    reaches training: the tokenizer, the LM and every fold are built from the other domains' texts.
    """
    y = np.asarray(labels, dtype=np.int64)
    texts, domains = list(texts), np.asarray(domains, dtype=object)
    folds = domain_folds(domains, y)
    if not folds:
        raise DetectorTrainingError("leave-one-domain-out evaluation needs two or more domains with both labels")
    results: dict[str, dict[str, Any]] = {}
    for domain, train_rows, held_out in folds:
        train_texts = [texts[i] for i in train_rows]
        tokenizer_bytes = train_tokenizer(prepare_texts(train_texts), vocab_size=vocab_size,
                                          seed=(params or DetectorParams()).seed)
        bundle = train_detector(train_texts, y[train_rows], tokenizer_bytes, None, params,
                                domains=domains[train_rows].tolist())
        human = [texts[i] for i in held_out if y[i] == 0]
        machine = [texts[i] for i in held_out if y[i] == 1]
        metrics = evaluate(bundle, human, machine)
        inputs = {column: metrics[f"{column}/auroc"] for column in DETECTOR_COLUMNS}
        best = max(inputs, key=inputs.get)
        combination = metrics["synthetic_probability/auroc"]
        results[domain] = {"metrics": metrics, "trained_on": sorted(set(domains[train_rows].tolist())),
                           "calibration": bundle.training_summary["calibration"],
                           "stacked": list(bundle.params.stack_signals), "best_input": best,
                           "best_input_auroc": inputs[best], "combination_auroc": combination,
                           "combination_at_least_best_input": combination >= inputs[best]}
    return results
