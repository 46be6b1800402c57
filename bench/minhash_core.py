"""Near-duplicate test corpora with known ground truth, and the benchmark of the MinHash/LSH core.

As a library (tests and other benchmarks import it): :func:`near_duplicate_corpus` composes ~190-word
documents from real M4 sentences (human and machine text) and plants near-duplicate variants with realistic
edits; :func:`exact_jaccard_pairs` is the brute-force ground truth; :func:`precision_recall` scores pairs.

As a benchmark (``python -m bench.minhash_core``, part of ``make bench``): signature throughput of
``udfs.minhash`` against datasketch on one core, and precision/recall of the LSH reference per candidate
threshold; results go to ``bench/results/minhash_core.json``.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xxhash
from datasketch import MinHash
from scipy.sparse import csr_matrix, triu

from udfs.lsh import band_hashes, candidate_pairs, near_duplicate_pairs, optimal_bands_rows
from udfs.minhash import SCHEMES, Scheme, minhash_signatures, permutations, shingles

REPO_ROOT = Path(__file__).resolve().parent.parent
M4_DIR = REPO_ROOT / "data" / "m4"
RESULTS_PATH = REPO_ROOT / "bench" / "results" / "minhash_core.json"

# Sentence ends: . ! ? followed by whitespace, or a line break (M4 texts put headings and list items on
# their own lines).
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\s*\n+\s*")
# Boilerplate that scrapers add around the same article on different sites; lengths 2-9 words so that
# even 1% edit budgets on ~180 words can afford the short ones.
_HEADERS = (
    "Skip to content",
    "Advertisement",
    "From Wikipedia, the free encyclopedia",
    "Home » Articles » Reference",
    "Updated: 12 March 2023 | Reading time: 4 min",
    "This page was archived by the Wayback Machine",
)
_FOOTERS = (
    "Share this:",
    "All rights reserved.",
    "Share on Facebook Share on Twitter Email",
    "Click here to subscribe to our newsletter.",
    "Text is available under the Creative Commons Attribution-ShareAlike License.",
    "Related posts",
)


@dataclass(frozen=True)
class NearDuplicateCorpus:
    """Documents with planted near-duplicates. ``source[i]`` is the index of the document that document
    ``i`` was edited from (-1 for an original), ``edit_rate[i]`` the fraction of its words edited."""

    ids: list[str]
    texts: list[str]
    source: np.ndarray
    edit_rate: np.ndarray


def m4_texts(data_dir: Path = M4_DIR) -> Iterator[str]:
    """Every ``human_text`` and ``machine_text`` of the M4 sample, in file and line order."""
    paths = sorted(data_dir.glob("*.jsonl"))
    if not paths:
        raise FileNotFoundError(f"no *.jsonl in {data_dir}: the M4 sample ships in data/m4/")
    for path in paths:
        for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            record = json.loads(line)
            for field in ("human_text", "machine_text"):
                if field not in record:
                    raise KeyError(f"field `{field}` missing in {path}:{line_number}; found: {', '.join(record)}")
                yield record[field]


def m4_sentences(data_dir: Path = M4_DIR) -> list[str]:
    """Sentences of 4-60 words from every ``human_text`` and ``machine_text`` of the M4 sample, in file
    order, deduplicated (a sentence repeated across records would plant unintended overlap)."""
    sentences: dict[str, None] = {}
    for text in m4_texts(data_dir):
        for sentence in _SENTENCE_BREAK.split(text):
            if 4 <= len(sentence.split()) <= 60:
                sentences.setdefault(sentence.strip())
    return list(sentences)


def _compose_document(sentences: Sequence[str], rng: np.random.Generator, words_per_doc: int) -> str:
    chosen: list[str] = []
    words = 0
    while words < words_per_doc:
        sentence = sentences[rng.integers(len(sentences))]
        chosen.append(sentence)
        words += len(sentence.split())
    return " ".join(chosen)


def _edit_document(text: str, edit_rate: float, vocabulary: Sequence[str], rng: np.random.Generator) -> str:
    """Edit about ``edit_rate`` of the words: boilerplate header/footer and truncation take part of the
    budget when they fit, word insertions, deletions, substitutions and adjacent swaps the rest."""
    words = text.split()
    budget = max(1, round(edit_rate * len(words)))
    header: list[str] = []
    footer: list[str] = []
    for boilerplate, chosen in ((_HEADERS, header), (_FOOTERS, footer)):
        affordable = [option for option in boilerplate if len(option.split()) <= budget - 1]
        if affordable and rng.random() < 0.3:
            chosen.extend(affordable[rng.integers(len(affordable))].split())
            budget -= len(chosen)
    if budget >= 2 and rng.random() < 0.25:
        cut = int(rng.integers(1, budget // 2 + 1))
        words = words[:-cut]
        budget -= cut
    for _ in range(budget):
        position = int(rng.integers(len(words)))
        operation = rng.integers(4)
        if operation == 0:
            words.insert(position, vocabulary[rng.integers(len(vocabulary))])
        elif operation == 1 and len(words) > 1:
            del words[position]
        elif operation == 2:
            words[position] = vocabulary[rng.integers(len(vocabulary))]
        elif position + 1 < len(words):
            words[position], words[position + 1] = words[position + 1], words[position]
    return " ".join(header + words + footer)


def near_duplicate_corpus(
    n_docs: int,
    seed: int = 0,
    words_per_doc: int = 180,
    duplicate_fraction: float = 0.3,
    edit_rate_range: tuple[float, float] = (0.01, 0.06),
    data_dir: Path = M4_DIR,
) -> NearDuplicateCorpus:
    """``n_docs`` documents, the same for the same arguments. Originals are random M4 sentences up to
    ``words_per_doc`` words; ``duplicate_fraction`` of the documents are variants of an earlier document
    (an original 80% of the time, else another variant, which makes chains and clusters of 3+), edited at
    a rate drawn uniformly from ``edit_rate_range``. Order is shuffled; ids are ``doc-00000``, ..."""
    rng = np.random.default_rng(seed)
    sentences = m4_sentences(data_dir)
    vocabulary = sorted({word for sentence in sentences for word in sentence.split()})
    n_variants = round(n_docs * duplicate_fraction)
    n_originals = n_docs - n_variants
    texts = [_compose_document(sentences, rng, words_per_doc) for _ in range(n_originals)]
    source = [-1] * n_originals
    edit_rate = [0.0] * n_originals
    for _ in range(n_variants):
        if rng.random() < 0.8 or len(texts) == n_originals:
            origin = int(rng.integers(n_originals))
        else:
            origin = int(rng.integers(n_originals, len(texts)))
        rate = float(rng.uniform(*edit_rate_range))
        texts.append(_edit_document(texts[origin], rate, vocabulary, rng))
        source.append(origin)
        edit_rate.append(rate)
    order = rng.permutation(n_docs)
    new_position = np.empty(n_docs, dtype=np.int64)
    new_position[order] = np.arange(n_docs)
    old_source = np.array(source, dtype=np.int64)[order]
    return NearDuplicateCorpus(
        ids=[f"doc-{i:05d}" for i in range(n_docs)],
        texts=[texts[i] for i in order],
        source=np.where(old_source >= 0, new_position[np.maximum(old_source, 0)], -1),
        edit_rate=np.array(edit_rate)[order],
    )


def exact_jaccard_pairs(shingle_sets: Sequence[set[bytes]], threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Brute force: every pair ``i < j`` with exact Jaccard >= ``threshold`` (int64 ``(n, 2)``, sorted) and
    its Jaccard. Intersections of all pairs at once as a sparse product, so a few thousand documents take
    a second; pairs with an empty union are never returned."""
    shingle_index: dict[bytes, int] = {}
    columns = [shingle_index.setdefault(s, len(shingle_index)) for shingles in shingle_sets for s in shingles]
    row_lengths = np.array([len(shingles) for shingles in shingle_sets], dtype=np.int64)
    incidence = csr_matrix(
        (np.ones(len(columns), dtype=np.int32), np.array(columns, dtype=np.int64), np.r_[0, np.cumsum(row_lengths)]),
        shape=(len(shingle_sets), max(1, len(shingle_index))),
    )
    intersections = triu(incidence @ incidence.T, k=1).tocoo()
    left, right = intersections.row.astype(np.int64), intersections.col.astype(np.int64)
    jaccard = intersections.data / (row_lengths[left] + row_lengths[right] - intersections.data)
    keep = jaccard >= threshold
    order = np.lexsort((right[keep], left[keep]))
    return np.column_stack([left[keep], right[keep]])[order], jaccard[keep][order]


def precision_recall(predicted: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Pair-level precision and recall of ``predicted`` against ``truth`` (both ``(n, 2)`` with ``i < j``).
    An empty prediction has precision 1.0; an empty truth has recall 1.0."""
    predicted_set = set(map(tuple, predicted.tolist()))
    truth_set = set(map(tuple, truth.tolist()))
    hits = len(predicted_set & truth_set)
    precision = hits / len(predicted_set) if predicted_set else 1.0
    recall = hits / len(truth_set) if truth_set else 1.0
    return precision, recall


def _signature_throughput(texts: Sequence[str], num_perm: int, rounds: int = 5) -> dict[str, dict[str, float]]:
    """Docs/s of ``minhash_signatures`` and of datasketch, per scheme, in one process: the best of ``rounds``
    rounds, each running every variant once (interleaved, so that load from other processes hits all alike).

    datasketch is measured three ways, from the most to the least favourable to it: ``update_batch`` alone
    (shingles built and MinHash objects constructed beforehand, a C hash function: xxh32 for affine32,
    xxh3_64 otherwise); text to signature with those shortcuts (MinHash sharing precomputed permutations);
    text to signature as commonly written (``MinHash(num_perm, seed, hashfunc)`` per document, which draws
    its permutations again each time). All use our tokens and shingles."""
    shingle_lists = [shingles(text) for text in texts]

    def ours(scheme: Scheme) -> float:
        start = time.perf_counter()
        minhash_signatures(texts, num_perm, scheme=scheme)
        return time.perf_counter() - start

    def update_batch_only(scheme: Scheme) -> float:
        c_hash, perms = _c_hash(scheme), permutations(num_perm, 1, scheme)
        sketches = [MinHash(num_perm, seed=1, hashfunc=c_hash, permutations=perms, scheme=scheme) for _ in texts]
        start = time.perf_counter()
        for sketch, shingle_list in zip(sketches, shingle_lists, strict=True):
            sketch.update_batch(shingle_list)
        return time.perf_counter() - start

    def text_to_signature_shared_permutations(scheme: Scheme) -> float:
        c_hash, perms = _c_hash(scheme), permutations(num_perm, 1, scheme)
        start = time.perf_counter()
        for text in texts:
            MinHash(num_perm, seed=1, hashfunc=c_hash, permutations=perms, scheme=scheme).update_batch(shingles(text))
        return time.perf_counter() - start

    def text_to_signature_per_document(scheme: Scheme) -> float:
        c_hash = _c_hash(scheme)
        start = time.perf_counter()
        for text in texts:
            MinHash(num_perm, seed=1, hashfunc=c_hash, scheme=scheme).update_batch(shingles(text))
        return time.perf_counter() - start

    variants = {
        "ours_text_to_signature": ours,
        "datasketch_update_batch_only": update_batch_only,
        "datasketch_text_to_signature_shared_permutations": text_to_signature_shared_permutations,
        "datasketch_text_to_signature_per_document": text_to_signature_per_document,
    }
    best = {(scheme, name): float("inf") for scheme in SCHEMES for name in variants}
    for _ in range(rounds):
        for scheme in SCHEMES:
            for name, run in variants.items():
                best[scheme, name] = min(best[scheme, name], run(scheme))
    return {scheme: {name: round(len(texts) / best[scheme, name]) for name in variants} for scheme in SCHEMES}


def _c_hash(scheme: Scheme) -> Callable[[bytes], int]:
    return xxhash.xxh32_intdigest if scheme == "affine32" else xxhash.xxh3_64_intdigest


def _candidate_threshold_sweep(
    corpus: NearDuplicateCorpus, threshold: float, candidate_thresholds: Sequence[float], num_perm: int
) -> list[dict[str, float]]:
    """Pair precision/recall of ``near_duplicate_pairs`` against brute-force exact Jaccard >= ``threshold``,
    per candidate threshold, for both verifications, and the number of candidate pairs to verify."""
    signatures = minhash_signatures(corpus.texts, num_perm)
    shingle_sets = [set(shingles(text)) for text in corpus.texts]
    truth, _similarities = exact_jaccard_pairs(shingle_sets, threshold)
    rows = []
    for candidate in candidate_thresholds:
        bands, band_rows = optimal_bands_rows(candidate, num_perm)
        candidates = candidate_pairs(band_hashes(signatures, bands, band_rows))
        row: dict[str, float] = {
            "candidate_threshold": candidate,
            "bands": bands,
            "rows": band_rows,
            "candidate_pairs": len(candidates),
        }
        for verification in ("signature", "shingles"):
            pairs = near_duplicate_pairs(
                signatures, threshold, candidate, verification=verification, shingle_sets=shingle_sets
            )
            row[f"{verification}_precision"], row[f"{verification}_recall"] = precision_recall(pairs, truth)
        rows.append(row)
    return rows


def main() -> None:
    corpus = near_duplicate_corpus(4000, seed=0)
    num_perm = 128
    throughput_texts = corpus.texts[:2000]
    results = {
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "load_average_1min_at_start": os.getloadavg()[0],
        },
        "documents": len(throughput_texts),
        "mean_words_per_document": float(np.mean([len(text.split()) for text in throughput_texts])),
        "num_perm": num_perm,
        "shingle": "word 5-grams",
        "docs_per_second_one_process": _signature_throughput(throughput_texts, num_perm),
        "candidate_threshold_sweep": {
            "corpus_documents": len(corpus.texts),
            "threshold": 0.8,
            "rows": _candidate_threshold_sweep(corpus, 0.8, (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8), num_perm),
        },
    }
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_PATH.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
