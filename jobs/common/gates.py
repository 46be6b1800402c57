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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml
from pyspark import StorageLevel
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
        shown = {k: v for k, v in self.observed.items() if k in ("observed_value", "unexpected_count",
                                                                 "unexpected_percent", "partial_unexpected_list")}
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
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
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch_definition = (context.data_sources.add_spark("cleanwell").add_dataframe_asset("frame")
                        .add_batch_definition_whole_dataframe("whole"))
    return context, batch_definition


def validate(df: DataFrame, suite: str, specs: list[tuple[str, dict[str, Any]]]) -> GateResult:
    import great_expectations as gx
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    context, batch_definition = _context()
    gx_suite = gx.ExpectationSuite(name=f"{suite}-{id(df)}-{dt.datetime.now().timestamp()}")
    for name, kwargs in specs:
        try:
            gx_suite.add_expectation_configuration(ExpectationConfiguration(type=name, kwargs=kwargs))
        except Exception as exc:  # GX raises its own error types for unknown names and bad kwargs
            raise ConfigError(f"suite `{suite}`: {name}({kwargs}) is not a valid expectation: {exc}") from None
    gx_suite = context.suites.add(gx_suite)
    try:
        # BASIC: counts and a few unexpected values, without the value-count tables SUMMARY computes.
        result = batch_definition.get_batch(batch_parameters={"dataframe": df}).validate(gx_suite,
                                                                                         result_format="BASIC")
    finally:
        context.suites.delete(gx_suite.name)
    outcomes = []
    for item in result.results:
        kwargs = {k: v for k, v in item.expectation_config.kwargs.items() if k != "batch_id"}
        observed = dict(item.result or {})
        if item.exception_info and item.exception_info.get("raised_exception"):
            observed["exception"] = item.exception_info.get("exception_message")
        outcomes.append(Outcome(item.expectation_config.type, kwargs, bool(item.success), observed))
    return GateResult(suite, outcomes)


def record(cfg: Config, spark, result: GateResult, log: RunLog, target: str) -> None:
    """Append the outcomes to the gate_results table and log them to MLflow (pass or fail)."""
    now = dt.datetime.now(dt.UTC)
    rows = [(log.run_id, log.step, target, result.suite, o.expectation, json.dumps(o.kwargs, default=str), o.success,
             json.dumps(o.observed, default=str)[:20000], now) for o in result.outcomes]
    tables.append(spark.createDataFrame(rows, GATE_RESULT_SCHEMA), tables.table_ref(cfg, "gate_results"),
                  run_id=log.run_id)
    log.metric(f"gate.{result.suite}.success", result.success)
    log.metric(f"gate.{result.suite}.failed_expectations", len(result.failures))
    log.artifact_json({"suite": result.suite, "success": result.success,
                       "outcomes": [o.__dict__ for o in result.outcomes]}, f"gates/{result.suite}.json")


def check(cfg: Config, df: DataFrame, suite: str, log: RunLog, target: str,
          params: dict[str, Any] | None = None) -> GateResult | None:
    """Validate ``df`` with ``suite`` (``${name}`` in it replaced from ``params``), record the outcome,
    raise :class:`GateFailed` if any expectation failed."""
    if not cfg.gates.enabled:
        log.tags({f"gate.{suite}": "disabled"})
        return None
    result = validate(df, suite, load_suite(cfg, suite, params))
    record(cfg, df.sparkSession, result, log, target)
    if not result.success:
        lines = "\n".join(f"  - {o.describe()}" for o in result.failures)
        raise GateFailed(f"gate `{suite}` failed for {target}; nothing was published "
                         f"(the table's previous version is still the latest):\n{lines}", result)
    return result


def publish(cfg: Config, df: DataFrame, target: str, suite: str | list[str], log: RunLog,
            write: Callable[[DataFrame, tables.TableRef], Any]) -> Any:
    """Gate (every suite named), then write: ``df`` is materialised once so the rows validated are the
    rows written. A ``df`` the caller cached stays cached (the caller may read it again); one cached
    here is released here."""
    ref = tables.table_ref(cfg, target)
    owned = not df.is_cached
    staged = df.persist(StorageLevel.MEMORY_AND_DISK) if owned else df
    try:
        for name in [suite] if isinstance(suite, str) else suite:
            check(cfg, staged, name, log, str(ref))
        return write(staged, ref)
    finally:
        if owned:
            staged.unpersist()
