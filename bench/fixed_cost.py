"""Where a pipeline step's time goes on a small corpus: the fixed cost of every run (issue 16).

``python -m bench.fixed_cost`` runs the whole demo pipeline (conf/demo.yaml, 430 documents) in one
process on a fresh lake, MLflow store and report folder under a temporary directory, each step under
its own cProfile, and prints per step: wall seconds, Spark jobs started (``setJobGroup`` per step) and
the seconds spent in each category of driver-side work below, the rest being the step's own
computation. Results go to ``bench/results/fixed_cost.json`` with the machine's core count and load
average (the machine is shared and noisy: compare job counts, which are deterministic, before seconds).

Categories (cumulative time of these functions, which do not nest in one another):

* ``gates``: Great Expectations validations (jobs.common.gates.validate_all);
* ``delta_writes``: Delta overwrites, appends and MERGEs of the step's tables and of the bookkeeping
  tables gate_results and pipeline_runs (jobs.common.tables overwrite / append / merge_*);
* ``bookkeeping_reads``: the runner's reads of pipeline_runs and of table versions for the up-to-date
  check (jobs.common.runner._successful_runs / _version_key);
* ``mlflow``: run creation, params, tags, metrics and artifacts (mlflow.tracking.fluent / artifacts).
"""
from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.detect import REPO_ROOT, machine_info

RESULTS_PATH = REPO_ROOT / "bench" / "results" / "fixed_cost.json"
CATEGORIES = {
    "gates": [("jobs/common/gates.py", "validate_all")],
    "delta_writes": [("jobs/common/tables.py", name) for name in ("overwrite", "append", "merge_insert_new",
                                                                   "merge_upsert")],
    "bookkeeping_reads": [("jobs/common/runner.py", "_successful_runs"), ("jobs/common/runner.py", "_version_key")],
    "mlflow": [("mlflow/tracking/fluent.py", name) for name in ("start_run", "end_run", "log_params", "set_tags",
                                                                 "log_metrics", "log_artifact", "log_dict",
                                                                 "log_text")],
}


def _category_seconds(stats: pstats.Stats) -> dict[str, float]:
    """Cumulative seconds per category; a function called from another of the same category (e.g. an
    overwrite inside a MERGE) is counted once, at the outermost call."""
    totals = dict.fromkeys(CATEGORIES, 0.0)
    for (filename, _, function), (_, _, _, cumulative, callers) in stats.stats.items():
        for category, targets in CATEGORIES.items():
            if any(filename.endswith(f) and function == name for f, name in targets):
                inner = sum(c[3] for (cf, _, cfn), c in callers.items()
                            if any(cf.endswith(f) and cfn == n for f, n in targets))
                totals[category] += cumulative - inner
    return {k: round(v, 2) for k, v in totals.items()}


def profile_demo(folder: Path, profiles: Path | None = None, overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    started = time.perf_counter()
    from jobs import pipeline
    from jobs.common.config import load_config
    from jobs.common.runner import execute, start_spark
    from jobs.common.tracking import pipeline_run

    cfg = load_config([str(REPO_ROOT / "conf" / "demo.yaml")], [
        f"lake.root={folder / 'lake'}", f"tracking.uri=sqlite:///{folder / 'mlflow.db'}",
        f"tracking.artifact_root={folder / 'mlartifacts'}", f"report.dir={folder / 'reports'}",
        f"sample.manifest_dir={folder / 'lake' / 'manifests'}", *overrides])
    imported = time.perf_counter() - started
    spark = start_spark(cfg)  # as `cleanwell run` does: MLflow and GX prepared while the JVM starts
    session = time.perf_counter() - started - imported
    tracker = spark.sparkContext.statusTracker()
    steps = []
    with pipeline_run(cfg):
        for step in pipeline.STEPS:
            spark.sparkContext.setJobGroup(step.name, f"cleanwell {step.name}")
            profile = cProfile.Profile()
            profile.enable()
            outcome = execute(step, spark, cfg, steps=pipeline.STEPS, echo=lambda _: None)
            profile.disable()
            if profiles is not None:  # for `python -m pstats FILE` or snakeviz: what "other" is made of
                profiles.mkdir(parents=True, exist_ok=True)
                profile.dump_stats(profiles / f"{step.name}.pstats")
            categories = _category_seconds(pstats.Stats(profile))
            steps.append({"step": step.name, "seconds": round(outcome.seconds, 2),
                          "spark_jobs": len(tracker.getJobIdsForGroup(step.name)), **categories,
                          "other": round(outcome.seconds - sum(categories.values()), 2)})
    spark.sparkContext.setJobGroup("", "")
    return {"overrides": list(overrides), "import_seconds": round(imported, 2), "session_seconds": round(session, 2),
            "wall_seconds": round(time.perf_counter() - started, 2), "steps": steps}


def table(result: dict[str, Any]) -> str:
    columns = ["step", "seconds", "spark_jobs", *CATEGORIES, "other"]
    lines = [" | ".join(f"{c:>17}" for c in columns)]
    for row in result["steps"]:
        lines.append(" | ".join(f"{row[c]:>17}" for c in columns))
    totals = {c: round(sum(r[c] for r in result["steps"]), 2) for c in columns[1:]}
    lines.append(" | ".join(f"{v:>17}" for v in ["total", *totals.values()]))
    lines.append(f"imports {result['import_seconds']} s, Spark session {result['session_seconds']} s, "
                 f"whole run {result['wall_seconds']} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=RESULTS_PATH)
    parser.add_argument("--profiles", type=Path, help="folder for each step's cProfile stats (<step>.pstats)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides to measure, as on cleanwell's command line "
                             "(e.g. spark.conf.spark.default.parallelism=2)")
    args = parser.parse_args(argv)
    os.chdir(REPO_ROOT)  # the demo config's source paths are relative to the repository
    with tempfile.TemporaryDirectory(prefix="cleanwell-fixed-cost-") as tmp:
        result = profile_demo(Path(tmp), args.profiles, tuple(args.overrides))
    result["machine"] = machine_info()
    print(table(result))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
