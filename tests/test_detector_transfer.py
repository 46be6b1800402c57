"""Leave-one-domain-out training and evaluation of the detector (issue 14): folds, calibration on
out-of-domain scores, sign-consistent stacking, thresholds at a target false-positive rate, and that no
part of the left-out domain reaches training."""
import json
from pathlib import Path

import numpy as np
import pytest

import udfs.classifier as classifier
from udfs.classifier import (
    DetectorTrainingError,
    domain_folds,
    leave_one_domain_out_evaluation,
    threshold_at_fpr,
    train_detector,
)
from udfs.detectors import prepare_texts
from udfs.tokenizer import train_tokenizer

M4 = Path(__file__).resolve().parents[1] / "data" / "m4"
PER_LABEL = 40  # texts per label and domain: enough for the folds, a few seconds per training


def _labelled(per_label: int = PER_LABEL) -> tuple[list[str], list[int], list[str]]:
    texts, labels, domains = [], [], []
    for name in ("wikipedia", "wikihow"):
        rows = [json.loads(line) for line in (M4 / f"{name}_llama2.jsonl").read_text(encoding="utf-8").splitlines()]
        for key, label in (("human_text", 0), ("machine_text", 1)):
            texts += [row[key] for row in rows[:per_label]]
            labels += [label] * per_label
            domains += [name] * per_label
    return texts, labels, domains


@pytest.fixture(scope="module")
def labelled() -> tuple[list[str], list[int], list[str]]:
    return _labelled()


def test_domain_folds_leave_out_each_two_label_domain_and_keep_one_label_domains_for_training() -> None:
    labels = np.array([0, 1] * 10 + [1] * 6)
    domains = ["a"] * 10 + ["b"] * 10 + ["only-machine"] * 6
    folds = domain_folds(domains, labels, min_per_label=5)
    assert [name for name, _, _ in folds] == ["a", "b"]
    for name, train_rows, held_out in folds:
        assert set(np.asarray(domains)[held_out]) == {name}
        assert name not in set(np.asarray(domains)[train_rows])
        assert set(train_rows) | set(held_out) == set(range(labels.size))
        assert {"only-machine"} <= set(np.asarray(domains)[train_rows])
    # one usable domain (or none given): no domain folds, training falls back to k-fold
    assert domain_folds(["a"] * 20, labels[:20], min_per_label=5) == []
    assert domain_folds(None, labels) == []
    with pytest.raises(DetectorTrainingError, match="domains but"):
        domain_folds(["a"], labels)


def test_threshold_at_fpr_calls_at_most_the_target_share_of_the_reference_synthetic() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random(1000)
    for target in (0.0, 0.005, 0.01, 0.05, 0.1):
        threshold = threshold_at_fpr(scores, target)
        called = np.mean(scores >= threshold)
        assert called <= target
        # the lowest such threshold: one score lower would call more than the target allows
        below = scores[scores < threshold].max()
        assert np.mean(scores >= below) > target
    assert threshold_at_fpr(np.array([0.2, 0.9, np.nan]), 0.0) > 0.9
    with pytest.raises(DetectorTrainingError):
        threshold_at_fpr(scores, 1.0)


def test_two_domains_calibrate_on_out_of_domain_scores_with_sign_consistent_weights(labelled) -> None:
    texts, labels, domains = labelled
    tokenizer = train_tokenizer(prepare_texts(texts), vocab_size=2000)
    bundle = train_detector(texts, labels, tokenizer, domains=domains)
    summary = bundle.training_summary
    assert summary["calibration"] == "leave-one-domain-out"
    assert summary["calibration_domains"] == ["wikihow", "wikipedia"]
    assert set(summary["domain_auroc"]) == {"wikihow", "wikipedia"}
    # every stacked signal's weight points the way the signal alone points (monotone combination)
    weights = bundle.stacker[-1].coef_[0]
    assert weights[0] > 0
    for name, weight in zip(bundle.params.stack_signals, weights[1:], strict=True):
        assert np.sign(weight) == bundle.orientation[name], name
    # the stacker's regularisation is the candidate with the best worst left-out domain
    tried = summary["stacker_c_worst_domain_auroc"]
    assert set(tried) == {str(c) for c in classifier.STACKER_C_CANDIDATES}
    assert tried[str(summary["stacker_c"])] == max(tried.values()) and bundle.params.stacker_c == summary["stacker_c"]
    # the human reference holds every human training text once, scored out of domain
    assert bundle.human_reference_scores.size == labels.count(0)
    assert np.all(np.diff(bundle.human_reference_scores) >= 0)
    assert bundle.threshold_at_fpr(0.05) <= bundle.threshold_at_fpr(0.01)
    # without domains: the k-fold calibration of before
    plain = train_detector(texts, labels, tokenizer)
    assert plain.training_summary["calibration"] == "5-fold" and plain.training_summary["domain_auroc"] == {}
    assert plain.training_summary["stacker_c_worst_domain_auroc"] == {} and plain.params.stacker_c == 1.0


def test_calibration_classifiers_never_see_the_domain_they_score(labelled, monkeypatch) -> None:
    texts, labels, domains = labelled
    counts = classifier.hashed_char_ngram_counts(prepare_texts(texts), dtype=np.float32)  # as training counts
    row_key = {counts[i].indices.tobytes() + counts[i].data.tobytes(): domains[i] for i in range(len(texts))}
    fitted: list[set[str]] = []
    scored: list[set[str]] = []
    fit, logit = classifier._NgramClassifier.fit.__func__, classifier._NgramClassifier.logit

    def domains_of(matrix, rows):
        rows = range(matrix.shape[0]) if rows is None else rows
        return {row_key[matrix[i].indices.tobytes() + matrix[i].data.tobytes()] for i in rows}

    def spy_fit(cls, matrix, dense, y, params, rows=None):
        fitted.append(domains_of(matrix, rows))
        return fit(cls, matrix, dense, y, params, rows)

    def spy_logit(self, matrix, dense, rows=None):
        scored.append(domains_of(matrix, rows))
        return logit(self, matrix, dense, rows)

    monkeypatch.setattr(classifier._NgramClassifier, "fit", classmethod(spy_fit))
    monkeypatch.setattr(classifier._NgramClassifier, "logit", spy_logit)
    train_detector(texts, labels, train_tokenizer(prepare_texts(texts), vocab_size=2000), domains=domains)
    # the final classifier first (it scores nothing here), then two calibration classifiers, each fitted on
    # one domain and scoring the other (fit and logit of a fold run together, in this order)
    assert fitted[0] == {"wikihow", "wikipedia"}
    assert fitted[1:] == [{"wikipedia"}, {"wikihow"}] and scored == [{"wikihow"}, {"wikipedia"}]


def test_leave_one_domain_out_evaluation_never_trains_on_the_left_out_domain(labelled, monkeypatch) -> None:
    texts, labels, domains = labelled
    domain_of = dict(zip(prepare_texts(texts), domains, strict=True))
    seen: list[tuple[str, set[str]]] = []
    train, tokenize = classifier.train_detector, classifier.train_tokenizer

    def spy_train(train_texts, *args, **kwargs):
        seen.append(("detector", {domain_of[t] for t in prepare_texts(train_texts)}))
        return train(train_texts, *args, **kwargs)

    def spy_tokenizer(train_texts, *args, **kwargs):
        seen.append(("tokenizer", {domain_of[t] for t in train_texts}))
        return tokenize(train_texts, *args, **kwargs)

    monkeypatch.setattr(classifier, "train_detector", spy_train)
    monkeypatch.setattr(classifier, "train_tokenizer", spy_tokenizer)
    result = leave_one_domain_out_evaluation(texts, labels, domains, vocab_size=2000)
    assert seen == [("tokenizer", {"wikipedia"}), ("detector", {"wikipedia"}),
                    ("tokenizer", {"wikihow"}), ("detector", {"wikihow"})]
    assert set(result) == {"wikihow", "wikipedia"}
    for left_out, fold in result.items():
        assert fold["trained_on"] == sorted({"wikihow", "wikipedia"} - {left_out})
        assert fold["metrics"]["n_human"] == fold["metrics"]["n_machine"] == PER_LABEL
        inputs = {c: fold["metrics"][f"{c}/auroc"] for c in classifier.DETECTOR_COLUMNS}
        assert fold["best_input_auroc"] == max(inputs.values())
        assert fold["combination_at_least_best_input"] == (fold["combination_auroc"] >= max(inputs.values()))
