"""Published web-text quality rules (Gopher, C4, FineWeb) as per-document scores with named rules.

This module only measures. :func:`quality_rule_signals` turns a batch of texts into one row of numbers
per document (the silver table's quality columns); :func:`failed_quality_rules` compares those
numbers with thresholds handed in from config and names the rules each document breaks. Nothing
here drops or edits a document: the sampling job decides, and changing a threshold never requires
recomputing a signal. The rule set itself is data (:data:`QUALITY_RULES`).

Sources (thresholds are cited on :class:`QualityThresholds`):

* Gopher quality and repetition filters: Rae et al., 2021, "Scaling Language Models: Methods,
  Analysis & Insights from Training Gopher", Appendix A (MassiveText), Table A1.
* C4: Raffel et al., 2020, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text
  Transformer", Section 2.2, and its reference code (TensorFlow Datasets ``c4_utils``).
* FineWeb: Penedo et al., 2024, "The FineWeb Datasets: Decanting the Web for the Finest Text Data
  at Scale", Section 3.5 (custom filters).

Definitions the papers leave open follow datatrove (HuggingFace's reference implementation of all
three filter sets) unless noted; every departure is listed in docs/quality.md:

* Lines are the non-empty lines after stripping whitespace, for every line rule. datatrove counts
  blank lines in some rules, so a document whose paragraphs are separated by blank lines would
  have its line fractions diluted by half.
* Gopher n-gram repetition works on lower-cased words with punctuation removed and counts
  characters of words only (no spaces), each character once even where duplicate n-grams overlap,
  counting every occurrence of a duplicated n-gram (RedPajama-V2's ``rps_doc_frac_chars_dupe_*``
  and Dolma's Gopher tagger). datatrove counts only the repeats after the first occurrence, with a
  greedy skip, so its values are lower on the same text.
"""
from __future__ import annotations

import dataclasses
import math
import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import chain, compress, product
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

GOPHER_STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
# A Gopher "bullet" line starts with one of these after leading whitespace. The paper names no
# list; datatrove checks only "•" and "-", which misses the other common list markers.
BULLET_MARKS = tuple("•‣◦⁃●○▪▫■□►▶➢➤✓✔-*–")
ELLIPSES = ("...", "…")
# C4 keeps a line only if it ends in one of these (Raffel et al. 2020; quotes per c4_utils).
C4_TERMINAL_PUNCTUATION = (".", "?", "!", '"', "'")
C4_MIN_WORDS_PER_LINE = 3
C4_MAX_WORD_CHARS = 1000
C4_POLICY_PHRASES = (
    "terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies",
)
C4_CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]", re.IGNORECASE)
# Sentence count as RedPajama-V2 approximates C4's NLTK sentence splitter: cheap and deterministic.
C4_SENTENCE = re.compile(r"\b[^.!?]+[.!?]*")
FINEWEB_LINE_END_PUNCTUATION = (".", "'", '"', "!", "?")
FINEWEB_SHORT_LINE_CHARS = 30
TOP_NGRAM_SIZES = (2, 3, 4)
DUPLICATE_NGRAM_SIZES = (5, 6, 7, 8, 9, 10)

# Characters stripped from the ends of a whitespace token before measuring it as a word.
_PUNCTUATION = string.punctuation + "“”‘’«»„‚‹›–—―…•·¡¿§¶†‡′″"
_ALPHA = re.compile(r"[^\W\d_]")
_WORD_CHARS = re.compile(r"\w+")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")

SIGNAL_COLUMNS: tuple[str, ...] = (
    "gopher_word_count",
    "gopher_mean_word_length",
    "gopher_hash_to_word_ratio",
    "gopher_ellipsis_to_word_ratio",
    "gopher_bullet_line_fraction",
    "gopher_ellipsis_line_fraction",
    "gopher_alpha_word_fraction",
    "gopher_stop_word_count",
    "gopher_dup_line_fraction",
    "gopher_dup_paragraph_fraction",
    "gopher_dup_line_char_fraction",
    "gopher_dup_paragraph_char_fraction",
    *(f"gopher_top_{n}gram_char_fraction" for n in TOP_NGRAM_SIZES),
    *(f"gopher_dup_{n}gram_char_fraction" for n in DUPLICATE_NGRAM_SIZES),
    "c4_terminal_punct_line_fraction",
    "c4_enough_words_line_fraction",
    "c4_javascript_line_fraction",
    "c4_policy_line_fraction",
    "c4_kept_line_fraction",
    "c4_kept_sentence_count",
    "c4_has_lorem_ipsum",
    "c4_has_curly_bracket",
    "fineweb_punct_line_fraction",
    "fineweb_dup_line_char_fraction",
    "fineweb_short_line_fraction",
)
_NGRAM_COLUMNS = (*(f"gopher_top_{n}gram_char_fraction" for n in TOP_NGRAM_SIZES),
                  *(f"gopher_dup_{n}gram_char_fraction" for n in DUPLICATE_NGRAM_SIZES))
# Columns computed one document at a time; the n-gram columns are computed for the whole batch.
_DOCUMENT_COLUMNS = [name for name in SIGNAL_COLUMNS if name not in _NGRAM_COLUMNS]
_INT_COLUMNS = frozenset({"gopher_word_count", "gopher_stop_word_count", "c4_kept_sentence_count"})
_BOOL_COLUMNS = frozenset({"c4_has_lorem_ipsum", "c4_has_curly_bracket"})
# The dtype of each signal column (the Spark wrapper derives its schema from it).
SIGNAL_DTYPES = {name: "int64" if name in _INT_COLUMNS else "bool" if name in _BOOL_COLUMNS else "float64"
                 for name in SIGNAL_COLUMNS}


@dataclass(frozen=True)
class QualityThresholds:
    """Thresholds for :data:`QUALITY_RULES`; one field per threshold, named as in conf/.

    ``None`` disables a rule (its signal is still computed). The four C4 line-fraction rules are
    off by default: C4 deletes such lines rather than rejecting the page, and their effect on the
    page is already measured by ``c4_kept_sentence_count`` (sentences left after the deletions).
    """

    # Gopher quality filter (Rae et al. 2021, Appendix A.1.1): keep documents with 50-100,000 words,
    gopher_min_words: int | None = 50
    gopher_max_words: int | None = 100_000
    # mean word length 3-10 characters,
    gopher_min_mean_word_length: float | None = 3.0
    gopher_max_mean_word_length: float | None = 10.0
    # symbol-to-word ratio below 0.1 for the hash symbol and for the ellipsis,
    gopher_max_hash_to_word_ratio: float | None = 0.1
    gopher_max_ellipsis_to_word_ratio: float | None = 0.1
    # at most 90% of lines starting with a bullet and at most 30% ending with an ellipsis,
    gopher_max_bullet_line_fraction: float | None = 0.9
    gopher_max_ellipsis_line_fraction: float | None = 0.3
    # at least 80% of words with an alphabetic character, and at least two stop words.
    gopher_min_alpha_word_fraction: float | None = 0.8
    gopher_min_stop_words: int | None = 2
    # Gopher repetition filter (Rae et al. 2021, Appendix A.1.1, Table A1).
    gopher_max_dup_line_fraction: float | None = 0.30
    gopher_max_dup_paragraph_fraction: float | None = 0.30
    gopher_max_dup_line_char_fraction: float | None = 0.20
    gopher_max_dup_paragraph_char_fraction: float | None = 0.20
    gopher_max_top_2gram_char_fraction: float | None = 0.20
    gopher_max_top_3gram_char_fraction: float | None = 0.18
    gopher_max_top_4gram_char_fraction: float | None = 0.16
    gopher_max_dup_5gram_char_fraction: float | None = 0.15
    gopher_max_dup_6gram_char_fraction: float | None = 0.14
    gopher_max_dup_7gram_char_fraction: float | None = 0.13
    gopher_max_dup_8gram_char_fraction: float | None = 0.12
    gopher_max_dup_9gram_char_fraction: float | None = 0.11
    gopher_max_dup_10gram_char_fraction: float | None = 0.10
    # C4 (Raffel et al. 2020, Section 2.2): pages need at least 5 sentences (after line removal),
    c4_min_sentences: int | None = 5
    # and are removed if they contain "lorem ipsum" or a curly bracket.
    c4_reject_lorem_ipsum: bool | None = True
    c4_reject_curly_bracket: bool | None = True
    # cleanwell's page-level versions of C4's line rules: off by default (see class docstring).
    c4_min_terminal_punct_line_fraction: float | None = None
    c4_min_enough_words_line_fraction: float | None = None
    c4_max_javascript_line_fraction: float | None = None
    c4_max_policy_line_fraction: float | None = None
    # FineWeb custom filters (Penedo et al. 2024, Section 3.5): remove a document if at most 12%
    # of its lines end with punctuation, if at least 10% of its characters are in duplicated lines
    # (datatrove's FineWebQualityFilter defaults to 0.01; the paper says 0.1), or if at least 67%
    # of its lines are shorter than 30 characters.
    fineweb_min_punct_line_fraction: float | None = 0.12
    fineweb_max_dup_line_char_fraction: float | None = 0.1
    fineweb_max_short_line_fraction: float | None = 0.67

    @classmethod
    def from_mapping(cls, values: Mapping[str, float | int | bool | None]) -> QualityThresholds:
        """Defaults overridden by ``values``; an unknown key is an error naming the known ones."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UnknownThresholdError(
                f"unknown quality threshold(s) {unknown}; known thresholds: {sorted(known)}")
        return cls(**values)


class UnknownThresholdError(KeyError):
    """A thresholds mapping names a key that no quality rule uses (usually a typo in conf/)."""


FailsWhen = Literal["<", "<=", ">", ">=", "flag"]


@dataclass(frozen=True)
class QualityRule:
    """One rule: the document fails when ``signal <fails_when> threshold``.

    ``fails_when="flag"`` fails documents whose boolean signal is true while the threshold is true.
    A missing value (NaN, e.g. mean word length of an empty text) never fails a rule: the word
    count rule is what rejects an empty document.
    """

    name: str
    signal: str
    fails_when: FailsWhen
    threshold: str
    source: str


_GOPHER = "Gopher (Rae et al. 2021, App. A)"
_C4 = "C4 (Raffel et al. 2020, Sec. 2.2)"
_C4_CLEANWELL = "cleanwell, from C4's line rule"
_FINEWEB = "FineWeb (Penedo et al. 2024, Sec. 3.5)"

QUALITY_RULES: tuple[QualityRule, ...] = (
    QualityRule("gopher_too_few_words", "gopher_word_count", "<", "gopher_min_words", _GOPHER),
    QualityRule("gopher_too_many_words", "gopher_word_count", ">", "gopher_max_words", _GOPHER),
    QualityRule("gopher_short_mean_word_length", "gopher_mean_word_length", "<",
                "gopher_min_mean_word_length", _GOPHER),
    QualityRule("gopher_long_mean_word_length", "gopher_mean_word_length", ">",
                "gopher_max_mean_word_length", _GOPHER),
    QualityRule("gopher_too_many_hashes", "gopher_hash_to_word_ratio", ">",
                "gopher_max_hash_to_word_ratio", _GOPHER),
    QualityRule("gopher_too_many_ellipses", "gopher_ellipsis_to_word_ratio", ">",
                "gopher_max_ellipsis_to_word_ratio", _GOPHER),
    QualityRule("gopher_too_many_bullet_lines", "gopher_bullet_line_fraction", ">",
                "gopher_max_bullet_line_fraction", _GOPHER),
    QualityRule("gopher_too_many_ellipsis_lines", "gopher_ellipsis_line_fraction", ">",
                "gopher_max_ellipsis_line_fraction", _GOPHER),
    QualityRule("gopher_too_few_alpha_words", "gopher_alpha_word_fraction", "<",
                "gopher_min_alpha_word_fraction", _GOPHER),
    QualityRule("gopher_too_few_stop_words", "gopher_stop_word_count", "<", "gopher_min_stop_words", _GOPHER),
    QualityRule("gopher_dup_lines", "gopher_dup_line_fraction", ">", "gopher_max_dup_line_fraction", _GOPHER),
    QualityRule("gopher_dup_paragraphs", "gopher_dup_paragraph_fraction", ">",
                "gopher_max_dup_paragraph_fraction", _GOPHER),
    QualityRule("gopher_dup_line_chars", "gopher_dup_line_char_fraction", ">",
                "gopher_max_dup_line_char_fraction", _GOPHER),
    QualityRule("gopher_dup_paragraph_chars", "gopher_dup_paragraph_char_fraction", ">",
                "gopher_max_dup_paragraph_char_fraction", _GOPHER),
    *(QualityRule(f"gopher_top_{n}gram", f"gopher_top_{n}gram_char_fraction", ">",
                  f"gopher_max_top_{n}gram_char_fraction", _GOPHER) for n in TOP_NGRAM_SIZES),
    *(QualityRule(f"gopher_dup_{n}grams", f"gopher_dup_{n}gram_char_fraction", ">",
                  f"gopher_max_dup_{n}gram_char_fraction", _GOPHER) for n in DUPLICATE_NGRAM_SIZES),
    QualityRule("c4_too_few_sentences", "c4_kept_sentence_count", "<", "c4_min_sentences", _C4),
    QualityRule("c4_lorem_ipsum", "c4_has_lorem_ipsum", "flag", "c4_reject_lorem_ipsum", _C4),
    QualityRule("c4_curly_bracket", "c4_has_curly_bracket", "flag", "c4_reject_curly_bracket", _C4),
    QualityRule("c4_few_terminal_punct_lines", "c4_terminal_punct_line_fraction", "<",
                "c4_min_terminal_punct_line_fraction", _C4_CLEANWELL),
    QualityRule("c4_few_enough_words_lines", "c4_enough_words_line_fraction", "<",
                "c4_min_enough_words_line_fraction", _C4_CLEANWELL),
    QualityRule("c4_javascript_lines", "c4_javascript_line_fraction", ">",
                "c4_max_javascript_line_fraction", _C4_CLEANWELL),
    QualityRule("c4_policy_lines", "c4_policy_line_fraction", ">", "c4_max_policy_line_fraction", _C4_CLEANWELL),
    QualityRule("fineweb_few_punct_lines", "fineweb_punct_line_fraction", "<=",
                "fineweb_min_punct_line_fraction", _FINEWEB),
    QualityRule("fineweb_dup_line_chars", "fineweb_dup_line_char_fraction", ">=",
                "fineweb_max_dup_line_char_fraction", _FINEWEB),
    QualityRule("fineweb_short_lines", "fineweb_short_line_fraction", ">=",
                "fineweb_max_short_line_fraction", _FINEWEB),
)


def quality_rule_signals(texts: Iterable[str | None]) -> pd.DataFrame:
    """One row per text, one column per name in :data:`SIGNAL_COLUMNS`.

    A missing text (None, NaN, pd.NA: a null in the Spark column) is scored as the empty text.

    Counts are int64, flags bool, fractions float64; a fraction with an empty denominator (no
    lines, no words) is NaN. The index is 0..n-1 in input order. A document's values do not depend
    on the other documents of the batch.
    """
    texts = [text if isinstance(text, str) else "" for text in texts]
    token_lists = [text.split() for text in texts]
    word_counts = _gopher_word_counts(token_lists).tolist()
    frame = pd.DataFrame.from_records([_document_signals(text, tokens, *counts) for text, tokens, counts
                                       in zip(texts, token_lists, word_counts, strict=True)], columns=_DOCUMENT_COLUMNS)
    ngram_fractions = _ngram_repetition([_WORD_CHARS.findall(text.lower()) for text in texts])
    frame[list(_NGRAM_COLUMNS)] = ngram_fractions
    return frame[list(SIGNAL_COLUMNS)].astype(SIGNAL_DTYPES)


def failed_quality_rules(
    signals: pd.DataFrame,
    thresholds: QualityThresholds | Mapping[str, float | int | bool | None],
    rules: Iterable[QualityRule] = QUALITY_RULES,
) -> pd.Series:
    """For each row of ``signals``, the names of the rules it fails (in rule order; [] if none).

    ``thresholds`` is a :class:`QualityThresholds` or a mapping of overrides of its defaults.
    """
    if not isinstance(thresholds, QualityThresholds):
        thresholds = QualityThresholds.from_mapping(thresholds)
    active = [rule for rule in rules if getattr(thresholds, rule.threshold) is not None]
    missing = sorted({rule.signal for rule in active} - set(signals.columns))
    if missing:
        raise KeyError(f"signal column(s) {missing} missing; compute them with quality_rule_signals")
    if not active:
        return pd.Series([[] for _ in range(len(signals))], index=signals.index, dtype="object")
    fails = np.column_stack([_rule_fails(signals[rule.signal], rule.fails_when,
                                         getattr(thresholds, rule.threshold)) for rule in active])
    names = [rule.name for rule in active]
    return pd.Series([list(compress(names, row)) for row in fails.tolist()], index=signals.index,
                     dtype="object")


def _rule_fails(values: pd.Series, fails_when: FailsWhen, threshold: float | bool) -> np.ndarray:
    if fails_when == "flag":
        return values.to_numpy(dtype=bool) & bool(threshold)
    array = values.to_numpy(dtype="float64")
    with np.errstate(invalid="ignore"):
        if fails_when == "<":
            return array < threshold
        if fails_when == "<=":
            return array <= threshold
        if fails_when == ">":
            return array > threshold
        return array >= threshold


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


# Every spelling whose str.lower() is a stop word: only ASCII letters lower to ASCII letters (the Kelvin
# sign lowers to "k", in no stop word), so these are the upper/lower-case combinations of each.
_STOP_WORD_SPELLINGS = pa.array(sorted({"".join(letters) for word in GOPHER_STOP_WORDS
                                        for letters in product(*((c, c.upper()) for c in word))}))


def _gopher_word_counts_of(tokens: list[str]) -> tuple[int, int, int]:
    """Gopher's words of one document's whitespace tokens: the tokens with punctuation stripped from
    their ends, empty ones dropped. (words, their characters, stop words among them)."""
    words = [word for word in (token.strip(_PUNCTUATION) for token in tokens) if word]
    return len(words), sum(map(len, words)), sum(word.lower() in GOPHER_STOP_WORDS for word in words)


def _gopher_word_counts(token_lists: list[list[str]]) -> np.ndarray:
    """:func:`_gopher_word_counts_of` for every document, as an (n, 3) int64 array: the whole batch's
    tokens go through three Arrow kernels (trim, length, membership) instead of a ``str.strip`` and a
    ``str.lower`` per token in Python, which were a quarter of these signals' time (issue #16). Texts
    that are not valid UTF-8 (a lone surrogate) take the per-token path."""
    n = len(token_lists)
    per_document = np.fromiter(map(len, token_lists), dtype=np.int64, count=n)
    try:
        tokens = pa.array(list(chain.from_iterable(token_lists)), type=pa.large_string())
    except (pa.ArrowException, UnicodeEncodeError):
        return np.array([_gopher_word_counts_of(tokens) for tokens in token_lists], dtype=np.int64).reshape(n, 3)
    words = pc.utf8_trim(tokens, characters=_PUNCTUATION)
    lengths = pc.utf8_length(words).to_numpy(zero_copy_only=False)
    stop = pc.is_in(words, value_set=_STOP_WORD_SPELLINGS).to_numpy(zero_copy_only=False)
    document = np.repeat(np.arange(n), per_document)
    columns = [np.bincount(document, weights=weights, minlength=n) for weights in (lengths > 0, lengths, stop)]
    return np.column_stack(columns).astype(np.int64).reshape(n, 3)


def _document_signals(text: str, tokens: list[str], n_words: int, word_chars: int, stop_words: int) -> tuple:
    """One document's signals but the n-gram ones; ``tokens`` are ``text.split()`` and the counts
    :func:`_gopher_word_counts_of` them."""
    lines = [stripped for stripped in (line.strip() for line in text.splitlines()) if stripped]
    n_lines = len(lines)
    lowered = text.lower()

    # Gopher quality filter.
    mean_word_length = _ratio(word_chars, n_words)
    hash_ratio = _ratio(text.count("#"), n_words)
    ellipsis_ratio = _ratio(text.count("...") + text.count("…"), n_words)
    bullet_lines = sum(1 for line in lines if line.startswith(BULLET_MARKS))
    ellipsis_lines = sum(1 for line in lines if line.endswith(ELLIPSES))
    alpha_words = len(list(filter(_ALPHA.search, tokens)))

    # Gopher repetition filter: lines are split on newlines, paragraphs on blank lines.
    paragraphs = [p for p in (p.strip() for p in _PARAGRAPH_BREAK.split(text)) if p]
    dup_lines, dup_line_chars = _repeated_elements(lines)
    dup_paragraphs, dup_paragraph_chars = _repeated_elements(paragraphs)

    # C4: which lines C4 would keep, and the sentences left in them.
    c4 = _c4_line_signals(lines)

    # FineWeb: duplicated-line characters over all characters but newlines (as datatrove).
    punct_lines = sum(1 for line in lines if line.endswith(FINEWEB_LINE_END_PUNCTUATION))
    short_lines = sum(1 for line in lines if len(line) < FINEWEB_SHORT_LINE_CHARS)
    chars_without_newlines = len(text) - text.count("\n")

    return (
        n_words,
        mean_word_length,
        hash_ratio,
        ellipsis_ratio,
        _ratio(bullet_lines, n_lines),
        _ratio(ellipsis_lines, n_lines),
        _ratio(alpha_words, len(tokens)),
        stop_words,
        _ratio(dup_lines, n_lines),
        _ratio(dup_paragraphs, len(paragraphs)),
        _ratio(dup_line_chars, len(text)),
        _ratio(dup_paragraph_chars, len(text)),
        *c4,
        "lorem ipsum" in lowered,
        "{" in text,
        _ratio(punct_lines, n_lines),
        _ratio(dup_line_chars, chars_without_newlines),
        _ratio(short_lines, n_lines),
    )


def _repeated_elements(elements: list[str]) -> tuple[int, int]:
    """How many elements repeat an earlier one, and their characters (first occurrences excluded,
    as datatrove: these are what removing the duplicates would delete)."""
    seen: set[str] = set()
    repeats = repeated_chars = 0
    for element in elements:
        if element in seen:
            repeats += 1
            repeated_chars += len(element)
        else:
            seen.add(element)
    return repeats, repeated_chars


# Odd 64-bit multiplier for the rolling n-gram hash (the golden-ratio constant of splitmix64).
_NGRAM_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)


def _mix64(values: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads word ids over 64 bits so the rolling hash behaves randomly."""
    z = values + _NGRAM_MULTIPLIER
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _occurrences(keys: np.ndarray) -> np.ndarray:
    """How often each element's value occurs in ``keys`` (uint64 hashes, mostly distinct).

    A hash table (``pd.factorize``) rather than np.unique: no O(m log m) sort of the batch. Only the
    keys that share a bucket of their low bits with another key go through it: a key alone in its
    bucket occurs once, and equal keys always share a bucket. With four to eight buckets per key at most
    about a fifth of the distinct keys share one, so most of the table's work becomes one ``bincount``.
    """
    size = 1 << max(10, (4 * keys.size).bit_length())
    buckets = (keys & np.uint64(size - 1)).astype(np.intp)
    occurrences = np.ones(keys.size, dtype=np.int64)
    shared = np.flatnonzero(np.bincount(buckets, minlength=size)[buckets] > 1)
    if shared.size:
        codes, _ = pd.factorize(keys[shared])
        occurrences[shared] = np.bincount(codes)[codes]
    return occurrences


def _ngram_repetition(word_lists: list[list[str]]) -> np.ndarray:
    """Gopher's top-n-gram (n=2..4) and duplicate-n-gram (n=5..10) character fractions, one row per
    document, computed for the whole batch at once.

    N-grams are compared by a 64-bit rolling hash of word ids, xor-ed with a per-document key so
    that equal n-grams in different documents never match (collisions ~m²/2⁶⁴ for m n-grams,
    negligible). One hash-table pass per n for the batch replaces hashing millions of Python tuples.
    """
    n_docs = len(word_lists)
    words_per_doc = np.fromiter(map(len, word_lists), dtype=np.int64, count=n_docs)
    words = list(chain.from_iterable(word_lists))
    n_words = len(words)
    sizes = (*TOP_NGRAM_SIZES, *DUPLICATE_NGRAM_SIZES)
    fractions = np.zeros((n_docs, len(sizes)), dtype=np.float64)
    doc_of_word = np.repeat(np.arange(n_docs, dtype=np.int64), words_per_doc)
    lengths = np.fromiter(map(len, words), dtype=np.int64, count=n_words)
    chars_per_doc = np.bincount(doc_of_word, weights=lengths, minlength=n_docs)
    fractions[chars_per_doc == 0] = math.nan
    if n_words == 0:
        return fractions
    word_ids, _ = pd.factorize(np.asarray(words, dtype=object))
    word_hashes = _mix64(word_ids.astype(np.uint64))
    doc_keys = _mix64(doc_of_word.astype(np.uint64) + np.uint64(n_words))
    doc_starts = np.concatenate(([0], np.cumsum(words_per_doc)))
    words_to_doc_end = doc_starts[doc_of_word + 1] - np.arange(n_words)
    char_offsets = np.concatenate(([0], np.cumsum(lengths)))
    ngram_hashes = word_hashes
    # The rolling hash extends (n-1)-grams to n-grams, so the sizes must run 2, 3, ... without gaps.
    assert sizes == tuple(range(2, 2 + len(sizes)))
    with np.errstate(divide="ignore", invalid="ignore"):
        for column, n in enumerate(sizes):
            if n > n_words:
                break
            ngram_hashes = ngram_hashes[:-1] * _NGRAM_MULTIPLIER + word_hashes[n - 1:]
            starts = np.flatnonzero(words_to_doc_end[:len(ngram_hashes)] >= n)
            if starts.size == 0:
                break
            occurrences = _occurrences(ngram_hashes[starts] ^ doc_keys[starts])
            docs = doc_of_word[starts]
            if n in TOP_NGRAM_SIZES:
                # Per document, the most frequent n-gram; ties go to the one with most characters
                # (the worse case for the document): maximise (count, characters) as one integer.
                ngram_chars = char_offsets[starts + n] - char_offsets[starts]
                best = np.zeros(n_docs, dtype=np.int64)
                np.maximum.at(best, docs, (occurrences << 32) | ngram_chars)
                top_count = best >> 32
                top = np.where(top_count >= 2, top_count * (best & 0xFFFFFFFF), 0)
                fractions[:, column] = top / chars_per_doc
            else:
                repeated = starts[occurrences > 1]
                cover = np.zeros(n_words + 1, dtype=np.int64)
                cover[repeated] += 1
                cover[repeated + n] -= 1
                covered = np.cumsum(cover[:-1]) > 0
                covered_chars = np.bincount(doc_of_word[covered], weights=lengths[covered], minlength=n_docs)
                fractions[:, column] = covered_chars / chars_per_doc
    return fractions


def _c4_line_signals(lines: list[str]) -> tuple[float, float, float, float, float, int]:
    """Fractions of lines passing each C4 line rule, of lines C4 keeps, and sentences kept.

    The order of checks follows c4_utils: over-long word, citation removal, terminal punctuation
    (a trailing ellipsis does not count), at least 3 words, "javascript", policy phrases.
    """
    terminal = enough_words = javascript = policy = kept = 0
    kept_sentences = 0
    for line in lines:
        words = line.split()
        has_long_word = len(line) > C4_MAX_WORD_CHARS and max(map(len, words)) > C4_MAX_WORD_CHARS
        cited = C4_CITATION.sub("", line).rstrip()
        ends_terminal = cited.endswith(C4_TERMINAL_PUNCTUATION) and not cited.endswith("...")
        has_enough_words = len(words) >= C4_MIN_WORDS_PER_LINE
        lowered = line.lower()
        mentions_javascript = "javascript" in lowered
        mentions_policy = any(phrase in lowered for phrase in C4_POLICY_PHRASES)
        terminal += ends_terminal
        enough_words += has_enough_words
        javascript += mentions_javascript
        policy += mentions_policy
        if ends_terminal and has_enough_words and not (has_long_word or mentions_javascript or mentions_policy):
            kept += 1
            kept_sentences += len(C4_SENTENCE.findall(cited))
    n_lines = len(lines)
    return (_ratio(terminal, n_lines), _ratio(enough_words, n_lines), _ratio(javascript, n_lines),
            _ratio(policy, n_lines), _ratio(kept, n_lines), kept_sentences)
