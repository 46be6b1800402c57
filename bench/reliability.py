"""Reliability bench (issue #13): ``python -m bench.reliability [--points all|outputs] [--skip-suites]``.

1. **Crash at every commit point.** A reference ``cleanwell run`` of the demo lists every crash point it
   passes (jobs/common/faults.py: before, during (data files written, no commit yet: path tables) and
   after each Delta commit of each step, bookkeeping tables included). Then, on a second lake, a chain:
   for each point in order, ``cleanwell run`` killed with SIGKILL there; after each kill every table's
   latest version is read whole (it must be readable and
   complete); the next run resumes (finished steps skipped) and is killed at the next point. A final
   plain run must give the reference's outputs: same (doc_id, source) in bronze, same doc_ids in silver
   and gold, same quarantine rows, same manifest counts, each step recorded once, no MLflow run left
   RUNNING. ``rows_lost`` / ``rows_duplicated`` count the differences (0 is the promise).
2. **The suites** behind the other promises, run through pytest with their slow cases: concurrent writers
   (tests/test_concurrency.py), secrets (tests/test_secrets.py, tests/test_mlflow_server.py's password
   test; the whole-run scan's files scanned and secrets found are recorded), hostile input
   (tests/test_hostile_input.py) and the fuzz properties with a long budget (``--fuzz-examples``, bench.fuzz's
   figures).

Writes bench/results/reliability.json. The 1 M-document soak is ``python -m bench.pipeline --sizes 1000000``
(~45 min on 2 cores); its latest result (peak memory of driver, JVM and workers) is copied in here, with
the Python driver's peak at 100k and 1 M beside the audit of driver collects (docs/reliability.md).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "reliability.json"
DEMO_CONFIG = REPO / "conf" / "demo.yaml"
SUITES = {"concurrent_writers": ["tests/test_concurrency.py"],
          "secrets": ["tests/test_secrets.py",
                      "tests/test_mlflow_server.py::test_a_password_in_the_tracking_uri_is_never_printed_and_still_reaches_mlflow"],
          "hostile_input": ["tests/test_hostile_input.py"],
          "fuzz": ["tests/test_fuzz.py"]}


def overrides(root: Path) -> list[str]:
    return [f"lake.root={root / 'lake'}", f"tracking.uri=sqlite:///{root / 'mlflow.db'}",
            f"tracking.artifact_root={root / 'mlartifacts'}", f"sample.manifest_dir={root / 'manifests'}",
            f"report.dir={root / 'reports'}", "spark.conf.spark.sql.shuffle.partitions=4"]


def cleanwell_run(root: Path, kill_at: str | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("CLEANWELL_KILL_AT", None)
    if kill_at:
        env["CLEANWELL_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-m", "jobs.cli", "run", "-c", str(DEMO_CONFIG), *overrides(root)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)


def snapshot(spark, root: Path) -> dict:
    """What a run left: every table's latest version read whole (a partial state would fail to read or
    show in the rows), the manifest's counts, each step's records and the MLflow runs' states."""
    import mlflow

    from jobs.common import tables
    from jobs.common.config import load_config

    cfg = load_config([str(DEMO_CONFIG)], overrides(root))
    state: dict = {"tables": {}}
    keys = {"bronze": ("doc_id", "source"), "silver": ("doc_id",), "gold": ("mixture", "doc_id"),
            "quarantine": ("source_file", "source_line", "reason"), "exclusions": ("mixture", "doc_id"),
            "pipeline_runs": ("step",), "manifests": ("mixture",)}
    for name in cfg.tables.model_dump():
        ref = tables.table_ref(cfg, name)
        if not tables.exists(spark, ref):
            continue
        df = tables.read_table(spark, ref)
        columns = keys.get(name)
        state["tables"][name] = (sorted(tuple(r) for r in df.select(*columns).collect()) if columns
                                 else df.count())
    latest = root / "manifests" / "demo" / "latest.json"
    manifest = json.loads(latest.read_text()) if latest.exists() else {}
    state["manifest"] = {k: manifest.get(k) for k in ("documents", "rows", "tokens", "eligible_documents",
                                                       "excluded_by_reason")}
    if (root / "mlflow.db").exists():
        client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
        experiments = [e.experiment_id for e in client.search_experiments()]
        state["running_mlflow_runs"] = len(client.search_runs(experiments, "attributes.status = 'RUNNING'"))
    return state


def differences(reference: dict, final: dict) -> tuple[int, int, list[str]]:
    """(rows lost, rows duplicated, tables that differ) between two snapshots' keyed tables."""
    from collections import Counter

    lost = duplicated = 0
    differ = []
    for name in ("bronze", "silver", "gold", "quarantine", "exclusions", "manifests"):
        want, got = Counter(reference["tables"].get(name) or []), Counter(final["tables"].get(name) or [])
        lost += sum((want - got).values())
        duplicated += sum((got - want).values())
        if want != got:
            differ.append(name)
    steps = Counter(s for (s,) in final["tables"].get("pipeline_runs", []))
    differ += [f"pipeline_runs:{s}x{n}" for s, n in steps.items() if n != 1]
    return lost, duplicated, differ


def crash_chain(spark, work: Path, selection: str) -> dict:
    started = time.perf_counter()
    reference_root = work / "reference"
    env_list = cleanwell_run(reference_root, "list")
    if env_list.returncode:
        raise SystemExit(f"the reference run failed:\n{env_list.stderr[-4000:]}")
    points = list(dict.fromkeys(re.findall(r"^\[crash point\] (\S+)$", env_list.stderr, re.M)))
    if selection == "outputs":  # the commits of each step's own outputs and its record, not gates' outcomes
        points = [p for p in points if ":gate_results" not in p]
    reference = snapshot(spark, reference_root)
    print(f"reference run: {len(points)} crash points, {time.perf_counter() - started:.0f} s", flush=True)

    chain_root = work / "chain"
    trials = []
    for number, point in enumerate(points, 1):
        t = time.perf_counter()
        done = cleanwell_run(chain_root, point)
        killed = done.returncode == -signal.SIGKILL
        try:
            after = snapshot(spark, chain_root)
            readable, sizes = True, {name: len(value) if isinstance(value, list) else value
                                     for name, value in after["tables"].items()}
        except Exception as exc:  # noqa: BLE001 - a table left unreadable is the finding
            readable, sizes = f"{type(exc).__name__}: {exc}"[:500], {}
        skipped = re.findall(r"^\[(\w+)\] up to date", done.stdout, re.M)
        trials.append({"point": point, "killed": killed, "exit": done.returncode, "tables_readable": readable,
                       "table_rows": sizes, "steps_skipped": skipped, "seconds": round(time.perf_counter() - t, 1)})
        if not killed and done.returncode == 0:
            # The run finished without passing its point: an earlier kill landed later than its name says
            # (the state was already past this point). Later points would meet a finished lake, so the
            # chain starts again from nothing, in a new folder (this session's Delta log cache knows the old
            # one's tables); the point counts as not reached.
            trials[-1]["not_reached"] = True
            chain_root = work / f"chain-from-{number + 1}"
        print(f"{number:>3}/{len(points)} {point:<48} {'killed' if killed else f'exit {done.returncode}':>8} "
              f"{'readable' if readable is True else 'UNREADABLE':>10} skipped {len(skipped)} "
              f"{trials[-1]['seconds']:>6.1f} s", flush=True)
    final_run = cleanwell_run(chain_root, None)
    final = snapshot(spark, chain_root)
    lost, duplicated, differ = differences(reference, final)
    return {"points": len(points), "trials": trials,
            "killed": sum(t["killed"] for t in trials),
            "not_reached": [t["point"] for t in trials if t.get("not_reached")],
            "survived": sum(t["killed"] and t["tables_readable"] is True for t in trials),
            "final_run_exit": final_run.returncode, "rows_lost": lost, "rows_duplicated": duplicated,
            "tables_differing": differ, "manifest_equal": final["manifest"] == reference["manifest"],
            "mlflow_runs_left_running": final.get("running_mlflow_runs"),
            "seconds": round(time.perf_counter() - started, 1)}


def run_suites(fuzz_examples: int, names: list[str] | None = None) -> dict:
    results = {}
    scan = Path(tempfile.mkdtemp(prefix="cleanwell-secret-scan-")) / "scan.json"
    for name, targets in SUITES.items():
        if names is not None and name not in names:
            continue
        t = time.perf_counter()
        env = {**os.environ, "CLEANWELL_FUZZ_EXAMPLES": str(fuzz_examples), "CLEANWELL_SECRET_SCAN_REPORT": str(scan)}
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "slow or not slow",
                               *targets], cwd=REPO, env=env, capture_output=True, text=True)
        counts = dict((k, int(v)) for v, k in re.findall(r"(\d+) (passed|failed|error)", done.stdout))
        results[name] = {"passed": counts.get("passed", 0), "failed": counts.get("failed", 0) + counts.get("error", 0),
                         "seconds": round(time.perf_counter() - t, 1)}
        if name == "fuzz":
            results[name]["cases_tried"] = fuzz_examples * results[name]["passed"]
        if name == "secrets":  # the whole-run scan: every file the demo run wrote, searched for its planted secret
            found = json.loads(scan.read_text()) if scan.exists() else {"secrets_found": "scan did not run"}
            results[name].update(found)
        print(f"suite {name:<20} passed {results[name]['passed']:>3} failed {results[name]['failed']:>3} "
              f"{results[name]['seconds']:>7.1f} s", flush=True)
    shutil.rmtree(scan.parent, ignore_errors=True)
    return results


def soak_1m() -> dict[str, Any] | str:
    """The latest 1 M-document run of bench.pipeline (bench/results/pipeline.json), issue #13 item 7."""
    path = RESULTS.parent / "pipeline.json"
    runs = json.loads(path.read_text())["runs"] if path.exists() else {}
    run = runs.get("1000000")
    if run is None:
        return "not measured yet: python -m bench.pipeline --sizes 1000000"
    peak = run["peak_memory_gib"]
    # A driver that collected a row per document would grow with the corpus: its peak at 100k and 1 M.
    driver = {size: runs[size]["peak_memory_gib"]["python_driver"] for size in ("100000", "1000000") if size in runs}
    return {"source": "bench/results/pipeline.json", "date": run.get("date"), "finished": run["finished"],
            "wall_seconds": run["wall_seconds"], "peak_memory_gib": peak, "under_8_gib": peak["total"] < 8,
            "memory_measure": run.get("memory_measure", "summed RSS"),
            "bounded_driver_collects": {
                "python_driver_peak_gib": driver,
                "how": "every collect and toPandas in jobs/ is an aggregate or a capped sample (audited "
                       "2026-12-05, docs/reliability.md; tests/test_driver_rows.py fails on a collect of more "
                       "than 100 rows outside the capped samples); the driver's peak is the detector's capped "
                       "training"}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", choices=("all", "outputs"), default="all",
                        help="every crash point, or all but the gate-outcome commits (default all)")
    parser.add_argument("--fuzz-examples", type=int, default=2000, help="hypothesis examples per property")
    parser.add_argument("--skip-suites", action="store_true",
                        help="only the crash chain; keep the suites' results already in reliability.json")
    parser.add_argument("--suites-only", action="store_true",
                        help="only the suites; keep the crash-chain results already in reliability.json")
    parser.add_argument("--suites", type=lambda value: value.split(","), default=None, metavar="NAME,...",
                        help=f"only these suites ({', '.join(SUITES)}); keep the others' results already in "
                             "reliability.json")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    if unknown := set(args.suites or ()) - set(SUITES):
        parser.error(f"unknown suite(s) {', '.join(sorted(unknown))}; choose from {', '.join(SUITES)}")

    from jobs.common.config import load_config
    from jobs.common.session import get_spark

    work = args.work or Path(tempfile.mkdtemp(prefix="cleanwell-reliability-"))
    if args.suites_only:
        result = {"crash_points": json.loads(RESULTS.read_text())["crash_points"]}
    else:
        spark = get_spark(load_config([], overrides(work / "bench-session")))
        try:
            result = {"crash_points": crash_chain(spark, work, args.points)}
        finally:
            spark.stop()
    # The suites' earlier results, read only when some are kept (--suites NAME,... or --skip-suites).
    keeps_suites = args.skip_suites or args.suites
    kept = json.loads(RESULTS.read_text()).get("suites", {}) if keeps_suites and RESULTS.exists() else {}
    if not args.skip_suites:
        result["suites"] = {**kept, **run_suites(args.fuzz_examples, args.suites)} if args.suites else \
            run_suites(args.fuzz_examples)
    elif kept:
        result["suites"] = kept  # kept, as --suites-only keeps the chain
    result["soak_1m_documents"] = soak_1m()
    chain = result["crash_points"]
    print(f"\ncrash points {chain['points']}, killed {chain['killed']}, survived {chain['survived']}, "
          f"not reached {len(chain.get('not_reached', []))}, "
          f"rows lost {chain['rows_lost']}, duplicated {chain['rows_duplicated']}, "
          f"differing {chain['tables_differing'] or 'none'}, manifest equal {chain['manifest_equal']}, "
          f"secrets found {result.get('suites', {}).get('secrets', {}).get('secrets_found', 'not run')}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1, default=str) + "\n")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    reached = chain["points"] - len(chain.get("not_reached", []))
    ok = (chain["survived"] == chain["killed"] == reached and not chain["rows_lost"] and not chain["rows_duplicated"]
          and not chain["tables_differing"] and chain["manifest_equal"] and chain["final_run_exit"] == 0
          and all(s["failed"] == 0 for s in result.get("suites", {}).values())
          and result.get("suites", {}).get("secrets", {}).get("secrets_found", 0) == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
