"""Launcher for ``spark-submit``: ``spark-submit [opts] jobs/submit.py <command> [args]``.

spark-submit runs a file, not a module; this file puts the package root on ``sys.path`` when
cleanwell is not installed on the driver (e.g. shipped with ``--py-files``), then runs the CLI.
"""
import sys
from pathlib import Path

if __name__ == "__main__":
    # spark-submit puts this file's folder first on sys.path, where cli.py, report.py … would shadow
    # top-level modules of the same name; the package is imported as `jobs` instead.
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if not p or Path(p).resolve() != here]
    try:
        import jobs.cli  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from jobs.cli import main

    main(sys.argv[1:])
