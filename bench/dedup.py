"""Benchmark of near-duplicate removal: cleanwell's Spark job against datasketch and Spark MLlib.

    python -m bench.dedup                          # 10k, 100k and 1M documents (~12-15 min on 2 cores)
    python -m bench.dedup --sizes 10000,100000     # a quicker run

Writes ``bench/results/dedup.json`` and prints a table. The corpus is
:func:`bench.minhash_core.near_duplicate_corpus`: real M4 sentences composed into ~190-word documents,
30 % of them variants of another document with 1-6 % of the words edited (insertions, deletions,
substitutions, swaps, boilerplate, truncation). Measured in one run:

- **Signature throughput**, docs/s on one core (one process), text to signature on identical documents,
  best of three interleaved rounds. cleanwell: ``udfs.minhash.minhash_signatures`` (tokens, 5-word
  shingles, hashing and 128 permutations, all in the call). datasketch 2 ``MinHash.update_batch`` with its
  default hash (SHA-1), fed with the same shingles (``udfs.minhash.shingles``, counted in its time):
  ``datasketch default`` builds ``MinHash(128, seed=1)`` per document as its documentation shows (which
  draws the permutations again each time); ``datasketch shared permutations`` passes the permutations
  drawn once, so only hashing and permuting are timed.
- **End to end in Spark** (``local[2]``, a fresh JVM per run, from a Parquet file of ``doc_id, text``):
  cleanwell = signatures, banding, verification by exact Jaccard, connected components and the marked
  silver (``find_near_duplicates`` + ``choose_representatives``), written to the ``noop`` sink; MLlib =
  the same shingles (a pandas UDF calling ``udfs.minhash.shingles``), ``HashingTF(2**26, binary)``,
  ``MinHashLSH(numHashTables=5)`` and ``approxSimilarityJoin`` at Jaccard distance <= 0.2 (the pairs
  only: no clusters). Peak memory is the largest resident set of the run's whole process tree (Python
  driver, JVM, Python workers), sampled every 0.2 s from /proc (Linux).
- **Pair precision and recall** against brute-force exact Jaccard >= 0.8 over the same shingles
  (``bench.minhash_core.exact_jaccard_pairs``) on a sample of ``--sample`` documents of each corpus made
  of whole families (an original and all its variants; a uniform sample of 10,000 out of 1M documents
  would hold only ~15 true pairs): the pairs each system reports with both documents in the sample.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.minhash_core import exact_jaccard_pairs, near_duplicate_corpus, precision_recall

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_PATH = REPO_ROOT / "bench" / "results" / "dedup.json"
DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
THRESHOLD = 0.8
MLLIB_TABLES = 5
CANDIDATE_THRESHOLDS = (0.65, 0.5)
# Input splits of ~16 MB (the corpus is written in row groups of 10,000 documents, ~13 MB) so that both
# cores work from the first stage on, as they do on a silver table of many files.
SPARK_OVERRIDES = ["spark.master=local[2]", "spark.conf.spark.driver.memory=6g",
                   "spark.conf.spark.sql.files.maxPartitionBytes=16m"]


# --- corpus and ground truth -----------------------------------------------------------------------

def corpus_path(cache_dir: Path, size: int) -> Path:
    """Parquet ``doc_id, text, family`` of the corpus of ``size`` documents (generated once, then reused).
    ``family`` is the position of the original a document was derived from (its own for an original)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = cache_dir / f"near_duplicate_corpus_{size}_seed0.parquet"
    if not path.exists():
        corpus = near_duplicate_corpus(size, seed=0)
        family = np.arange(size)
        while np.any(corpus.source[family] >= 0):
            family = np.where(corpus.source[family] >= 0, corpus.source[family], family)
        tmp = path.with_suffix(".tmp")
        pq.write_table(pa.table({"doc_id": corpus.ids, "text": corpus.texts, "family": family}), tmp,
                       row_group_size=10_000)
        tmp.rename(path)
    return path


def sample_truth(path: Path, sample: int) -> tuple[list[str], np.ndarray]:
    """A sample of about ``sample`` documents made of whole families (an original and every variant
    derived from it; families in random order), so that it keeps the planted pairs a uniform sample of
    a large corpus would break up, and its pairs at exact Jaccard >= THRESHOLD by brute force."""
    import pyarrow.parquet as pq

    from udfs.minhash import shingles

    table = pq.read_table(path, columns=["doc_id", "text", "family"])
    family = table.column("family").to_numpy()
    order = np.argsort(family, kind="stable")
    if len(order) > sample:
        last_family = family[order[sample]]
        order = order[family[order] < last_family]
    table = table.take(order)
    ids, texts = table.column("doc_id").to_pylist(), table.column("text").to_pylist()
    truth, _ = exact_jaccard_pairs([set(shingles(text)) for text in texts], THRESHOLD)
    return ids, truth


def sample_scores(pairs: list[tuple[str, str]], ids: list[str], truth: np.ndarray) -> dict[str, float]:
    position = {doc_id: i for i, doc_id in enumerate(ids)}
    inside = [sorted((position[a], position[b])) for a, b in pairs if a in position and b in position]
    precision, recall = precision_recall(np.array(inside, dtype=np.int64).reshape(-1, 2), truth)
    return {"precision": round(precision, 4), "recall": round(recall, 4), "sample_pairs_reported": len(inside),
            "sample_pairs_true": len(truth)}


# --- signature throughput (one process = one core) ------------------------------------------------

def signature_throughput(texts: list[str], rounds: int = 3) -> dict[str, float]:
    from datasketch import MinHash

    from udfs.minhash import minhash_signatures, shingles

    default = MinHash(128, seed=1)
    shared, scheme = default.permutations, default.scheme

    def cleanwell() -> None:
        minhash_signatures(texts, 128, seed=1)

    def datasketch_default() -> None:
        for text in texts:
            MinHash(128, seed=1).update_batch(shingles(text))

    def datasketch_shared_permutations() -> None:
        for text in texts:
            MinHash(128, seed=1, permutations=shared, scheme=scheme).update_batch(shingles(text))

    variants = {"cleanwell": cleanwell, "datasketch_default": datasketch_default,
                "datasketch_shared_permutations": datasketch_shared_permutations}
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(rounds):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: round(len(texts) / seconds) for name, seconds in best.items()}


# --- one end-to-end run, in its own process --------------------------------------------------------

def _session(work: Path, *overrides: str):
    from jobs.common.config import load_config
    from jobs.common.session import get_spark

    cfg = load_config(overrides=[f"lake.root={work / 'lake'}", *SPARK_OVERRIDES, *overrides])
    spark = get_spark(cfg)
    spark.range(100).selectExpr("sum(id)").collect()  # start the JVM side before the clock
    return cfg, spark


def run_cleanwell(corpus: Path, work: Path, candidate_threshold: float) -> dict[str, Any]:
    from pyspark.sql import functions as F

    from jobs import neardup

    cfg, spark = _session(work, f"neardup.candidate_threshold={candidate_threshold}")
    settings = neardup.LshSettings.from_config(cfg.neardup)
    start = time.perf_counter()
    texts = spark.read.parquet(str(corpus))
    silver = texts.withColumns({"source": F.lit("bench"), "origin": F.lit("human"), "pre_ai_archive": F.lit(False),
                                "created_at": F.lit(None).cast("timestamp"), "alpha_ratio": F.lit(0.8),
                                "duplicate_line_fraction": F.lit(0.0)})
    found = neardup.find_near_duplicates(texts, settings)
    marked = neardup.with_marks(silver, neardup.choose_representatives(silver, found.clusters))
    marked.write.format("noop").mode("overwrite").save()
    found.edges.select("doc_a", "doc_b").write.mode("overwrite").parquet(str(work / "pairs.parquet"))
    seconds = time.perf_counter() - start
    counts = marked.agg(F.count("duplicate_of").alias("marked"),
                        F.countDistinct("near_duplicate_cluster_id").alias("clusters")).first()
    return {"seconds": round(seconds, 1), "stage_seconds": {k: round(v, 1) for k, v in found.seconds.items()},
            "candidate_pairs": found.candidates.count(), "verified_pairs": found.edges.count(),
            "clusters": counts["clusters"], "duplicates_marked": counts["marked"], "components_rounds": found.rounds,
            "candidate_threshold": candidate_threshold, "bands": settings.bands, "rows": settings.rows}


def _shingle_strings(texts: pd.Series) -> pd.Series:
    """MLlib's input: the shingles cleanwell hashes, as strings (one Python call per document)."""
    from udfs.minhash import shingles

    return texts.map(lambda text: [s.decode("utf-8") for s in shingles(text)])


def run_mllib(corpus: Path, work: Path) -> dict[str, Any]:
    from pyspark.ml.feature import HashingTF, MinHashLSH
    from pyspark.sql import functions as F
    from pyspark.sql.functions import pandas_udf
    from pyspark.sql.types import ArrayType, StringType

    shingle_strings = pandas_udf(_shingle_strings, ArrayType(StringType()))
    _, spark = _session(work)
    start = time.perf_counter()
    docs = spark.read.parquet(str(corpus)).select("doc_id", shingle_strings("text").alias("shingles"))
    features = HashingTF(inputCol="shingles", outputCol="features", numFeatures=1 << 26, binary=True).transform(docs)
    model = MinHashLSH(inputCol="features", outputCol="hashes", numHashTables=MLLIB_TABLES, seed=1).fit(features)
    # approxSimilarityJoin keeps distance < threshold; the epsilon makes it Jaccard >= 0.8 as ours.
    joined = model.approxSimilarityJoin(features, features, 1 - THRESHOLD + 1e-9, distCol="distance")
    pairs = (joined.select(F.col("datasetA.doc_id").alias("doc_a"), F.col("datasetB.doc_id").alias("doc_b"))
             .where(F.col("doc_a") < F.col("doc_b")))
    pairs.write.mode("overwrite").parquet(str(work / "pairs.parquet"))
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 1), "verified_pairs": spark.read.parquet(str(work / "pairs.parquet")).count(),
            "hash_tables": MLLIB_TABLES}


def tree_rss(root: int) -> dict[int, int]:
    """Resident bytes of ``root`` and each of its descendants, by pid (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    rss: dict[int, int] = {}
    stack, page = [root], os.sysconf("SC_PAGE_SIZE")
    while stack:
        pid = stack.pop()
        try:
            with open(f"/proc/{pid}/statm") as fh:
                rss[pid] = int(fh.read().split()[1]) * page
        except (OSError, IndexError, ValueError):
            rss[pid] = 0
        stack.extend(children.get(pid, []))
    return rss


def measure(system: str, corpus: Path, work: Path, timeout: int, *options: str) -> dict[str, Any]:
    """One run in a fresh process (fresh JVM), with the peak memory of its process tree."""
    work.mkdir(parents=True, exist_ok=True)
    out = work / "result.json"
    command = [sys.executable, "-m", "bench.dedup", "--run", system, "--corpus", str(corpus), "--work", str(work),
               *options]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=open(work / "stderr", "w"))
    peak, done = [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], sum(tree_rss(process.pid).values()))
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return {"finished": False, "note": f"did not finish within {timeout} s"}
    finally:
        done.set()
        sampler.join()
    if process.returncode != 0 or not out.exists():
        tail = (work / "stderr").read_text(errors="replace")[-1500:]
        return {"finished": False, "note": f"exit code {process.returncode}: {tail}"}
    result = json.loads(out.read_text())
    return {"finished": True, **result, "peak_memory_mb": round(peak[0] / 2**20),
            "load_average_1min_after": round(os.getloadavg()[0], 2)}


def pairs_of(work: Path) -> list[tuple[str, str]]:
    import pyarrow.parquet as pq

    table = pq.read_table(work / "pairs.parquet")
    return list(zip(table.column("doc_a").to_pylist(), table.column("doc_b").to_pylist(), strict=True))


# --- the whole benchmark -------------------------------------------------------------------------

def benchmark(sizes: list[int], candidate_thresholds: list[float], mllib_max: int, sample: int,
              signature_docs: int, cache_dir: Path, timeout: int) -> dict[str, Any]:
    cache_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "spark_master": "local[2]", "load_average_1min_at_start": os.getloadavg()[0]},
        "threshold": THRESHOLD, "shingle": "word 5-grams", "num_perm": 128, "sizes": {},
    }
    first = corpus_path(cache_dir, min(sizes))
    import pyarrow.parquet as pq

    texts = pq.read_table(first).slice(0, signature_docs).column("text").to_pylist()
    results["signatures_docs_per_second_one_core"] = {"documents": len(texts), **signature_throughput(texts)}
    for size in sizes:
        corpus = corpus_path(cache_dir, size)
        ids, truth = sample_truth(corpus, sample)
        row: dict[str, Any] = {"sample_documents": len(ids)}
        with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
            for threshold in candidate_thresholds:
                work = Path(tmp) / f"cleanwell-{threshold}"
                ours = measure("cleanwell", corpus, work, timeout, "--candidate-threshold", str(threshold))
                if ours["finished"]:
                    ours.update(sample_scores(pairs_of(work), ids, truth))
                row[f"cleanwell_candidate_{threshold}"] = ours
            if size <= mllib_max:
                mllib = measure("mllib", corpus, Path(tmp) / "mllib", timeout)
                if mllib["finished"]:
                    mllib.update(sample_scores(pairs_of(Path(tmp) / "mllib"), ids, truth))
            else:
                mllib = {"finished": False, "note": f"skipped: above --mllib-max {mllib_max} (MLlib's time grows "
                                                    "faster than linearly; see docs/dedup.md)"}
            row["mllib"] = mllib
        for threshold in candidate_thresholds:
            ours = row[f"cleanwell_candidate_{threshold}"]
            if ours["finished"] and mllib["finished"]:
                row[f"speedup_vs_mllib_candidate_{threshold}"] = round(mllib["seconds"] / ours["seconds"], 1)
        results["sizes"][str(size)] = row
        print(f"  {size:>9,} docs: " + ", ".join(f"{name} {run.get('seconds', '-')} s" for name, run in row.items()
                                                  if isinstance(run, dict)), flush=True)
    results["machine"]["load_average_1min_at_end"] = os.getloadavg()[0]
    default = f"cleanwell_candidate_{candidate_thresholds[0]}"
    finished = {int(k): v[default]["seconds"] for k, v in results["sizes"].items() if v[default]["finished"]}
    if 100_000 in finished and 1_000_000 in finished:
        results["growth_100k_to_1m"] = round(finished[1_000_000] / finished[100_000], 2)
    return results


def table(results: dict[str, Any]) -> str:
    sig = results["signatures_docs_per_second_one_core"]
    shared = sig["datasketch_shared_permutations"]
    lines = [f"Signatures, docs/s on one core ({sig['documents']} documents, text to signature):",
             f"  cleanwell {sig['cleanwell']:,} | datasketch default {sig['datasketch_default']:,} "
             f"({sig['cleanwell'] / sig['datasketch_default']:.1f}x) | datasketch shared permutations "
             f"{shared:,} ({sig['cleanwell'] / shared:.1f}x)",
             "",
             "| docs | system | seconds | peak MB | precision | recall | pairs | speed-up vs MLlib |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for size, row in results["sizes"].items():
        for name, run in row.items():
            if not isinstance(run, dict):
                continue
            label = name.replace("cleanwell_candidate_", "cleanwell, candidates at ")
            if not run.get("finished"):
                lines.append(f"| {int(size):,} | {label} | – | – | – | – | – | {run['note'][:60]} |")
                continue
            speedup = row.get(name.replace("cleanwell_", "speedup_vs_mllib_"), "–") if name != "mllib" else "1"
            lines.append(f"| {int(size):,} | {label} | {run['seconds']} | {run['peak_memory_mb']:,} | "
                         f"{run['precision']:.3f} | {run['recall']:.3f} | {run['verified_pairs']:,} | {speedup} |")
    if "growth_100k_to_1m" in results:
        lines.append(f"\nWall time 1M / 100k: {results['growth_100k_to_1m']} (10 is linear)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.dedup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)),
                        help="comma-separated corpus sizes (default %(default)s)")
    parser.add_argument("--candidate-thresholds", default=",".join(map(str, CANDIDATE_THRESHOLDS)),
                        help="cleanwell runs, one per LSH candidate threshold; the first is the default config's")
    parser.add_argument("--mllib-max", type=int, default=100_000, help="largest size MLlib runs at")
    parser.add_argument("--sample", type=int, default=10_000, help="documents for brute-force precision/recall")
    parser.add_argument("--signature-docs", type=int, default=2000, help="documents for the throughput test")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds one end-to-end run may take")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "cleanwell-bench",
                        help="where corpora (Parquet) are generated once and reused")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH)
    parser.add_argument("--run", choices=["cleanwell", "mllib"], help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--candidate-threshold", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:  # a child process of measure()
        result = (run_cleanwell(args.corpus, args.work, args.candidate_threshold) if args.run == "cleanwell"
                  else run_mllib(args.corpus, args.work))
        (args.work / "result.json").write_text(json.dumps(result))
        return
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    thresholds = [float(t) for t in args.candidate_thresholds.split(",") if t.strip()]
    results = benchmark(sizes, thresholds, args.mllib_max, args.sample, args.signature_docs, args.cache_dir,
                        args.timeout)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(table(results))


if __name__ == "__main__":
    main()
