"""What a run brings to the driver: every DataFrame action that returns rows, with its row count and the
cleanwell function that asked for it (issue #13: no step may collect more than a bounded sample).

:func:`recording` wraps the row-returning actions of PySpark's DataFrame for the length of a block, in
this process (the Spark driver; executors are not involved). The demo fixture runs the pipeline inside
it, so the check costs no extra run (tests/test_driver_rows.py).
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Actions that bring rows to the driver. ``take``/``head``/``first``/``tail`` name their bound in the call.
ACTIONS = ("collect", "toPandas", "toArrow", "toLocalIterator")


@dataclass(frozen=True)
class DriverRows:
    site: str  # "jobs/detect.py:declared_sample": the innermost cleanwell function on the stack
    action: str
    rows: int


# What the session's demo run recorded, under "demo" (tests/conftest.py's ``demo`` fixture).
RECORDED: dict[str, list[DriverRows]] = {}


def _site() -> str:
    frame = sys._getframe(2)
    while frame is not None:
        path = Path(frame.f_code.co_filename)
        if path.is_relative_to(REPO) and path.parts[len(REPO.parts)] in ("jobs", "udfs"):
            return f"{path.relative_to(REPO)}:{frame.f_code.co_name}"
        frame = frame.f_back
    return "?"


def _rows(result) -> int:
    if hasattr(result, "num_rows"):  # pyarrow.Table
        return result.num_rows
    return len(result)


@contextlib.contextmanager
def recording():
    """Yields the list that every row-returning action of the block is appended to (outermost calls
    only: ``toPandas`` may collect inside)."""
    from pyspark.sql import DataFrame
    from pyspark.sql.classic.dataframe import DataFrame as ClassicDataFrame

    records: list[DriverRows] = []
    depth = [0]
    originals = {}
    for cls in {DataFrame, ClassicDataFrame}:
        for action in ACTIONS:
            if action in vars(cls):
                originals[(cls, action)] = vars(cls)[action]

    def wrap(action, original):
        def recorded(self, *args, **kwargs):
            depth[0] += 1
            try:
                result = original(self, *args, **kwargs)
            finally:
                depth[0] -= 1
            if depth[0] == 0:
                if action == "toLocalIterator":
                    result = list(result)
                records.append(DriverRows(_site(), action, _rows(result)))
                if action == "toLocalIterator":
                    result = iter(result)
            return result
        return recorded

    for (cls, action), original in originals.items():
        setattr(cls, action, wrap(action, original))
    try:
        yield records
    finally:
        for (cls, action), original in originals.items():
            setattr(cls, action, original)
