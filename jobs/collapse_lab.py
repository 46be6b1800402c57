"""The model-collapse lab (issue #12): what cleanwell's guardrails do to a model trained on its own output.

Generation 0 is an interpolated Kneser-Ney n-gram model (udfs/ngram_lm.py) over sentencepiece pieces,
trained on human text. Every later generation is trained on a corpus built under one *regime* from what
earlier generations wrote, sampled at one temperature:

- ``replace``: the previous generation's samples only (Shumailov et al., 2024);
- ``accumulate``: every human document and every earlier sample (Gerstgrasser et al., 2024);
- ``curated``: the accumulated pool through cleanwell's own code: provenance labels (human / synthetic and
  the generation that wrote it), exact duplicates (``udfs.text.content_hash``), near duplicates (MinHash
  and LSH of udfs/minhash.py and udfs/lsh.py, verified by exact Jaccard), the detector
  (``udfs.classifier.train_detector``, threshold at a target false-positive rate on held-out human text)
  and the synthetic cap with the human core kept (``udfs.mixing.greedy_fill``, the sampling job's fill);
- ``curated_feedback``: as curated, and each sample is the most human-like of ``best_of`` candidates by
  the detector (rejection sampling with a verifier, Feng et al., 2024).

Per generation, regime and temperature it measures held-out perplexity (human text never trained on),
tail coverage, distinct-n, vocabulary size, unigram KL to the human reference, the synthetic share of the
training set and the detector's AUROC on that generation's samples (udfs/collapse.py has the exact
definitions). Results: an MLflow run (params, metrics with the generation as step, figures and results as
artifacts), and in ``collapse_lab.output_dir`` one PNG per metric, ``report.html`` and ``results.json``.

Two engines (``collapse_lab.engine``, ``--engine``). ``numpy`` (default) curates in one process with the
functions the pipeline's steps call (:func:`curate`); the lab's corpora are thousands of documents.
``spark`` runs each generation's curation through the pipeline's own steps on Delta tables
(:class:`SparkCuration`): the pool becomes ingest sources with their provenance, and the gold mixture
the sampling job publishes is the next training set. This module is therefore an entry point (it runs
the registry's steps), like jobs.pipeline.
"""
from __future__ import annotations

import base64
import html
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from jobs.common.config import Config
from jobs.common.errors import InputError
from jobs.common.labelled import read_labelled
from udfs.classifier import DetectorBundle, train_detector
from udfs.collapse import (
    distinct_n,
    perplexity,
    sample_sequences,
    tail_coverage,
    tail_ngrams,
    unigram_kl,
    vocabulary_size,
)
from udfs.lsh import band_hashes, candidate_pairs, optimal_bands_rows
from udfs.minhash import minhash_signatures
from udfs.mixing import Candidate, greedy_fill
from udfs.neardup import exact_jaccard_of_text_pairs
from udfs.ngram_lm import NGramLM, train_ngram_lm
from udfs.text import content_hash
from udfs.tokenizer import Tokenizer, train_tokenizer

METRICS = ("heldout_perplexity", "tail_coverage", "distinct_n", "vocabulary_size", "unigram_kl",
           "synthetic_share", "detector_auroc")
METRIC_LABELS = {
    "heldout_perplexity": "perplexity of held-out human text (lower is better)",
    "tail_coverage": "share of the human reference's rare n-grams in the samples",
    "distinct_n": "distinct n-grams / n-grams in the samples",
    "vocabulary_size": "distinct pieces used by the samples",
    "unigram_kl": "KL(human || samples) of piece frequencies, nats",
    "synthetic_share": "synthetic share of the training set's tokens",
    "detector_auroc": "detector AUROC, samples vs held-out human text",
}
# Near duplicates in the curated pool: word 5-gram shingles, 64 permutations, Jaccard >= this.
NEAR_DUPLICATE_JACCARD = 0.8
_NUM_PERM = 64


@dataclass
class Document:
    """One document of a training pool, with its provenance."""

    ids: np.ndarray
    text: str
    origin: str  # "human" or "synthetic"
    generation: int  # the generation whose model wrote it (-1: human)
    detector_score: float = float("nan")


@dataclass
class Lab:
    """Everything fixed across regimes: the tokenizer, the human split, the detector."""

    tokenizer: Tokenizer
    human: list[Document]
    held_out_ids: list[np.ndarray]
    held_out_texts: list[str]
    reference_tail: set
    detector: DetectorBundle
    threshold: float
    held_out_scores: np.ndarray
    settings: Any = None
    timings: dict[str, float] = field(default_factory=dict)


def human_pieces(texts: list[str], tokenizer: Tokenizer, length: int) -> list[np.ndarray]:
    """Each text's ids cut into consecutive pieces of ``length`` (a shorter last piece is dropped)."""
    pieces = []
    for ids in tokenizer.encode_ids(texts):
        pieces += [ids[start:start + length] for start in range(0, ids.size - length + 1, length)]
    return pieces


def prepare(cfg: Config, progress: Callable[[str], None]) -> Lab:
    """Split the human texts by document (held-out documents are never trained on), train the tokenizer
    on the training documents, cut both sides into pieces, and train the detector on human training
    pieces against samples of the generation-0 model."""
    c = cfg.collapse_lab
    texts = list(dict.fromkeys(t.text for t in read_labelled(c.human_files) if t.label == 0))
    if len(texts) < 10:
        raise InputError(f"collapse_lab.human_files hold {len(texts)} distinct human texts; at least 10 are needed")
    order = np.random.default_rng(c.seed).permutation(len(texts))
    n_held = max(2, int(round(c.held_out_fraction * len(texts))))
    held_texts = [texts[i] for i in order[:n_held]]
    train_texts = [texts[i] for i in order[n_held:]]
    tokenizer = Tokenizer(train_tokenizer(train_texts, vocab_size=c.vocab_size, seed=c.seed))
    train_ids = human_pieces(train_texts, tokenizer, c.sequence_tokens)[:c.documents_per_generation]
    held_out_ids = human_pieces(held_texts, tokenizer, c.sequence_tokens)
    human = [Document(ids, text, "human", -1) for ids, text in zip(train_ids, tokenizer.decode_ids(train_ids),
                                                                    strict=True)]
    progress(f"human text: {len(train_texts)} training documents -> {len(human)} pieces of {c.sequence_tokens} "
             f"tokens; {len(held_texts)} held-out documents -> {len(held_out_ids)} pieces")
    generation_0 = train_ngram_lm(train_ids, tokenizer.vocab_size, c.lm_order)
    samples = sample_sequences(generation_0, len(human), c.sequence_tokens, 1.0, seed=c.seed + 7919,
                               excluded_ids=tokenizer.control_ids)
    sample_texts = tokenizer.decode_ids(samples)
    detector = train_detector([d.text for d in human] + sample_texts, [0] * len(human) + [1] * len(samples),
                              tokenizer.to_bytes(), params=None)
    threshold = detector.threshold_at_fpr(c.detector_target_fpr)
    progress(f"detector trained on {len(human)} human pieces and {len(samples)} generation-0 samples; "
             f"threshold at {c.detector_target_fpr:.0%} FPR: {threshold:.3f}")
    held_out_texts = tokenizer.decode_ids(held_out_ids)
    held_out_scores = detector.score(held_out_texts)["synthetic_probability"].to_numpy()
    return Lab(tokenizer, human, held_out_ids, held_out_texts, tail_ngrams(train_ids, c.tail_ngram, c.tail_quantile),
               detector, threshold, held_out_scores, c)


# ---- curation: cleanwell's functions on a pool of documents ----------------------------------------

def exact_duplicates(pool: list[Document]) -> set[int]:
    """Indices of documents whose text hash an earlier document already has (udfs.text.content_hash)."""
    seen: set[str] = set()
    dropped = set()
    for i, document in enumerate(pool):
        digest = content_hash(document.text)
        if digest in seen:
            dropped.add(i)
        seen.add(digest)
    return dropped


def near_duplicates(pool: list[Document], threshold: float = NEAR_DUPLICATE_JACCARD) -> set[int]:
    """Indices of documents with a verified near duplicate earlier in the pool: MinHash signatures, LSH
    candidate pairs, exact Jaccard of word 5-gram shingles >= ``threshold`` (the neardup step's
    functions; here the later document of a pair goes, where the pipeline keeps one per component)."""
    texts = [d.text for d in pool]
    if len(texts) < 2:
        return set()
    bands, rows = optimal_bands_rows(threshold, _NUM_PERM)
    pairs = candidate_pairs(band_hashes(minhash_signatures(texts, num_perm=_NUM_PERM), bands, rows))
    if pairs.size == 0:
        return set()
    similarity = exact_jaccard_of_text_pairs([texts[i] for i in pairs[:, 0]], [texts[j] for j in pairs[:, 1]])
    return {int(j) for (_, j), value in zip(pairs, similarity, strict=True) if value >= threshold}


def curate(pool: list[Document], lab: Lab) -> tuple[list[Document], dict[str, int]]:
    """The pool as the sampling job would mix it: duplicates out, synthetic documents the detector calls
    synthetic out, then every human document and synthetic ones (most human-like first) while the
    synthetic share of tokens stays under ``synthetic_cap``. Returns the training set and the count removed
    per reason."""
    exact = exact_duplicates(pool)
    near = near_duplicates(pool) - exact
    detected = {i for i, d in enumerate(pool) if d.origin == "synthetic" and d.detector_score >= lab.threshold}
    detected -= exact | near
    kept = [i for i in range(len(pool)) if i not in exact | near | detected]
    human_tokens = float(sum(pool[i].ids.size for i in kept if pool[i].origin == "human"))
    cap = lab.settings.synthetic_cap
    budget = human_tokens / (1 - cap)
    synthetic = sorted((i for i in kept if pool[i].origin == "synthetic"), key=lambda i: (pool[i].detector_score, i))
    human = [i for i in kept if pool[i].origin == "human"]
    candidates = [Candidate(i, pool[i].origin, pool[i].origin, int(pool[i].ids.size), pool[i].origin == "synthetic")
                  for i in human + synthetic]
    chosen = greedy_fill(candidates, 0.0, budget, 0.0, {}, {"human": 1 - cap, "synthetic": cap},
                         synthetic_room=cap * budget, source_room={})
    removed = {"exact_duplicate": len(exact), "near_duplicate": len(near), "detector": len(detected),
               "synthetic_cap": len(kept) - len(chosen)}
    return [pool[i] for i in sorted(chosen)], removed


class SparkCuration:
    """``--engine spark``: each generation's curation is a run of the pipeline's steps on Delta tables.

    Every regime x temperature has its own lake under ``<output_dir>/spark/``. Its sources are JSONL files
    written once each: ``human`` (the human training pieces, origin human) and ``g<k>`` (generation k's
    samples, origin synthetic, generator ``collapse-lab-g<k>``), every record carrying its index in the pool
    (``metadata.lab_index``). A generation adds its source, and the steps run as in ``cleanwell run``
    (ingest merges the new documents in; dedup, neardup, quality, tokenize, detect and embed score them;
    report is left out) with the lab's mixture (:meth:`write_mixture`); the gold rows are the next training set.
    What the pipeline decides differs from :func:`curate` in two ways: declared synthetic documents are
    judged by the synthetic-source validation against the human reference (the detector decides only for
    documents of undeclared origin), and the cap and budget count the pipeline tokenizer's tokens."""

    SKIPPED_STEPS = ("report",)

    def __init__(self, cfg: Config, progress: Callable[[str], None]) -> None:
        self.cfg = cfg
        self.progress = progress
        self.root = Path(cfg.collapse_lab.output_dir).resolve() / "spark"
        if self.root.exists():
            # Derived data of an earlier lab run: its sources were another run's samples (written once a
            # generation), so they must not leak into this run's pools.
            progress(f"replacing the earlier lab lakes in {self.root}")
            shutil.rmtree(self.root)

    def lake(self, run: str) -> Path:
        regime, _, temperature = run.partition("@")
        return self.root / f"{regime}_T{temperature}"

    def write_sources(self, pool: list[Document], lake: Path) -> list[dict[str, Any]]:
        """One JSONL source per generation of the pool (human first); files already written stay."""
        generations = sorted({d.generation for d in pool})
        sources = []
        for generation in generations:
            name = "human" if generation < 0 else f"g{generation}"
            path = lake / "sources" / name / "part-0.jsonl"
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                lines = [json.dumps({"text": d.text, "lab_index": i}) for i, d in enumerate(pool)
                         if d.generation == generation]
                path.write_text("\n".join(lines) + "\n", encoding="utf-8")
            defaults = {"origin": "human", "domain": "human", "license": "collapse-lab", "language": "en"} \
                if generation < 0 else {"origin": "synthetic", "domain": "synthetic", "license": "collapse-lab",
                                        "language": "en", "generator": f"collapse-lab-g{generation}"}
            sources.append({"name": name, "path": str(path.parent), "format": "jsonl", "defaults": defaults})
        return sources

    def write_mixture(self, lake: Path, sources: list[dict[str, Any]], human_tokens: int) -> None:
        """The lab's mixture: every eligible human document (the core) and synthetic ones up to
        ``synthetic_cap`` of the tokens. The budget is the human tokens over (1 - cap); the gates' budget and
        weight tolerances are wide because the lab publishes what the guardrails leave, not a fixed size."""
        import yaml

        cap = self.cfg.collapse_lab.synthetic_cap
        mixture = {
            "name": "collapse_lab", "token_budget": max(1, int(human_tokens / (1 - cap))), "budget_tolerance": 0.9,
            "seed": self.cfg.collapse_lab.seed, "group_by": "domain",
            "weights": {"human": 1 - cap, "synthetic": cap} if cap > 0 else {"human": 1.0},
            "weight_tolerance": 1.0, "max_synthetic_share": cap, "max_source_share": 1.0, "max_epochs": 1,
            "cluster_temperature": 1.0,
            # Pieces are cut mid-sentence, so the document-shape rules (Gopher, C4) would judge the cut.
            "filters": {"exclude_duplicates": True, "languages": ["en"], "min_words": 10, "quality_rules": False,
                        "detector_target_fpr": self.cfg.collapse_lab.detector_target_fpr},
            "synthetic": {"vetted_sources": [s["name"] for s in sources if s["name"] != "human"]},
            "export": {"format": "none"},
        }
        (lake / "mixture.yaml").write_text(yaml.safe_dump(mixture, sort_keys=False), encoding="utf-8")

    def config(self, lake: Path, sources: list[dict[str, Any]]) -> Config:
        tree = self.cfg.model_dump(mode="json")
        tree["lake"] = {"root": str(lake / "lake"), "catalog": None}
        tree["ingest"]["sources"] = sources
        # The mixture file is written just before the sample step (its budget needs silver's tokens).
        tree["sample"] = {"mixture": str(lake / "mixture.yaml"), "manifest_dir": str(lake / "manifests")}
        # Its own registered detector: the champion alias must not move the user's pipeline detector.
        tree["detect"]["registered_model"] = f"collapse-lab-{lake.name.replace('.', '_')}"
        return Config.model_validate(tree)

    def __call__(self, pool: list[Document], lab: Lab, run: str, generation: int) -> tuple[list[Document],
                                                                                            dict[str, int]]:
        from pyspark.sql import functions as F

        from jobs.common import tables
        from jobs.common.runner import execute
        from jobs.common.session import get_spark
        from jobs.pipeline import STEPS

        lake = self.lake(run)
        sources = self.write_sources(pool, lake)
        cfg = self.config(lake, sources)
        spark = get_spark(cfg)
        steps = [s for s in STEPS if s.name not in self.SKIPPED_STEPS]
        began = time.perf_counter()
        timings: dict[str, float] = {}
        for step in steps:
            if step.name == "sample":
                silver = tables.read_table(spark, tables.table_ref(cfg, "silver")).agg(
                    F.count("*").alias("rows"),
                    F.sum(F.when(F.col("origin") == "human", F.col("n_tokens"))).alias("human_tokens")).first()
                self.write_mixture(lake, sources, int(silver["human_tokens"] or 0))
            outcome = execute(step, spark, cfg, steps=STEPS, echo=lambda line: None)
            timings[step.name] = round(outcome.seconds, 1)
        gold = tables.read_table(spark, tables.table_ref(cfg, "gold")).where(F.col("mixture") == "collapse_lab")
        chosen = sorted({int(r["i"]) for r in gold.select(F.col("metadata")["lab_index"].alias("i")).collect()})
        excluded = {r["reason"]: int(r["count"]) for r in tables.read_table(spark, tables.table_ref(cfg, "exclusions"))
                    .where(F.col("mixture") == "collapse_lab").groupBy("reason").count().collect()}
        removed = {**excluded, "exact_duplicate": len(pool) - silver["rows"],
                   "not_selected": silver["rows"] - sum(excluded.values()) - len(chosen)}
        self.progress(f"[{run}] generation {generation}: pipeline on {lake / 'lake'} in "
                      f"{time.perf_counter() - began:.0f} s ({timings}): {len(chosen)} of {len(pool)} pool documents "
                      f"in gold, removed {removed}")
        return [pool[i] for i in chosen], removed


# ---- one regime at one temperature ----------------------------------------------------------------

def _score(lab: Lab, documents: list[Document]) -> None:
    scores = lab.detector.score([d.text for d in documents])["synthetic_probability"].to_numpy()
    for document, value in zip(documents, scores, strict=True):
        document.detector_score = float(value)


def _samples(lab: Lab, lm: NGramLM, generation: int, temperature: float, feedback: bool,
             seed: int) -> list[Document]:
    c = lab.settings
    n = len(lab.human)
    draws = c.best_of if feedback else 1
    ids = sample_sequences(lm, n * draws, c.sequence_tokens, temperature, seed=seed,
                           excluded_ids=lab.tokenizer.control_ids)
    documents = [Document(s, text, "synthetic", generation) for s, text in zip(ids, lab.tokenizer.decode_ids(ids),
                                                                                strict=True)]
    _score(lab, documents)
    if not feedback:
        return documents
    # best of n: each group of `draws` candidates keeps its most human-like by the verifier
    return [min(documents[k * draws:(k + 1) * draws], key=lambda d: d.detector_score) for k in range(n)]


Curator = Callable[[list[Document], Lab, str, int], tuple[list[Document], dict[str, int]]]


def run_regime(lab: Lab, regime: str, temperature: float, generations: int,
               progress: Callable[[str], None], curator: Curator) -> dict[str, list[float]]:
    """Metrics per generation (index 0 = the human-trained model) of one regime at one temperature."""
    c = lab.settings
    series: dict[str, list[float]] = {metric: [] for metric in METRICS}
    series["removed"] = []
    series["training_documents"] = []
    training = list(lab.human)
    pool = list(lab.human)
    previous: list[Document] = []
    for generation in range(generations + 1):
        if generation > 0:
            if regime == "replace":
                training = previous
            else:
                pool = pool + previous
                training, removed = curator(pool, lab, f"{regime}@{temperature}", generation) \
                    if regime.startswith("curated") else (pool, {})
                series["removed"].append(removed)
        lm = train_ngram_lm([d.ids for d in training], lab.tokenizer.vocab_size, c.lm_order)
        seed = c.seed + 1000 * generation + int(temperature * 100)
        previous = _samples(lab, lm, generation, temperature, regime == "curated_feedback", seed)
        sample_ids = [d.ids for d in previous]
        tokens = sum(d.ids.size for d in training)
        series["training_documents"].append(len(training))
        labels = np.r_[np.zeros(len(lab.held_out_texts)), np.ones(len(previous))]
        values = {
            "heldout_perplexity": perplexity(lm, lab.held_out_ids),
            "tail_coverage": tail_coverage(lab.reference_tail, sample_ids, c.tail_ngram),
            "distinct_n": distinct_n(sample_ids, c.tail_ngram),
            "vocabulary_size": vocabulary_size(sample_ids),
            "unigram_kl": unigram_kl([d.ids for d in lab.human], sample_ids, lab.tokenizer.vocab_size),
            "synthetic_share": sum(d.ids.size for d in training if d.origin == "synthetic") / tokens,
            "detector_auroc": roc_auc_score(labels, np.r_[lab.held_out_scores, [d.detector_score for d in previous]]),
        }
        for metric, value in values.items():
            series[metric].append(float(value))
        progress(f"[{regime} T={temperature}] generation {generation}: " + ", ".join(
            f"{metric} {values[metric]:.3g}" for metric in ("heldout_perplexity", "tail_coverage", "synthetic_share")))
    return series


# ---- outputs ------------------------------------------------------------------------------------

def figures(results: dict[str, Any]) -> dict[str, bytes]:
    """One PNG per metric: generation on x, a line per regime x temperature."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pngs = {}
    for metric in METRICS:
        figure, axes = plt.subplots(figsize=(6.4, 3.8))
        for name, series in results["series"].items():
            regime, _, temperature = name.partition("@")
            axes.plot(range(len(series[metric])), series[metric], marker="o", markersize=3,
                      linestyle="-" if temperature == "1.0" else "--", label=name)
        axes.set_xlabel("generation")
        axes.set_title(METRIC_LABELS[metric], fontsize=10)
        axes.legend(fontsize=7, ncol=2)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100)
        plt.close(figure)
        pngs[f"{metric}.png"] = buffer.getvalue()
    return pngs


def summary_table(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Generation 0 and the last generation of every regime x temperature, for the report and README."""
    rows = []
    for name, series in results["series"].items():
        rows.append({"run": name, **{f"{metric}@0": round(series[metric][0], 4) for metric in METRICS},
                     **{f"{metric}@last": round(series[metric][-1], 4) for metric in METRICS}})
    return rows


def html_report(results: dict[str, Any], pngs: dict[str, bytes]) -> str:
    last = results["generations"]
    header = "".join(f"<th>{html.escape(m)}<br>gen 0 → {last}</th>" for m in METRICS)
    body = "".join(
        "<tr><td>" + html.escape(row["run"]) + "</td>" + "".join(
            f"<td>{row[f'{m}@0']:.4g} → {row[f'{m}@last']:.4g}</td>" for m in METRICS) + "</tr>"
        for row in summary_table(results))
    images = "".join(f'<figure><img src="data:image/png;base64,{base64.b64encode(data).decode()}">'
                     f"<figcaption>{html.escape(name)}</figcaption></figure>" for name, data in pngs.items())
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>cleanwell collapse lab</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;font-size:12px}figure{display:inline-block}</style>"
            f"</head><body><h1>Model-collapse lab</h1><p>{html.escape(json.dumps(results['settings']))}</p>"
            f"<table><tr><th>regime @ temperature</th>{header}</tr>{body}</table>{images}</body></html>")


def run_lab(cfg: Config, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Every regime at every temperature for ``collapse_lab.generations`` generations; returns the results
    (``series``: {"regime@T": {metric: [value per generation]}})."""
    c = cfg.collapse_lab
    began = time.perf_counter()
    lab = prepare(cfg, progress)
    curator = SparkCuration(cfg, progress) if c.engine == "spark" else \
        (lambda pool, lab_, run, generation: curate(pool, lab_))
    series = {}
    for temperature in c.temperatures:
        for regime in c.regimes:
            series[f"{regime}@{temperature}"] = run_regime(lab, regime, temperature, c.generations, progress,
                                                           curator)
    return {"settings": c.model_dump(mode="json"), "generations": c.generations, "threshold": lab.threshold,
            "human_pieces": len(lab.human), "held_out_pieces": len(lab.held_out_ids),
            "seconds": round(time.perf_counter() - began, 1), "series": series}


def write_outputs(results: dict[str, Any], output_dir: str) -> dict[str, bytes]:
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    pngs = figures(results)
    for name, data in pngs.items():
        (out / name).write_bytes(data)
    (out / "report.html").write_text(html_report(results, pngs), encoding="utf-8")
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return pngs


def main(cfg: Config, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """``cleanwell collapse-lab``: run the lab in an MLflow run and write its outputs."""
    import mlflow

    from jobs.common.tracking import tracked_run

    with tracked_run(cfg, "collapse-lab", params={"collapse_lab": cfg.collapse_lab.model_dump(mode="json")}) as log:
        results = run_lab(cfg, progress)
        for name, series in results["series"].items():
            for metric in METRICS:
                for generation, value in enumerate(series[metric]):
                    mlflow.log_metric(f"{name.replace('@', '.T')}.{metric}", value, step=generation)
        pngs = write_outputs(results, cfg.collapse_lab.output_dir)
        for name, data in pngs.items():
            log.artifact_bytes(data, f"collapse_lab/{name}")
        log.artifact_json(results, "collapse_lab/results.json")
        log.artifact_text(html_report(results, pngs), "collapse_lab/report.html")
        results["mlflow_run_id"] = log.run_id
    return results
