"""Quality rules (udfs.heuristics) and language identification (udfs.langid)."""
from __future__ import annotations

import dataclasses
import json
import math
import re
import socket
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from udfs import langid
from udfs.heuristics import (
    QUALITY_RULES,
    SIGNAL_COLUMNS,
    QualityThresholds,
    UnknownThresholdError,
    _gopher_word_counts,
    _gopher_word_counts_of,
    _occurrences,
    failed_quality_rules,
    quality_rule_signals,
)

EXAMPLES_PATH = Path(__file__).parent / "data" / "quality_examples.jsonl"
M4 = Path(__file__).parents[1] / "data" / "m4"
EXAMPLES = [json.loads(line) for line in EXAMPLES_PATH.read_text(encoding="utf-8").splitlines()]


def _example_text(example: dict) -> str:
    # Constructed fails may be a short block repeated (the >100,000-word page), to keep the file small.
    return example["text"] * example.get("repeat", 1)


@pytest.fixture(scope="module")
def example_signals() -> pd.DataFrame:
    return quality_rule_signals([_example_text(example) for example in EXAMPLES])


def test_every_rule_has_one_passing_and_one_failing_example():
    outcomes = Counter((example["rule"], example["expected"]) for example in EXAMPLES)
    expected = {(rule.name, outcome): 1 for rule in QUALITY_RULES for outcome in ("pass", "fail")}
    assert dict(outcomes) == expected


def test_passing_examples_are_real_m4_texts():
    originals = {json.loads(line)["human_text"].strip()
                 for path in M4.glob("*.jsonl") for line in path.read_text(encoding="utf-8").splitlines()}
    passes = [example for example in EXAMPLES if example["expected"] == "pass"]
    assert all(example["text"] in originals for example in passes)


@pytest.mark.parametrize("position", range(len(EXAMPLES)),
                         ids=[f"{e['rule']}-{e['expected']}" for e in EXAMPLES])
def test_rule_outcome_on_hand_picked_example(position: int, example_signals: pd.DataFrame):
    example = EXAMPLES[position]
    thresholds = QualityThresholds.from_mapping(example.get("thresholds", {}))
    failed = failed_quality_rules(example_signals.iloc[[position]], thresholds).iloc[0]
    assert (example["rule"] in failed) == (example["expected"] == "fail"), example["source"]


def test_signals_have_every_column_in_input_order_and_null_is_empty_text():
    signals = quality_rule_signals(pd.Series(["one two three", None, ""], dtype="string"))
    assert list(signals.columns) == list(SIGNAL_COLUMNS)
    assert signals["gopher_word_count"].tolist() == [3, 0, 0]
    assert signals["gopher_word_count"].dtype == np.int64
    assert signals["c4_has_curly_bracket"].dtype == bool
    assert signals["gopher_mean_word_length"].tolist()[0] == pytest.approx(11 / 3)
    assert math.isnan(signals["gopher_mean_word_length"].iloc[1])


def test_empty_batch_gives_empty_frame_with_all_columns():
    signals = quality_rule_signals([])
    assert signals.shape == (0, len(SIGNAL_COLUMNS))
    assert failed_quality_rules(signals, QualityThresholds()).tolist() == []


def test_empty_document_fails_only_length_and_sentence_rules():
    failed = failed_quality_rules(quality_rule_signals([""]), QualityThresholds()).iloc[0]
    assert failed == ["gopher_too_few_words", "gopher_too_few_stop_words", "c4_too_few_sentences"]


def test_gopher_quality_values_on_hand_counted_text():
    text = "The #1 cat... sat with the dog!\n• 42 $5\n- Then\nit ended…"
    row = quality_rule_signals([text]).iloc[0]
    # Whitespace tokens: The #1 cat... sat with the dog! • 42 $5 - Then it ended… (14);
    # "•" and "-" are punctuation only, so 12 words.
    assert row["gopher_word_count"] == 12
    assert row["gopher_hash_to_word_ratio"] == pytest.approx(1 / 12)
    assert row["gopher_ellipsis_to_word_ratio"] == pytest.approx(2 / 12)
    assert row["gopher_bullet_line_fraction"] == pytest.approx(2 / 4)
    assert row["gopher_ellipsis_line_fraction"] == pytest.approx(1 / 4)
    # Tokens without a letter: #1, •, 42, $5, - (5 of 14).
    assert row["gopher_alpha_word_fraction"] == pytest.approx(9 / 14)
    # "The", "with", "the": stop words count case-insensitively.
    assert row["gopher_stop_word_count"] == 3


def test_duplicate_line_and_paragraph_fractions_count_repeats_after_the_first():
    text = "alpha beta\ngamma\nalpha beta\ndelta"
    row = quality_rule_signals([text]).iloc[0]
    assert row["gopher_dup_line_fraction"] == pytest.approx(1 / 4)
    assert row["gopher_dup_line_char_fraction"] == pytest.approx(10 / 33)
    assert row["fineweb_dup_line_char_fraction"] == pytest.approx(10 / 30)
    paragraphs = "one para\n\ntwo para\n\none para"
    row = quality_rule_signals([paragraphs]).iloc[0]
    assert row["gopher_dup_paragraph_fraction"] == pytest.approx(1 / 3)
    assert row["gopher_dup_paragraph_char_fraction"] == pytest.approx(8 / len(paragraphs))


def test_ngram_fractions_count_overlapping_characters_once():
    # The 5-gram "w1..w5" occurs twice: every word is covered once; no 6-gram repeats.
    row = quality_rule_signals(["alpha bravo charlie delta echo alpha bravo charlie delta echo"]).iloc[0]
    assert row["gopher_dup_5gram_char_fraction"] == pytest.approx(1.0)
    assert row["gopher_dup_6gram_char_fraction"] == 0.0
    # "red car" twice: 2 x 6 characters over 16 word characters; punctuation and case ignored.
    row = quality_rule_signals(["Red car, red car blue"]).iloc[0]
    assert row["gopher_top_2gram_char_fraction"] == pytest.approx(12 / 16)
    assert row["gopher_top_3gram_char_fraction"] == 0.0


def _reference_ngram_fractions(text: str) -> list[float]:
    """Gopher n-gram fractions with Python tuples instead of hashes, for comparison."""
    words = re.findall(r"\w+", text.lower())
    total = sum(map(len, words))
    values = []
    for n in (2, 3, 4):
        grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
        top = max(grams.values(), default=0)
        values.append(0.0 if top < 2 else top * max(len("".join(g)) for g, c in grams.items() if c == top) / total)
    for n in range(5, 11):
        grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
        covered = set()
        for i in range(len(words) - n + 1):
            if grams[tuple(words[i:i + n])] > 1:
                covered.update(range(i, i + n))
        values.append(sum(len(words[i]) for i in covered) / total)
    return values


def test_hashed_ngram_fractions_equal_tuple_reference_on_real_texts():
    texts = [json.loads(line)["machine_text"] for line in
             (M4 / "wikihow_llama2.jsonl").read_text(encoding="utf-8").splitlines()[:25]]
    columns = [f"gopher_top_{n}gram_char_fraction" for n in (2, 3, 4)] + \
              [f"gopher_dup_{n}gram_char_fraction" for n in range(5, 11)]
    ours = quality_rule_signals(texts)[columns].to_numpy()
    reference = np.array([_reference_ngram_fractions(text) for text in texts])
    np.testing.assert_allclose(ours, reference, rtol=1e-12)
    assert (reference[:, 3] > 0).sum() >= 10  # the comparison is not vacuous: most texts repeat 5-grams


@pytest.mark.parametrize("crowded", [False, True])
def test_occurrences_count_every_value_like_numpy_unique(crowded: bool):
    # crowded: distinct keys whose low 24 bits are all zero share one bucket, so the exact count does the work
    rng = np.random.default_rng(0)
    values = rng.integers(0, 2**40, size=500, dtype=np.uint64)
    values = values << np.uint64(24) if crowded else values * np.uint64(0x9E3779B97F4A7C15)
    keys = np.concatenate([values, values[:120], values[:7]])  # most once, some twice, a few three times
    rng.shuffle(keys)
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    assert set(counts.tolist()) == {1, 2, 3}
    np.testing.assert_array_equal(_occurrences(keys), counts[inverse])


def test_batched_gopher_word_counts_equal_the_per_token_definition():
    """issue #16: words, their characters and stop words come from Arrow kernels over the whole batch;
    they must equal str.strip / str.lower per token, on real texts and on case and punctuation edge
    cases (a dotted capital I lowers to two characters in Python, to "i" in Arrow's simple mapping)."""
    lines = (M4 / "wikihow_llama2.jsonl").read_text(encoding="utf-8").splitlines()[:40]
    texts = [json.loads(line)[key] for line in lines for key in ("human_text", "machine_text")]
    texts += ["", "   ", "... -- !!", "THE The tHe the. (the) «and» “With” WİTH wİth KKof ſo ſ",
              "Ŧhe Ωf to—be that’s HAVE… ʼtoʼ to be", " be　ofandthe"]
    token_lists = [text.split() for text in texts]
    reference = np.array([_gopher_word_counts_of(tokens) for tokens in token_lists], dtype=np.int64)
    batched = _gopher_word_counts(token_lists)
    np.testing.assert_array_equal(batched, reference)
    assert reference[:, 2].sum() > 500 and reference[-3:, 2].tolist() == [7, 3, 4]  # not vacuous
    # not valid UTF-8 (a lone surrogate): the per-token path, same counts
    with_surrogate = [["the", "x\ud800y", "of."], ["and"]]
    np.testing.assert_array_equal(_gopher_word_counts(with_surrogate), [[3, 8, 2], [1, 3, 1]])
    assert _gopher_word_counts([]).shape == (0, 3)


def test_a_document_scores_the_same_alone_or_in_a_batch_with_copies_of_itself():
    texts = [json.loads(line)["human_text"] for line in
             (M4 / "wikipedia_llama2.jsonl").read_text(encoding="utf-8").splitlines()[:3]]
    batch = quality_rule_signals([texts[0], texts[1], texts[0], "", texts[2]])
    alone = pd.concat([quality_rule_signals([text]) for text in (texts[0], texts[1], texts[0], "", texts[2])],
                      ignore_index=True)
    pd.testing.assert_frame_equal(batch, alone)
    assert batch.loc[0, "gopher_dup_10gram_char_fraction"] < 0.1  # its copy in the batch is not a repeat


def test_c4_keeps_only_punctuated_lines_of_three_words_without_javascript_or_policy():
    text = ("A proper sentence here. And another one!\n"
            "Too short.\n"
            "No terminal punctuation here\n"
            "Please enable JavaScript to continue.\n"
            "Read our privacy policy for details.\n"
            "It ends with a citation mark.[12]\n"
            "Trailing dots do not count...")
    row = quality_rule_signals([text]).iloc[0]
    assert row["c4_kept_line_fraction"] == pytest.approx(2 / 7)
    assert row["c4_terminal_punct_line_fraction"] == pytest.approx(5 / 7)
    assert row["c4_enough_words_line_fraction"] == pytest.approx(6 / 7)
    assert row["c4_javascript_line_fraction"] == pytest.approx(1 / 7)
    assert row["c4_policy_line_fraction"] == pytest.approx(1 / 7)
    assert row["c4_kept_sentence_count"] == 3
    assert not row["c4_has_lorem_ipsum"] and not row["c4_has_curly_bracket"]


def test_fineweb_line_fractions_ignore_blank_lines():
    text = "A short line.\n\nThis line is long enough to not count as a short one\n\nMenu"
    row = quality_rule_signals([text]).iloc[0]
    assert row["fineweb_punct_line_fraction"] == pytest.approx(1 / 3)
    assert row["fineweb_short_line_fraction"] == pytest.approx(2 / 3)


def test_threshold_change_needs_no_recomputation_and_none_disables_a_rule():
    signals = quality_rule_signals(["word " * 40])
    assert "gopher_too_few_words" in failed_quality_rules(signals, {}).iloc[0]
    assert "gopher_too_few_words" not in failed_quality_rules(signals, {"gopher_min_words": 40}).iloc[0]
    assert "gopher_too_few_words" not in failed_quality_rules(signals, {"gopher_min_words": None}).iloc[0]


def test_boundaries_follow_each_paper():
    signals = pd.DataFrame({"gopher_bullet_line_fraction": [0.9], "fineweb_short_line_fraction": [0.67]})
    rules = [rule for rule in QUALITY_RULES
             if rule.name in {"gopher_too_many_bullet_lines", "fineweb_short_lines"}]
    # Gopher removes "more than 90%"; FineWeb removes ">= 0.67".
    assert failed_quality_rules(signals, QualityThresholds(), rules).iloc[0] == ["fineweb_short_lines"]


def test_unknown_threshold_is_an_error_naming_it():
    with pytest.raises(UnknownThresholdError, match="gopher_min_wrds"):
        failed_quality_rules(quality_rule_signals(["text"]), {"gopher_min_wrds": 10})


def test_every_rule_names_an_existing_signal_and_threshold():
    fields = set(QualityThresholds.__dataclass_fields__)
    assert all(rule.signal in SIGNAL_COLUMNS and rule.threshold in fields for rule in QUALITY_RULES)
    assert len({rule.name for rule in QUALITY_RULES}) == len(QUALITY_RULES)


# Language identification ---------------------------------------------------------------------

KNOWN_LANGUAGES = {
    "en": "The committee will publish its annual report on the state of the national parks next week.",
    "de": "Der Ausschuss wird nächste Woche seinen Jahresbericht über den Zustand der Nationalparks veröffentlichen.",
    "fr": "Le comité publiera la semaine prochaine son rapport annuel sur l'état des parcs nationaux.",
    "es": "El comité publicará la próxima semana su informe anual sobre el estado de los parques nacionales.",
    "ru": "Комитет опубликует на следующей неделе свой ежегодный доклад о состоянии национальных парков.",
    "ja": "委員会は来週、国立公園の現状に関する年次報告書を公表する予定です。",
}


def test_detect_language_names_known_languages_with_high_confidence():
    codes, confidences = langid.detect_language(list(KNOWN_LANGUAGES.values()))
    assert codes.tolist() == list(KNOWN_LANGUAGES)
    assert confidences.dtype == np.float64
    assert (confidences > 0.8).all() and (confidences <= 1.0).all()


def test_detect_language_marks_letterless_text_undetermined():
    codes, confidences = langid.detect_language(pd.Series(["", None, "12345 -- 678"], dtype="string"))
    assert codes.tolist() == ["und", "und", "und"]
    assert confidences.tolist() == [0.0, 0.0, 0.0]


def test_detect_language_finds_english_in_m4_wikipedia():
    texts = [json.loads(line)["human_text"] for line in
             (M4 / "wikipedia_llama2.jsonl").read_text(encoding="utf-8").splitlines()[:20]]
    codes, confidences = langid.detect_language(texts)
    assert (codes == "en").sum() >= 19
    assert np.median(confidences) > 0.95


def test_detect_language_restricted_to_candidates():
    codes, _ = langid.detect_language([KNOWN_LANGUAGES["de"]], languages=["en", "fr"])
    assert codes.tolist()[0] in {"en", "fr"}
    with pytest.raises(ValueError):
        langid.detect_language(["text"], languages=["xx-not-a-language"])


@pytest.mark.parametrize("languages", [None, ("en", "fr", "sr")])
def test_batched_identification_equals_py3langid_document_by_document(monkeypatch: pytest.MonkeyPatch, languages):
    """issue #16: detect_language walks a batch of documents at once (6x py3langid's rate); py3langid's own
    classify, one document at a time, is the reference for every code and confidence."""
    rows = [json.loads(line) for line in (M4 / "wikihow_llama2.jsonl").read_text(encoding="utf-8").splitlines()[:15]]
    texts = [*KNOWN_LANGUAGES.values(), *(row["human_text"] for row in rows), *(row["machine_text"] for row in rows),
             KNOWN_LANGUAGES["en"].upper(), "Ово је српски текст на ћирилици о националним парковима.",
             "Ovo je srpski tekst na latinici o nacionalnim parkovima.", "x", "\ud800 lone surrogate text",
             "Café ﬁne naïve e\u0301", "🌲🌲 parks 🌲", "a" * 5000, "mixed English und Deutsch text " * 200]
    max_chars = 700
    monkeypatch.setattr(langid, "_BATCH_DOCS", 7)  # several batches, each with documents of unequal length
    codes, confidences = langid.detect_language(texts, max_chars=max_chars, languages=languages)
    reference = langid._identifier(tuple(sorted(languages)) if languages else None)
    expected = [reference.classify(text[:max_chars]) for text in texts]
    assert codes.tolist() == [code for code, _ in expected]
    np.testing.assert_allclose(confidences, [confidence for _, confidence in expected], rtol=0, atol=1e-5)
    assert len(set(codes)) >= (3 if languages else 6)


def test_language_model_loads_and_runs_without_network(monkeypatch: pytest.MonkeyPatch):
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("language identification tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    langid._identifier.cache_clear()
    langid._batch_model.cache_clear()
    codes, _ = langid.detect_language([KNOWN_LANGUAGES["fr"]])
    assert codes.tolist() == ["fr"]


def test_docs_list_every_signal_and_threshold_with_its_default():
    docs = (Path(__file__).parents[1] / "docs" / "quality.md").read_text(encoding="utf-8")
    assert all(f"`{column}`" in docs for column in SIGNAL_COLUMNS)
    for field in dataclasses.fields(QualityThresholds):
        match = re.search(rf"`{field.name}` = ([^ |]+)", docs)
        assert match, f"{field.name} missing from docs/quality.md"
        documented = {"null": None, "true": True, "false": False}.get(match.group(1), match.group(1))
        default = field.default
        assert documented == default if documented in (None, True, False) else float(documented) == default
