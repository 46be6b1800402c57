"""Zero-shot and stylometric signals of synthetic ("model-generated") text — pure core, no Spark.

Every public function takes a sequence of texts and returns one float per text (or one row per
text for :func:`stylometric_features`), computed for the whole batch at once so that a pandas UDF
can call it on an Arrow batch. None of them needs neural weights: the only learned object is the
n-gram reference model of :mod:`udfs.ngram_lm`, trained here on human text.

Orientation: each signal is reported in its natural unit; which direction means "synthetic" is
learned from labelled training data by :mod:`udfs.classifier`, never assumed here.

Texts are normalised with :func:`udfs.text.normalize_text` (as the pipeline stores them) before
scoring, so that surrounding whitespace — such as the leading space of every llama-2 answer in
M4 — cannot change a score.

These functions only *measure*; thresholds belong in ``conf/`` and the decision to the sampling job.
"""
from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import numpy as np
import pandas as pd

from udfs.ngram_lm import NGramLM, binoculars_ratio, lm_signals, mean_log_likelihood
from udfs.text import normalize_text
from udfs.tokenizer import Tokenizer

_WORD = re.compile(r"\w+(?:['’]\w+)*")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n+")
_LIST_LINE = re.compile(r"^\s*(?:[-*•]|\d+[.)]|[a-zA-Z][.)])\s")

# Compression is measured on the first 4 kB only: deflate's ratio keeps falling as a document
# grows (more back-references become available), so over the full text the signal would mostly
# re-measure length, which differs between human and machine sets for reasons unrelated to style.
COMPRESSION_WINDOW_BYTES = 4096
# Moving-average TTR window (Covington & McFall 2010). 50 words: short enough that most web
# documents give many windows, long enough that a window's TTR is not dominated by function words.
MATTR_WINDOW_WORDS = 50
REPETITION_NGRAM = 3
REPETITION_WORDS = 500


def prepare_texts(texts: Sequence[str | None]) -> list[str]:
    """Normalised texts, as every signal here sees them (None counts as empty)."""
    return [normalize_text(text) if text else "" for text in texts]


def words(text: str) -> list[str]:
    """Lowercased word tokens (letters, digits, inner apostrophes); punctuation is dropped."""
    return _WORD.findall(text.lower())


# ---- zero-shot signals -----------------------------------------------------------------------

def compression_ratio(texts: Sequence[str], window_bytes: int = COMPRESSION_WINDOW_BYTES) -> np.ndarray:
    """zlib-compressed size / raw size of the first ``window_bytes`` UTF-8 bytes (NaN if empty).

    Lower means more redundant text: templated, repetitive or formulaic wording compresses better.
    """
    return _compression_ratio(prepare_texts(texts), window_bytes)


def ngram_repetition(texts: Sequence[str], n: int = REPETITION_NGRAM) -> np.ndarray:
    """Share of word ``n``-gram occurrences that repeat an earlier one in the same text.

    0 when every ``n``-gram is distinct, approaching 1 for a text that loops; NaN for texts with
    fewer than ``n`` words. Counted over the first 500 words, so that a long document is not
    penalised for the repetitions any long text accumulates.
    """
    return _ngram_repetition([words(text) for text in prepare_texts(texts)], n)


def type_token_ratio(texts: Sequence[str], window: int = MATTR_WINDOW_WORDS) -> np.ndarray:
    """Moving-average type-token ratio (MATTR) over windows of ``window`` words.

    Plain TTR falls with length (Heaps' law), so it would rank documents by length; MATTR averages
    the TTR of every ``window``-word window and is length-independent once a text has more than
    ``window`` words. A text shorter than the window gets its plain TTR; an empty text NaN.
    """
    return _type_token_ratio([words(text) for text in prepare_texts(texts)], window)


def lm_log_likelihood(texts: Sequence[str], tokenizer: Tokenizer, lm: NGramLM) -> np.ndarray:
    """Mean log-probability per subword token under the human reference n-gram model (nats)."""
    return mean_log_likelihood(tokenizer.encode_ids(prepare_texts(texts)), lm)


def lm_binoculars(texts: Sequence[str], tokenizer: Tokenizer, lm: NGramLM) -> np.ndarray:
    """Observed / expected surprisal under the reference model (see :func:`udfs.ngram_lm.binoculars_ratio`)."""
    return binoculars_ratio(tokenizer.encode_ids(prepare_texts(texts)), lm)


LM_SIGNALS = ("lm_log_likelihood", "lm_binoculars")
TEXT_SIGNALS = ("compression_ratio", "ngram_repetition", "type_token_ratio")
ZERO_SHOT_SIGNALS = (*TEXT_SIGNALS, *LM_SIGNALS)


def text_signals(prepared: Sequence[str]) -> dict[str, np.ndarray]:
    """The signals of :data:`TEXT_SIGNALS` (those that need no model) for texts already passed
    through :func:`prepare_texts`, splitting each text into words once."""
    word_lists = [words(text) for text in prepared]
    return {
        "compression_ratio": _compression_ratio(prepared),
        "ngram_repetition": _ngram_repetition(word_lists),
        "type_token_ratio": _type_token_ratio(word_lists),
    }


def zero_shot_signals(texts: Sequence[str], tokenizer: Tokenizer, lm: NGramLM) -> dict[str, np.ndarray]:
    """All signals of :data:`ZERO_SHOT_SIGNALS`, normalising and tokenising each text once."""
    prepared = prepare_texts(texts)
    log_likelihood, binoculars = lm_signals(tokenizer.encode_ids(prepared), lm)
    return {**text_signals(prepared), "lm_log_likelihood": log_likelihood, "lm_binoculars": binoculars}


def _compression_ratio(prepared: Sequence[str], window_bytes: int = COMPRESSION_WINDOW_BYTES) -> np.ndarray:
    ratios = np.full(len(prepared), np.nan)
    for i, text in enumerate(prepared):
        raw = text.encode("utf-8")[:window_bytes]
        if raw:
            ratios[i] = len(zlib.compress(raw, 6)) / len(raw)
    return ratios


def _ngram_repetition(word_lists: Sequence[list[str]], n: int = REPETITION_NGRAM) -> np.ndarray:
    shares = np.full(len(word_lists), np.nan)
    for i, all_words in enumerate(word_lists):
        counted = all_words[:REPETITION_WORDS]
        total = len(counted) - n + 1
        if total > 0:
            distinct = set(zip(*(counted[k:] for k in range(n)), strict=False))
            shares[i] = 1.0 - len(distinct) / total
    return shares


def _type_token_ratio(word_lists: Sequence[list[str]], window: int = MATTR_WINDOW_WORDS) -> np.ndarray:
    # No loop over windows: a word is a new type in window [s, s+W) exactly when its previous
    # occurrence lies before s, so each word adds 1 to a closed-form number of windows. No loop over
    # documents either: every word of the batch is one array element (a numpy loop per document cost a
    # fifth of the detector's text signals; issue #16).
    lengths = np.fromiter(map(len, word_lists), dtype=np.int64, count=len(word_lists))
    # One id per distinct word of the whole batch, in one hashing pass (pandas.factorize), not a dict
    # lookup per word in Python (a quarter of the detector's scoring time; issue #16).
    word_ids = pd.factorize(pd.Series([w for text_words in word_lists for w in text_words], dtype=object))[0]
    document = np.repeat(np.arange(len(lengths)), lengths)
    starts = np.cumsum(lengths) - lengths
    position = np.arange(word_ids.size) - starts[document]
    # A word id per document, so previous occurrences never cross documents.
    previous = _previous_occurrence(document * (int(word_ids.max(initial=0)) + 1) + word_ids)
    previous = np.where(previous >= 0, previous - starts[document], -1)
    n = lengths[document]
    last_window_start = n - window
    first_window = np.maximum(np.maximum(previous + 1, position - window + 1), 0)
    last_window = np.minimum(position, last_window_start)
    new_type_windows = np.bincount(document, weights=np.maximum(last_window - first_window + 1, 0),
                                   minlength=lengths.size)
    distinct = np.bincount(document, weights=previous < 0, minlength=lengths.size)
    with np.errstate(divide="ignore", invalid="ignore"):
        # A text no longer than the window is one window: its plain TTR.
        ratios = np.where(lengths <= window, distinct / lengths,
                          new_type_windows / ((lengths - window + 1) * window))
    return np.where(lengths > 0, ratios, np.nan)


def _previous_occurrence(ids: np.ndarray) -> np.ndarray:
    """Index of the previous occurrence of each id in ``ids`` (-1 for a first occurrence)."""
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    previous = np.full(ids.size, -1, dtype=np.int64)
    same_as_before = sorted_ids[1:] == sorted_ids[:-1]
    previous[order[1:][same_as_before]] = order[:-1][same_as_before]
    return previous


# ---- stylometry ------------------------------------------------------------------------------

# Closed-class English words (articles, pronouns, prepositions, conjunctions, auxiliaries,
# determiners): their rates carry style and almost no topic, which is why stylometry has relied
# on them since Mosteller & Wallace (1964).
FUNCTION_WORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has have
having he her here hers herself him himself his how i if in into is it its itself just me more most
my myself no nor not now of off on once only or other our ours ourselves out over own same she
should so some such than that the their theirs them themselves then there these they this those
through to too under until up very was we were what when where which while who whom why will with
would you your yours yourself yourselves
""".split())
FIRST_PERSON_WORDS = frozenset("i me my mine myself we us our ours ourselves".split())
SECOND_PERSON_WORDS = frozenset("you your yours yourself yourselves".split())
# Words widely reported as over-used by chat LLMs, after the excess-vocabulary studies of Kobak
# et al. (2024, "Delving into ChatGPT usage in academic writing through excess vocabulary") and
# Liang et al. (2024, "Monitoring AI-modified content at scale") and similar public lists; not
# selected by their effect on cleanwell's evaluation data.
LLM_MARKER_WORDS = frozenset("""
delve delves delving showcasing showcase showcases underscores underscore underscoring intricate
intricacies notably pivotal realm meticulous meticulously commendable innovative versatile
comprehensive crucial additionally enhancing enhance insights noteworthy invaluable groundbreaking
vibrant tapestry seamless seamlessly foster fostering nuanced multifaceted paramount testament
""".split())
# Sentence-opening connectives typical of expository "essay" register.
DISCOURSE_OPENERS = frozenset("additionally furthermore moreover overall however finally firstly secondly "
                              "lastly ultimately consequently therefore thus similarly conclusion".split())

STYLOMETRIC_FEATURE_NAMES = (
    "sentence_length_mean", "sentence_length_std", "sentence_length_cv", "word_length_mean",
    "long_word_rate", "comma_rate", "semicolon_colon_rate", "parenthesis_rate", "quote_rate",
    "dash_rate", "question_exclamation_rate", "digit_char_rate", "uppercase_letter_rate",
    "capitalised_word_rate", "function_word_rate", "first_person_rate", "second_person_rate",
    "llm_marker_rate", "discourse_opener_rate", "paragraph_length_mean", "list_line_share",
)


def stylometric_features(texts: Sequence[str]) -> np.ndarray:
    """One row per text, columns :data:`STYLOMETRIC_FEATURE_NAMES`; rates are per word (or per
    character / letter where named), so no column grows with document length. Empty text: NaN row."""
    rows = np.full((len(texts), len(STYLOMETRIC_FEATURE_NAMES)), np.nan)
    for i, text in enumerate(prepare_texts(texts)):
        raw_words = _WORD.findall(text)
        n_words = len(raw_words)
        if n_words == 0:
            continue
        words = [w.lower() for w in raw_words]
        sentences = [s for s in _SENTENCE_END.split(text) if _WORD.search(s)]
        sentence_lengths = np.array([len(_WORD.findall(s)) for s in sentences] or [n_words], dtype=float)
        sentence_mean = sentence_lengths.mean()
        sentence_std = sentence_lengths.std()
        word_lengths = np.fromiter((len(w) for w in words), dtype=float, count=n_words)
        letters = sum(c.isalpha() for c in text)
        lines = [line for line in text.split("\n") if line.strip()]
        paragraphs = [p for p in re.split(r"\n\s*\n", text) if _WORD.search(p)]
        sentence_openers = [_WORD.match(s.strip()) for s in sentences]
        rows[i] = (
            sentence_mean,
            sentence_std,
            sentence_std / sentence_mean,
            word_lengths.mean(),
            np.mean(word_lengths >= 10),
            text.count(",") / n_words,
            (text.count(";") + text.count(":")) / n_words,
            (text.count("(") + text.count(")")) / n_words,
            (text.count('"') + text.count("“") + text.count("”")) / n_words,
            (text.count(" - ") + text.count("–") + text.count("—")) / n_words,
            (text.count("?") + text.count("!")) / n_words,
            sum(c.isdigit() for c in text) / len(text),
            sum(c.isupper() for c in text) / max(letters, 1),
            sum(w[0].isupper() for w in raw_words) / n_words,
            sum(w in FUNCTION_WORDS for w in words) / n_words,
            sum(w in FIRST_PERSON_WORDS for w in words) / n_words,
            sum(w in SECOND_PERSON_WORDS for w in words) / n_words,
            sum(w in LLM_MARKER_WORDS for w in words) / n_words,
            sum(m is not None and m.group(0).lower() in DISCOURSE_OPENERS for m in sentence_openers)
            / len(sentences) if sentences else 0.0,
            n_words / max(len(paragraphs), 1),
            sum(bool(_LIST_LINE.match(line)) for line in lines) / max(len(lines), 1),
        )
    return rows
