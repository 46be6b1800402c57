import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from udfs.classifier import (
    SCORE_COLUMNS,
    DetectorBundle,
    DetectorTrainingError,
    evaluate,
    hashed_char_ngram_counts,
    train_detector,
)
from udfs.detectors import prepare_texts
from udfs.sparse_counts import select
from udfs.tokenizer import train_tokenizer

M4 = Path(__file__).resolve().parents[1] / "data" / "m4"


def _domain(name: str) -> tuple[list[str], list[str]]:
    with open(M4 / f"{name}_llama2.jsonl", encoding="utf-8") as lines:
        rows = [json.loads(line) for line in lines]
    return [r["human_text"] for r in rows], [r["machine_text"] for r in rows]


@pytest.fixture(scope="module")
def wikihow() -> tuple[list[str], list[str]]:
    return _domain("wikihow")


@pytest.fixture(scope="module")
def bundle() -> DetectorBundle:
    """A detector trained on the 100 + 100 Wikipedia documents only."""
    human, machine = _domain("wikipedia")
    tokenizer_bytes = train_tokenizer(prepare_texts(human + machine), vocab_size=8000)
    return train_detector(human + machine, [0] * len(human) + [1] * len(machine), tokenizer_bytes)


@pytest.fixture(scope="module")
def wikihow_metrics(bundle: DetectorBundle, wikihow: tuple[list[str], list[str]]) -> dict[str, float]:
    return evaluate(bundle, *wikihow)


def test_detector_trained_on_wikipedia_ranks_wikihow_machine_text_above_human(
        wikihow_metrics: dict[str, float]) -> None:
    # measured: synthetic_probability 0.967, classifier 0.930, ngram_repetition 0.915
    assert wikihow_metrics["synthetic_probability/auroc"] > 0.93
    assert wikihow_metrics["classifier_score/auroc"] > 0.88
    assert wikihow_metrics["ngram_repetition/auroc"] > 0.85
    assert wikihow_metrics["synthetic_probability/tpr_at_fpr_5pct"] > 0.6   # measured 0.77


def test_evaluation_reports_every_documented_key_with_values_in_range(wikihow_metrics: dict[str, float]) -> None:
    expected_keys = {"n_human", "n_machine", "synthetic_probability/brier", "synthetic_probability/ece"} | {
        f"{column}/{metric}" for column in SCORE_COLUMNS
        for metric in ("auroc", "tpr_at_fpr_1pct", "tpr_at_fpr_5pct")}
    assert set(wikihow_metrics) == expected_keys
    assert wikihow_metrics["n_human"] == wikihow_metrics["n_machine"] == 100
    for column in SCORE_COLUMNS:
        one, five = wikihow_metrics[f"{column}/tpr_at_fpr_1pct"], wikihow_metrics[f"{column}/tpr_at_fpr_5pct"]
        assert 0.0 <= one <= five <= 1.0
        assert 0.0 <= wikihow_metrics[f"{column}/auroc"] <= 1.0
    assert 0.0 <= wikihow_metrics["synthetic_probability/brier"] < 0.25   # better than always saying 0.5
    assert 0.0 <= wikihow_metrics["synthetic_probability/ece"] <= 1.0


def test_orientation_is_learned_from_training_labels(bundle: DetectorBundle) -> None:
    # machine text compresses better and repeats more trigrams in the training domain
    assert bundle.orientation["compression_ratio"] == -1.0
    assert bundle.orientation["ngram_repetition"] == 1.0
    assert bundle.orientation["synthetic_probability"] == bundle.orientation["classifier_score"] == 1.0


def test_leading_space_cannot_change_any_score(bundle: DetectorBundle, wikihow: tuple[list[str], list[str]]) -> None:
    texts = [text.strip() for text in wikihow[1][:5]]
    scores = bundle.score(texts + [" " + text for text in texts])
    pd.testing.assert_frame_equal(scores.iloc[:5].reset_index(drop=True), scores.iloc[5:].reset_index(drop=True),
                                  check_exact=True)


def test_scores_have_one_row_per_text_and_probabilities_in_unit_interval(
        bundle: DetectorBundle, wikihow: tuple[list[str], list[str]]) -> None:
    scores = bundle.score([*wikihow[0][:3], *wikihow[1][:3], ""])
    assert list(scores.columns) == list(SCORE_COLUMNS)
    assert len(scores) == 7
    for column in ("classifier_score", "synthetic_probability"):
        assert scores[column].between(0.0, 1.0).all()
    assert np.isnan(scores["compression_ratio"].iloc[6])          # empty text: no signal ...
    assert 0.0 <= scores["synthetic_probability"].iloc[6] <= 1.0  # ... yet still a probability


def test_bundle_round_trips_through_bytes(bundle: DetectorBundle, wikihow: tuple[list[str], list[str]]) -> None:
    texts = wikihow[1][:4]
    pd.testing.assert_frame_equal(DetectorBundle.from_bytes(bundle.to_bytes()).score(texts), bundle.score(texts))


def test_retraining_on_the_same_texts_gives_the_same_scores() -> None:
    # liblinear's dual solver visits rows in a random order: seeded by DetectorParams.seed, never by
    # numpy's global state, or a rerun of detect would score the same silver differently.
    human, machine = _domain("wikipedia")
    texts, labels = human[:30] + machine[:30], [0] * 30 + [1] * 30
    tokenizer_bytes = train_tokenizer(prepare_texts(texts), vocab_size=800)
    scores = []
    for global_seed in (1, 2):
        np.random.seed(global_seed)
        scores.append(train_detector(texts, labels, tokenizer_bytes).score(human[30:40] + machine[30:40]))
    pd.testing.assert_frame_equal(scores[0], scores[1], check_exact=True)


@pytest.mark.parametrize("with_domains", [False, True], ids=["folds", "left-out-domains"])
def test_fits_in_forked_processes_give_the_bundle_of_fits_in_one_process(
        with_domains: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # detect.training_processes must not change the model: liblinear is seeded at every fit, so a fit in
    # a forked process is the fit done here, bit for bit.
    import os

    import udfs.classifier as classifier

    texts, labels, domains = [], [], []
    for name in ("wikipedia", "wikihow"):
        human, machine = _domain(name)
        texts += human[:25] + machine[:25]
        labels += [0] * 25 + [1] * 25
        domains += [name] * 50
    tokenizer_bytes = train_tokenizer(prepare_texts(texts), vocab_size=800)
    fit = classifier._fit_and_score
    pids = tmp_path / "pids"

    def recorded_fit(*args):
        with open(pids, "a") as out:
            out.write(f"{os.getpid()}\n")
        return fit(*args)

    monkeypatch.setattr(classifier, "_fit_and_score", recorded_fit)
    bundles = {processes: train_detector(texts, labels, tokenizer_bytes, domains=domains if with_domains else None,
                                         processes=processes) for processes in (1, 2)}
    fits = pids.read_text().split()
    in_parent = [pid for pid in fits if int(pid) == os.getpid()]
    # processes=1: every fit here; processes=2: every fit in a forked process (one or two of them: a
    # worker that starts late may find no fit left)
    assert len(in_parent) == len(fits) // 2 and 1 <= len(set(fits) - set(in_parent)) <= 2
    probe = texts[::7]
    pd.testing.assert_frame_equal(bundles[1].score(probe), bundles[2].score(probe), check_exact=True)
    assert bundles[1].training_summary == bundles[2].training_summary
    np.testing.assert_array_equal(bundles[1].classifier.model.coef_, bundles[2].classifier.model.coef_)


def test_training_rejects_labels_that_do_not_fit() -> None:
    with pytest.raises(DetectorTrainingError, match="texts but"):
        train_detector(["a", "b"], [0], b"")
    with pytest.raises(DetectorTrainingError, match="0 \\(human\\) or 1"):
        train_detector(["a", "b"], [0, 2], b"")
    with pytest.raises(DetectorTrainingError, match="at least n_folds"):
        train_detector(["a", "b", "c"], [0, 1, 1], b"")


def test_hashed_char_ngrams_count_every_window_and_fold_case_and_whitespace() -> None:
    counts = hashed_char_ngram_counts(["abcd", "AB  cd", ""], ngram_range=(2, 3), n_features=2**18)
    assert counts.shape == (3, 2**18)
    assert counts[0].sum() == 3 + 2                 # three bigrams and two trigrams in "abcd"
    assert counts[1].sum() == 4 + 3                 # "ab cd": whitespace run folded to one space
    assert counts[2].sum() == 0
    assert (counts[0].multiply(counts[1])).sum() == 2   # "ab" and "cd" are shared


def test_hashed_char_ngrams_of_selected_columns_equal_the_selected_full_counts() -> None:
    """issue #16: scoring counts only the classifier's columns; the result must be the full counts' selection."""
    texts = _domain("wikipedia")[0][:40] + ["", "a", "abab abab"]
    full = hashed_char_ngram_counts(texts, ngram_range=(2, 5), n_features=2**16)
    frequent = np.flatnonzero(np.bincount(full.indices, minlength=full.shape[1]) >= 3)
    assert 0 < frequent.size < full.shape[1]
    selected = hashed_char_ngram_counts(texts, ngram_range=(2, 5), n_features=2**16, columns=frequent)
    expected = select(full, frequent)
    assert selected.shape == expected.shape == (len(texts), frequent.size)
    assert (selected != expected).nnz == 0 and selected.has_sorted_indices
