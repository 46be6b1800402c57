"""Great Expectations gates in front of every publish.

A suite is a YAML list in ``conf/expectations/<suite>.yaml``; each item names a GX expectation
(``expect_column_values_to_not_be_null: {column: doc_id}``). ``publish`` validates the DataFrame
that is about to be written, records every expectation's outcome in the ``gate_results`` table and
MLflow, and only then writes. A failed gate raises :class:`GateFailed` before any write, so the
target table's previous version stays the latest.
"""
from __future__ import annotations

import datetime as dt
import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml
from pyspark.sql import DataFrame

from jobs.common import storage, tables
from jobs.common.config import Config
from jobs.common.errors import ConfigError, GateFailed
from jobs.common.tracking import RunLog

GATE_RESULT_SCHEMA = ("run_id string, step string, target string, suite string, expectation string, "
                      "kwargs string, success boolean, observed string, evaluated_at timestamp")


@dataclass(frozen=True)
class Outcome:
    expectation: str
    kwargs: dict[str, Any]
    success: bool
    observed: dict[str, Any]

    def describe(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        if "exception" in self.observed:  # not evaluated: the frame could not be computed
            return f"{self.expectation}({args}) could not be computed: {self.observed['exception']}"
        shown = {k: v for k, v in self.observed.items() if k in ("observed_value", "unexpected_count",
                                                                 "unexpected_percent", "partial_unexpected_list")}
        return f"{self.expectation}({args}) -> {json.dumps(shown, default=str)[:300]}"


@dataclass(frozen=True)
class GateResult:
    suite: str
    outcomes: list[Outcome]

    @property
    def success(self) -> bool:
        return all(o.success for o in self.outcomes)

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.success]


def _substitute(value: Any, params: dict[str, Any], where: str) -> Any:
    """``"${name}"`` -> params[name], recursively: lets a suite take bounds from the run's config."""
    if isinstance(value, str) and value.startswith("${") and value.endswith("}"):
        name = value[2:-1]
        if name not in params:
            raise ConfigError(f"{where}: unknown parameter {value}; available: {sorted(params)}")
        return params[name]
    if isinstance(value, dict):
        return {k: _substitute(v, params, where) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, params, where) for v in value]
    return value


def load_suite(cfg: Config, suite: str, params: dict[str, Any] | None = None) -> list[tuple[str, dict[str, Any]]]:
    path = storage.join(cfg.gates.suites_dir, f"{suite}.yaml")
    try:
        items = yaml.safe_load(storage.read_text(path)) or []
    except FileNotFoundError:
        raise ConfigError(f"expectation suite `{suite}` not found at {path}") from None
    specs = []
    for number, item in enumerate(items, start=1):
        if not (isinstance(item, dict) and len(item) == 1):
            raise ConfigError(f"{path} item {number}: expected `expectation_name: {{kwargs}}`, got {item!r}")
        (name, kwargs), = item.items()
        if not name.startswith("expect_"):
            raise ConfigError(f"{path} item {number}: `{name}` is not a Great Expectations expectation name")
        specs.append((name, _substitute(dict(kwargs or {}), params or {}, f"{path} item {number}")))
    return specs


@functools.lru_cache(maxsize=1)
def _context():
    """One ephemeral GX context per process, with a whole-frame batch definition per engine."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch_definitions = {engine: getattr(context.data_sources, f"add_{engine}")(f"cleanwell-{engine}")
                         .add_dataframe_asset("frame").add_batch_definition_whole_dataframe("whole")
                         for engine in ("spark", "pandas")}
    return context, batch_definitions


Specs = list[tuple[str, dict[str, Any]]]


def prepare(cfg: Config) -> None:
    """Import GX, build this process's context and run one tiny pandas validation: the first gate of a
    process paid ~3.5 s for these on 2 cores (the later ones ~0.4 s). The runner calls it from a thread
    while the JVM starts (:func:`jobs.common.runner.start_spark`). Nothing when gates are off."""
    if not cfg.gates.enabled:
        return
    import pandas as pd

    _run_suites(pd.DataFrame({"x": [1]}), {"warm-up": [("expect_column_to_exist", {"column": "x"})]},
                "BOOLEAN_ONLY")


def _exception_message(info: dict | None) -> str | None:
    """The first error GX caught while computing an expectation's metrics (e.g. a failing UDF upstream
    of the validated frame), so a gate that could not be evaluated says why instead of "failed: {}".
    GX reports it flat ({raised_exception, exception_message}) or per metric ({metric_id: {...}})."""
    if not info:
        return None
    entries = [info] if "raised_exception" in info else [v for v in info.values() if isinstance(v, dict)]
    for entry in entries:
        if entry.get("raised_exception") or entry.get("exception_message") or entry.get("exception_traceback"):
            text = str(entry.get("exception_message") or entry.get("exception_traceback") or "")
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            # A Python worker's error is buried in a JVM trace: prefer its "SomeError: ..." line.
            named = [line for line in lines if re.match(r"^[\w.]+(Error|Exception)\b", line)]
            return ((named or lines or ["an exception without a message"])[-1 if named else 0])[:2000]
    return None


def _local_copy(df: DataFrame, suites: dict[str, Specs], max_rows: int):
    """``df`` as a pandas frame when GX's pandas engine may validate it instead of its Spark engine, else None.

    Why: on a small frame GX's Spark engine spends its time in Spark jobs (~20 for the 36 expectations
    on demo silver, 3.5-5.6 s), its pandas engine validates the same suites in ~0.4 s after one
    collect (docs/performance.md). The results are the same (tests/test_gates.py compares both engines
    on every suite of a demo run), with three exceptions that keep the Spark route:
    - more than ``max_rows`` rows (the copy lives in the driver's memory);
    - an expectation with a string ``row_condition`` (``condition_parser: spark`` is Spark SQL; the
      structured conditions of conf/expectations/silver_neardup.yaml work on both engines);
    - a NaN in a float column: pandas counts NaN as missing, so `between` would skip a value Spark
      rejects (Arrow keeps null and NaN apart, so they are told apart before the conversion);
    and a frame that cannot be computed (a failing UDF upstream) goes to Spark too, whose validation
    reports the error per expectation (:func:`_exception_message`)."""
    import pyarrow.compute as pc
    import pyarrow.types as pat
    from py4j.protocol import Py4JError
    from pyspark.errors import PySparkException

    if max_rows <= 0 or any("condition_parser" in kwargs for specs in suites.values() for _, kwargs in specs):
        return None
    try:
        if df.count() > max_rows:
            return None
        table = df.toArrow()
    except (PySparkException, Py4JError):
        return None
    if any(pat.is_floating(column.type) and pc.any(pc.is_nan(column)).as_py() for column in table.columns):
        return None
    return table.to_pandas()


def _nan_as_none(value: Any) -> Any:
    """pandas shows a missing value as NaN where Spark shows None; a frame with a real NaN never reaches
    the pandas engine (:func:`_local_copy`), so NaN here is always a null."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _nan_as_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nan_as_none(v) for v in value]
    return value


def _run_suites(df, suites: dict[str, Specs], result_format: str) -> list[GateResult]:
    """One GX validation of every expectation of ``suites`` (each tagged with its suite in ``meta``) on a
    Spark or a pandas frame."""
    import great_expectations as gx
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    context, batch_definitions = _context()
    spark_engine = isinstance(df, DataFrame)
    batch_definition = batch_definitions["spark" if spark_engine else "pandas"]
    gx_suite = gx.ExpectationSuite(name=f"{'+'.join(suites)}-{id(df)}-{dt.datetime.now().timestamp()}")
    for suite, specs in suites.items():
        for name, kwargs in specs:
            try:
                gx_suite.add_expectation_configuration(
                    ExpectationConfiguration(type=name, kwargs=kwargs, meta={"cleanwell_suite": suite}))
            except Exception as exc:  # GX raises its own error types for unknown names and bad kwargs
                raise ConfigError(f"suite `{suite}`: {name}({kwargs}) is not a valid expectation: {exc}") from None
    gx_suite = context.suites.add(gx_suite)
    try:
        result = batch_definition.get_batch(batch_parameters={"dataframe": df}).validate(gx_suite,
                                                                                         result_format=result_format)
    finally:
        context.suites.delete(gx_suite.name)
    outcomes: dict[str, list[Outcome]] = {suite: [] for suite in suites}
    for item in result.results:
        kwargs = {k: v for k, v in item.expectation_config.kwargs.items() if k != "batch_id"}
        observed = dict(item.result or {}) if spark_engine else _nan_as_none(dict(item.result or {}))
        raised = _exception_message(item.exception_info)
        if raised:
            observed["exception"] = raised
        suite = (item.expectation_config.meta or {})["cleanwell_suite"]
        outcomes[suite].append(Outcome(item.expectation_config.type, kwargs, bool(item.success), observed))
    return [GateResult(suite, found) for suite, found in outcomes.items()]


def validate_all(df: DataFrame, suites: dict[str, Specs], result_format: str = "BOOLEAN_ONLY",
                 local_max_rows: int = 0) -> list[GateResult]:
    """Every suite's outcome on ``df``, from one validation; by GX's pandas engine on a copy in the
    driver when ``df`` has at most ``local_max_rows`` rows (see :func:`_local_copy`), else by its Spark
    engine.

    Why one validation with ``BOOLEAN_ONLY``: GX resolves the metrics of one validation together
    (one Spark aggregation per domain), so five suites of silver in one run take 19 Spark jobs where
    five runs with ``BASIC`` take 113 (docs/performance.md). ``BOOLEAN_ONLY`` computes what success
    needs and no unexpected-value lists; when an expectation fails, the suites are validated again
    with ``BASIC`` so that the error and ``gate_results`` say what was found."""
    frame = _local_copy(df, suites, local_max_rows)
    frame = df if frame is None else frame
    results = _run_suites(frame, suites, result_format)
    if result_format == "BOOLEAN_ONLY" and not all(r.success for r in results):
        results = _run_suites(frame, suites, "BASIC")
    return results


def record(result: GateResult, log: RunLog, target: str) -> None:
    """Queue the outcomes for the gate_results table (written by :func:`flush`, once per step) and log
    them to MLflow (pass or fail)."""
    now = dt.datetime.now(dt.UTC)
    log.gate_rows.extend(
        (log.run_id, log.step, target, result.suite, o.expectation, json.dumps(o.kwargs, default=str), o.success,
         json.dumps(o.observed, default=str)[:20000], now) for o in result.outcomes)
    log.metric(f"gate.{result.suite}.success", result.success)
    log.metric(f"gate.{result.suite}.failed_expectations", len(result.failures))
    log.artifact_json({"suite": result.suite, "success": result.success,
                       "outcomes": [o.__dict__ for o in result.outcomes]}, f"gates/{result.suite}.json")


def flush(cfg: Config, spark, log: RunLog) -> None:
    """Append the step's queued gate outcomes to gate_results in one commit (the runner calls this when a
    step ends, also when it fails: a failed gate's rows are what a user queries)."""
    if log.gate_rows:
        rows = tables.local_frame(spark, log.gate_rows, GATE_RESULT_SCHEMA)
        tables.append(rows, tables.table_ref(cfg, "gate_results"), run_id=log.run_id)
        log.gate_rows.clear()


def check(cfg: Config, df: DataFrame, suite: str | list[str], log: RunLog, target: str,
          params: dict[str, Any] | None = None) -> list[GateResult]:
    """Validate ``df`` with each suite named (``${name}`` in them replaced from ``params``), record the
    outcomes, raise :class:`GateFailed` if any expectation failed."""
    names = [suite] if isinstance(suite, str) else list(suite)
    if not cfg.gates.enabled:
        log.tags({f"gate.{name}": "disabled" for name in names})
        return []
    specs = {name: load_suite(cfg, name, params) for name in names}
    results = validate_all(df, specs, cfg.gates.result_format, cfg.gates.local_max_rows)
    for result in results:
        record(result, log, target)
    failed = [r for r in results if not r.success]
    if failed:
        lines = "\n".join(f"  - {o.describe()}" for r in failed for o in r.failures)
        raise GateFailed(f"gate `{', '.join(r.suite for r in failed)}` failed for {target}; nothing was published "
                         f"(the table's previous version is still the latest):\n{lines}", failed[0])
    return results


def publish(cfg: Config, df: DataFrame, target: str, suite: str | list[str], log: RunLog,
            write: Callable[[DataFrame, tables.TableRef], Any], overwrites: bool = True) -> Any:
    """Gate (every suite named), then write: ``df`` is materialised once so the rows validated are the
    rows written. A ``df`` the caller cached stays cached (the caller may read it again); one cached
    here is released here. ``overwrites``: the write replaces the table, so it is refused when another
    run committed to the table since the step started (:func:`tables.check_unchanged`); a MERGE that only
    inserts passes False (concurrent merges are retried instead)."""
    ref = tables.table_ref(cfg, target)
    owned = not df.is_cached
    staged = tables.stage(df) if owned else df
    try:
        check(cfg, staged, suite, log, str(ref))
        if overwrites:
            tables.check_unchanged(staged.sparkSession, ref)
        result = write(staged, ref)
        tables.note_written(staged.sparkSession, ref)
        return result
    finally:
        if owned:
            staged.unpersist()
