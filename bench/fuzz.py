"""Long-budget fuzz of the ingest parsers (issue #13 item 4): ``python -m bench.fuzz [--examples N]``.

Runs tests/test_fuzz.py (hypothesis, derandomized: the same cases on every machine) with N examples per
property instead of `make test`'s short budget, and writes bench/results/fuzz.json: per property the
examples tried, the outcome and the seconds. A failure prints hypothesis's shrunk counterexample.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "fuzz.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=5000, help="hypothesis examples per property (default 5000)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA",
                           "--durations=0", "--durations-min=0", "tests/test_fuzz.py"],
                          cwd=REPO, env={**os.environ, "CLEANWELL_FUZZ_EXAMPLES": str(args.examples)},
                          capture_output=True, text=True)
    seconds = {m[2]: float(m[0]) for m in re.findall(r"([\d.]+)s (call)\s+tests/test_fuzz.py::(\w+)", done.stdout)}
    outcomes = {name: outcome for outcome, name in re.findall(r"^(PASSED|FAILED) tests/test_fuzz.py::(\w+)",
                                                                 done.stdout, re.M)}
    rows = [{"property": name, "examples": args.examples, "outcome": outcome.lower(),
             "seconds": seconds.get(name)} for name, outcome in sorted(outcomes.items())]
    print(f"{'property':<80} {'examples':>8} {'outcome':>8} {'seconds':>8}")
    for row in rows:
        print(f"{row['property']:<80} {row['examples']:>8} {row['outcome']:>8} {row['seconds'] or 0:>8.1f}")
    result = {"examples_per_property": args.examples, "properties": rows,
              "cases_tried": args.examples * len(rows), "failures": sum(r["outcome"] != "passed" for r in rows),
              "wall_seconds": round(time.perf_counter() - start, 1)}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    if done.returncode:
        print(done.stdout[-6000:], done.stderr[-2000:], sep="\n")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
