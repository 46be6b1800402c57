"""Crash points: SIGKILL this process at a named point of a step, to prove what a crash there leaves.

Set ``CLEANWELL_KILL_AT`` to a comma-separated list of points; the first one reached kills the process
with SIGKILL (no ``finally``, no atexit, no MLflow run end: what a lost executor host or an OOM kill
does). A point is ``<step>:<event>:<table>``, where ``<table>`` is a key of ``conf tables``:

- ``before-write``: the step is about to commit to the table (its work so far is only in memory);
- ``after-commit``: the commit is in the Delta log, nothing after it has run.

Every Delta write of a step passes these points, including the bookkeeping tables, so
``<step>:before-write:pipeline_runs`` is "committed its outputs, not yet recorded as done",
``<step>:after-commit:pipeline_runs`` is "recorded, MLflow run not ended", and
``sample:after-commit:gold`` is "gold published, exclusions and manifest not yet written".
``CLEANWELL_KILL_AT=list`` prints each point as it is passed instead (to enumerate them).

Used by tests/test_crash_points.py and ``python -m bench.reliability``; unset, it costs one dict lookup.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator

ENV = "CLEANWELL_KILL_AT"
EVENTS = ("before-write", "after-commit")
_step: str | None = None


@contextlib.contextmanager
def in_step(name: str) -> Iterator[None]:
    """Name the step whose writes the points below belong to (the runner wraps each step in this)."""
    global _step
    previous, _step = _step, name
    try:
        yield
    finally:
        _step = previous


def point(event: str, table: str) -> None:
    """Pass the crash point ``<current step>:<event>:<table>``; SIGKILL here when it is listed."""
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    name = f"{_step or 'none'}:{event}:{table}"
    if wanted == "list":
        print(f"[crash point] {name}", file=sys.stderr, flush=True)
        return
    if name in {p.strip() for p in wanted.split(",")}:
        print(f"[crash point] {name}: SIGKILL", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)
