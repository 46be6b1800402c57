"""What every job shares: resume checks, the MLflow run, timing, progress lines and the CLI shape.

A step is *up to date* when its last successful run used the same config hash, read the inputs that
are current now, and its outputs have not changed since. Such a step is skipped (``--force``
reruns it), so a retried Airflow task or a re-run after a crash redoes only what is missing.

The pipeline's step order is the caller's (``steps``, jobs.pipeline.STEPS): this module never imports a
step or the registry, so the import graph has no cycle (tests/test_layering.py).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import datetime as dt
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import click
from pyspark.sql import Row, SparkSession

from jobs.common import faults, gates, tables
from jobs.common.config import Config, load_config
from jobs.common.errors import CleanwellError
from jobs.common.secrets import redact_text
from jobs.common.session import get_spark
from jobs.common.tracking import PIPELINE_RUN_ID_ENV, RunLog, configure, tracked_run

STATE_SCHEMA = ("step string, run_id string, config_hash string, inputs map<string,string>, "
                "outputs map<string,string>, summary string, finished_at timestamp")


@dataclass(frozen=True)
class Step:
    """A pipeline step: which tables it reads and writes and which config sections it depends on."""

    name: str
    run: Callable[[SparkSession, Config, RunLog], dict[str, Any]]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    config_sections: tuple[str, ...]
    help: str
    # Extra input fingerprints that are not tables (ingest: its input files).
    fingerprints: Callable[[SparkSession, Config], dict[str, str]] | None = None


@dataclass
class StepOutcome:
    step: str
    status: str  # "ran" | "up-to-date"
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None


def _version_key(spark: SparkSession, cfg: Config, name: str) -> str:
    version = tables.current_version(spark, tables.table_ref(cfg, name))
    return "absent" if version is None else str(version)


# pipeline_runs as this process last read or wrote it, by table location: (version stamp, rows). Every step
# reads the table before it runs (its up-to-date check) and appends one row after; reading a new version
# costs ~1.5 s of snapshot and scan jobs, so a process that knows the version before its own append, and
# that the append was the very next commit, keeps the rows instead (docs/performance.md).
_RUNS: dict[str, tuple[tuple[int, int], list[Row]]] = {}


def _successful_runs(spark: SparkSession, cfg: Config) -> list[Row]:
    ref = tables.table_ref(cfg, "pipeline_runs")
    stamp = tables.version_stamp(spark, ref)
    if stamp is None:
        return []
    cached = _RUNS.get(ref.location)
    if cached is None or cached[0] != stamp:
        cached = _RUNS[ref.location] = (stamp, tables.read_table(spark, ref, version=stamp[0]).collect())
    return list(cached[1])


def last_run_id(spark: SparkSession, cfg: Config, step: str) -> str:
    """MLflow run id of the step's latest successful run (for artifacts it produced)."""
    from jobs.common.errors import InputError

    runs = [r for r in _successful_runs(spark, cfg) if r["step"] == step]
    if not runs:
        raise InputError(f"step `{step}` has not run successfully yet; run `cleanwell {step}` first")
    return max(runs, key=lambda r: r["finished_at"])["run_id"]


def upstream_writers(steps: Sequence[Step], step: Step, table: str) -> list[str]:
    """Names of the steps that write ``table`` before ``step`` in the pipeline order ``steps`` (every writer
    in ``steps`` when ``step`` is not one of them)."""
    names = [s.name for s in steps]
    before = steps[:names.index(step.name)] if step.name in names else steps
    return [s.name for s in before if table in s.outputs]


def fingerprint(spark: SparkSession, cfg: Config, step: Step, steps: Sequence[Step],
                runs: list | None = None) -> dict[str, str]:
    """The state of the step's inputs. A table that several steps write in turn (silver gains a column
    per signal step) is identified by the version its latest *upstream* writer (in the order ``steps``)
    left, so a step's own in-place write, or a later step's, does not make it look stale."""
    runs = _successful_runs(spark, cfg) if runs is None else runs
    prints = {}
    for table in step.inputs:
        writers = set(upstream_writers(steps, step, table))
        latest = max((r for r in runs if r["step"] in writers), key=lambda r: r["finished_at"], default=None)
        recorded = dict(latest["outputs"]).get(f"table:{table}") if latest is not None else None
        prints[f"table:{table}"] = recorded or _version_key(spark, cfg, table)
    if step.fingerprints:
        prints.update(step.fingerprints(spark, cfg))
    return prints


def is_up_to_date(spark: SparkSession, cfg: Config, step: Step, config_hash: str, runs: list,
                  inputs: dict[str, str]) -> bool:
    """Same config hash and same input state (``inputs``: the step's fingerprint now) as the step's last
    successful run in ``runs``, outputs still there."""
    last = max((r for r in runs if r["step"] == step.name), key=lambda r: r["finished_at"], default=None)
    if last is None or last["config_hash"] != config_hash:
        return False
    written = {k for k, v in dict(last["outputs"]).items() if v != "absent"}
    if any(_version_key(spark, cfg, k.removeprefix("table:")) == "absent" for k in written):
        return False  # an output it wrote has been deleted since
    return inputs == dict(last["inputs"])


def _record_success(spark: SparkSession, cfg: Config, step: Step, run_id: str, config_hash: str,
                    inputs: dict[str, str], summary: dict[str, Any]) -> None:
    import json

    outputs = {f"table:{name}": _version_key(spark, cfg, name) for name in step.outputs}
    row = [(step.name, run_id, config_hash, inputs, outputs, json.dumps(summary, default=str),
            dt.datetime.now(dt.UTC))]
    ref = tables.table_ref(cfg, "pipeline_runs")
    frame = tables.local_frame(spark, row, STATE_SCHEMA)
    known, before = _RUNS.get(ref.location), tables.version_stamp(spark, ref)
    tables.append(frame, ref, run_id=run_id)
    after = tables.version_stamp(spark, ref)
    # Kept rows stay good only when they were the latest version and this append was the very next commit;
    # where there was no table, this append made it, and the table is this row.
    if before is None:
        kept = []
    elif known is not None and known[0] == before:
        kept = known[1]
    else:
        kept = None
    if kept is not None and after is not None and after[0] == (0 if before is None else before[0] + 1):
        _RUNS[ref.location] = (after, kept + frame.collect())  # a local relation: no job


@contextlib.contextmanager
def spark_progress(spark: SparkSession, step: str, echo: Callable[[str], None], every: float = 15.0):
    """While a step runs, print the active Spark stages' task progress every ``every`` seconds, so a
    long step on a cluster shows it is moving (a short step prints nothing)."""
    try:
        tracker = spark.sparkContext.statusTracker()
    except Exception:  # Spark Connect (serverless, standard access mode) has no SparkContext: no progress
        yield
        return
    done = threading.Event()

    def report() -> None:
        while not done.wait(every):
            stages = [tracker.getStageInfo(i) for i in tracker.getActiveStageIds()]
            active = [s for s in stages if s is not None]
            if active:
                parts = ", ".join(f"stage {s.stageId} {s.numCompletedTasks}/{s.numTasks} tasks" for s in active[:3])
                echo(f"[{step}] … {parts}")

    thread = threading.Thread(target=report, name=f"progress-{step}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()


def execute(step: Step, spark: SparkSession, cfg: Config, *, steps: Sequence[Step], force: bool = False,
            echo: Callable[[str], None] = click.echo) -> StepOutcome:
    """Run one step (or skip it when up to date) inside its own MLflow run. ``steps``: the pipeline in
    order (jobs.pipeline.STEPS), which says which earlier steps wrote the tables ``step`` reads."""
    start = time.perf_counter()
    config_hash = cfg.section_hash(*step.config_sections)
    # Read once: the up-to-date check and the run's record both need the runs and the input fingerprint.
    runs = _successful_runs(spark, cfg)
    inputs = fingerprint(spark, cfg, step, steps, runs)
    if not force and is_up_to_date(spark, cfg, step, config_hash, runs, inputs):
        echo(f"[{step.name}] up to date (inputs and config unchanged since the last successful run); "
             "--force reruns it")
        return StepOutcome(step.name, "up-to-date", time.perf_counter() - start)
    echo(f"[{step.name}] running …")
    params = {name: getattr(cfg, name).model_dump(mode="json") for name in step.config_sections}
    with faults.in_step(step.name), tracked_run(cfg, step.name, params=params) as log:
        log.tags({"cleanwell.config_hash": config_hash, **{f"input.{k}": v for k, v in inputs.items()}})
        try:
            with spark_progress(spark, step.name, echo), tables.guard_outputs(spark, cfg, step.name, step.outputs):
                summary = step.run(spark, cfg, log) or {}
        except BaseException:
            # A failed gate's outcomes are what a user queries; a failure to write them must not hide the
            # step's own error (they are in the run's MLflow artifacts too).
            with contextlib.suppress(Exception):
                gates.flush(cfg, spark, log)
            raise
        gates.flush(cfg, spark, log)  # the step's gate outcomes, in one commit
        seconds = time.perf_counter() - start
        log.metric("seconds", seconds)
        _record_success(spark, cfg, step, log.run_id, config_hash, inputs, summary)
    echo(f"[{step.name}] done in {seconds:.1f} s: {format_summary(summary)}")
    return StepOutcome(step.name, "ran", seconds, summary, log.run_id)


def format_summary(summary: dict[str, Any]) -> str:
    parts = []
    for key, value in summary.items():
        if isinstance(value, dict):
            inner = ", ".join(f"{k} {v}" for k, v in value.items() if v) or "none"
            parts.append(f"{key} ({inner})")
        else:
            parts.append(f"{key} {value}")
    return "; ".join(parts)


# --- CLI shape shared by every job -------------------------------------------------------------

def config_options(func: Callable) -> Callable:
    """``--config FILE`` (repeatable) and trailing ``key=value`` overrides."""
    func = click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")(func)
    return click.option("--config", "-c", "config_files", multiple=True, type=click.Path(dir_okay=False),
                        help="YAML file merged over conf/base.yaml (repeatable; later files win).")(func)


def pipeline_run_id_option(func: Callable) -> Callable:
    """``--pipeline-run-id ID``: groups this process's MLflow runs with the other steps of one pipeline run
    (the same as setting CLEANWELL_PIPELINE_RUN_ID, which Airflow tasks do)."""

    def export(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
        if value:
            os.environ[PIPELINE_RUN_ID_ENV] = value

    return click.option("--pipeline-run-id", metavar="ID", envvar=PIPELINE_RUN_ID_ENV, show_envvar=True,
                        expose_value=False, callback=export,
                        help="Tag cleanwell.pipeline_run_id of every MLflow run (default: the enclosing "
                             "`cleanwell run`).")(func)


def run_guarded(action: Callable[[], Any]) -> Any:
    """Run a CLI action; print a CleanwellError as a one-paragraph message and exit 2, no traceback."""
    try:
        return action()
    except CleanwellError as exc:
        click.secho(f"error: {redact_text(str(exc))}", fg="red", err=True)
        sys.exit(2)


def start_spark(cfg: Config) -> SparkSession:
    """:func:`get_spark`, with what needs no Spark done in a thread meanwhile: the MLflow store (a fresh
    sqlite store runs its migrations, ~2.5 s) and GX's first validation (~3.5 s, :func:`gates.prepare`).
    Starting a local JVM takes ~5 s in which the Python driver only waits (docs/performance.md). An error
    of either (an unreachable tracking server) is raised here, as it would have been at the first step."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="cleanwell-warm-up") as pool:
        ready = pool.submit(lambda: (configure(cfg), gates.prepare(cfg)))
        spark = get_spark(cfg)
        ready.result()
    return spark


def step_command(step: Step, steps: Sequence[Step]) -> click.Command:
    """A click command for one step of the pipeline ``steps``: ``cleanwell <step> [--config F] [--force]
    [key=value …]``."""

    @click.command(name=step.name, help=step.help)
    @config_options
    @pipeline_run_id_option
    @click.option("--force", is_flag=True, help="Run even if inputs and config are unchanged since the last run.")
    def command(config_files: tuple[str, ...], overrides: tuple[str, ...], force: bool) -> None:
        def action() -> None:
            cfg = load_config(config_files, overrides)
            execute(step, start_spark(cfg), cfg, steps=steps, force=force)

        run_guarded(action)

    return command


def job_main(step: Step, argv: list[str] | None, steps: Sequence[Step]) -> None:
    """Entry point for ``python -m jobs.<step>`` and ``spark-submit jobs/<step>.py``: the step's ``main``
    passes the pipeline's ``steps`` (imported there, in the entry point, not here)."""
    step_command(step, steps).main(args=argv, prog_name=f"cleanwell {step.name}")
