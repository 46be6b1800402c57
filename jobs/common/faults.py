"""Crash points: SIGKILL this process at a named point of a step, to prove what a crash there leaves.

Set ``CLEANWELL_KILL_AT`` to a comma-separated list of points; the first one reached kills the process
with SIGKILL (no ``finally``, no atexit, no MLflow run end: what a lost executor host or an OOM kill
does). A point is ``<step>:<event>:<table>``, where ``<table>`` is a key of ``conf tables``:

- ``before-write``: the step is about to commit to the table (its work so far is only in memory);
- ``mid-write``: the write's first new data file has appeared in the table's folder and its commit is
  not in the Delta log yet (path tables only: a catalog table's folder is the metastore's business);
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
import threading
from collections.abc import Iterator

ENV = "CLEANWELL_KILL_AT"
EVENTS = ("before-write", "mid-write", "after-commit")
# How often mid-write looks for the write's first data file. A task holds its file open from its start
# to its end and the commit comes after the whole job, so 20 ms sees the file long before the commit.
POLL_SECONDS = 0.02
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


def _wanted() -> set[str] | str | None:
    wanted = os.environ.get(ENV)
    if not wanted or wanted == "list":
        return wanted
    return {p.strip() for p in wanted.split(",")}


def _jvm_pid() -> int | None:
    """The pid of the JVM PySpark started for this process's local session (None under spark-submit, where
    the JVM is the parent, or without a session)."""
    from pyspark import SparkContext

    proc = getattr(SparkContext._gateway, "proc", None)
    return getattr(proc, "pid", None)


def _kill(name: str) -> None:
    print(f"[crash point] {name}: SIGKILL", file=sys.stderr, flush=True)
    sys.stdout.flush()
    # The JVM first: a Delta commit runs there, and a JVM left alive by its dead Python parent finished a
    # one-row commit ~90 ms later, turning a mid-write kill into an after-commit one (bench.reliability).
    jvm = _jvm_pid()
    if jvm is not None:
        os.kill(jvm, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def _name(event: str, table: str) -> str:
    return f"{_step or 'none'}:{event}:{table}"


def point(event: str, table: str) -> None:
    """Pass the crash point ``<current step>:<event>:<table>``; SIGKILL here when it is listed."""
    wanted = _wanted()
    if not wanted:
        return
    name = _name(event, table)
    if wanted == "list":
        print(f"[crash point] {name}", file=sys.stderr, flush=True)
    elif name in wanted:
        _kill(name)


@contextlib.contextmanager
def committing(table: str, location: str | None) -> Iterator[None]:
    """Around one Delta write of ``table``: ``before-write`` on entry, ``mid-write`` during it (path
    tables, at ``location``; None for a catalog table), ``after-commit`` once it returned."""
    point("before-write", table)
    with _mid_write(table, location):
        yield
    point("after-commit", table)


@contextlib.contextmanager
def _mid_write(table: str, location: str | None) -> Iterator[None]:
    """The point ``<step>:mid-write:<table>``. When it is listed, a thread watches the folder and
    SIGKILLs the process as soon as a new data file is there while the Delta log has no new commit (data
    on storage, nothing committed: what Delta's atomic commit has to make invisible). If the commit wins
    the race the point is reported as missed and the process lives, so a test of it fails instead of
    testing an after-commit kill."""
    wanted = _wanted()
    name = _name("mid-write", table)
    if wanted == "list" and location is not None:
        print(f"[crash point] {name}", file=sys.stderr, flush=True)
    if not wanted or wanted == "list" or name not in wanted or location is None:
        yield
        return
    import fsspec

    fs, root = fsspec.core.url_to_fs(location)

    def listed(folder: str) -> list[str]:
        try:
            return fs.find(folder)
        except FileNotFoundError:
            return []

    def data_files() -> set[str]:
        return {f for f in listed(root) if f.endswith(".parquet") and "/_delta_log/" not in f}

    def commits() -> set[str]:
        return {f for f in listed(f"{root}/_delta_log") if f.endswith(".json")}

    data_before, log_before = data_files(), commits()
    done = threading.Event()

    def watch() -> None:
        # The log is listed after the data file was seen: one listing of the whole folder reads
        # `_delta_log/` before the data files, so a commit made between the two parts could go unseen.
        # (The slip bench.reliability found came from the JVM outliving this process: see _kill.)
        while not done.wait(POLL_SECONDS):
            if data_files() - data_before:
                if not commits() - log_before:
                    _kill(name)
                return

    watcher = threading.Thread(target=watch, name="cleanwell-mid-write", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
    # Still alive after the write returned: its commit came before the watcher saw a data file.
    print(f"[crash point] {name}: missed (the commit came first)", file=sys.stderr, flush=True)
