"""Benchmark of the model-collapse lab (issue #12): ``python -m bench.collapse_lab``.

Runs ``jobs.collapse_lab.run_lab`` with the default configuration (or ``key=value`` overrides of the
``collapse_lab`` section, e.g. ``collapse_lab.generations=3``), prints generation 0 and the last generation
of every regime x temperature, and writes everything to ``bench/results/collapse_lab.json`` with the wall
time and the machine (``collapse_lab_spark.json`` with ``collapse_lab.engine=spark``, so a run of the spark
engine does not replace the default run's figures). The regimes are compared with each other in the same
run (same human split, tokenizer, detector and seeds), so the ratios hold on a noisy machine; the seconds
do not. The spark engine runs the pipeline's steps from the working directory, so run it from the
repository root (``detect.training_files`` are relative paths).
"""
from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

from jobs.collapse_lab import METRICS, run_lab, summary_table
from jobs.common.config import load_config

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SHOWN = ("heldout_perplexity", "tail_coverage", "distinct_n", "unigram_kl", "synthetic_share", "detector_auroc")


def main(argv: list[str] | None = None) -> None:
    overrides = list(sys.argv[1:] if argv is None else argv)
    cfg = load_config([], overrides)
    results = run_lab(cfg, progress=lambda line: print(line, file=sys.stderr))
    results["machine"] = {"processor": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
                          "load_average_at_end": [round(v, 2) for v in os.getloadavg()]}
    results["summary"] = summary_table(results)
    print("| regime @ T | " + " | ".join(f"{m} (gen 0 -> {results['generations']})" for m in SHOWN) + " |")
    print("|---|" + "---|" * len(SHOWN))
    for row in results["summary"]:
        print(f"| {row['run']} | " + " | ".join(f"{row[f'{m}@0']:.4g} -> {row[f'{m}@last']:.4g}" for m in SHOWN) + " |")
    print(f"{len(results['series'])} runs, {results['seconds']} s; metrics: {', '.join(METRICS)}")
    path = RESULTS_DIR / ("collapse_lab_spark.json" if cfg.collapse_lab.engine == "spark" else "collapse_lab.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(f"written to {path.relative_to(RESULTS_DIR.parents[1])}")


if __name__ == "__main__":
    main()
