"""Crash points (issue #13, item 2): a cleanwell process killed with SIGKILL at a commit point
(jobs/common/faults.py) leaves every table at a complete earlier or later state, and a plain rerun
finishes the job with the outputs of an uninterrupted run, skipping the steps that had finished.
``python -m bench.reliability`` tries every point of the demo pipeline; these tests try a few."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from pyspark.sql import functions as F

from jobs.common import faults, tables
from jobs.common.config import load_config
from tests.conftest import DEMO_CONFIG, DEMO_SECRETS, REPO, lake_overrides

KILLED = -signal.SIGKILL


def cleanwell_run(root: Path, *args: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    """``cleanwell run`` on the demo config in its own process (own JVM), everything under ``root``."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(faults.ENV, None)
    if kill_at:
        env[faults.ENV] = kill_at
    command = [sys.executable, "-m", "jobs.cli", "run", "-c", str(DEMO_CONFIG), *args,
               *lake_overrides(root), *DEMO_SECRETS]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)


def rows(spark, cfg, name: str, *columns: str) -> list[tuple] | None:
    """Sorted rows of a table's latest version (None when it does not exist): reading it whole also
    proves its latest version is readable."""
    ref = tables.table_ref(cfg, name)
    if not tables.exists(spark, ref):
        return None
    return sorted(tuple(r) for r in tables.read_table(spark, ref).select(*columns).collect())


def recorded_steps(spark, cfg) -> list[str]:
    return sorted(step for step, in rows(spark, cfg, "pipeline_runs", "step") or [])


def test_ingest_killed_between_bronze_and_quarantine_is_finished_by_the_next_run(spark, demo, tmp_path):
    """Bronze committed, quarantine not yet written, the step not recorded: bronze is complete (one
    commit), and the rerun adds the quarantine rows without a second copy of any bronze row."""
    demo_cfg = demo[0]
    cfg = load_config([str(DEMO_CONFIG)], lake_overrides(tmp_path))
    bronze_columns, quarantine_columns = ("doc_id", "source"), ("source_file", "source_line", "reason")

    killed = cleanwell_run(tmp_path, "--steps", "ingest", kill_at="ingest:after-commit:bronze")

    assert killed.returncode == KILLED, killed.stderr[-3000:]
    assert "[crash point] ingest:after-commit:bronze: SIGKILL" in killed.stderr
    assert rows(spark, cfg, "bronze", *bronze_columns) == rows(spark, demo_cfg, "bronze", *bronze_columns)
    assert rows(spark, cfg, "quarantine", *quarantine_columns) is None
    assert recorded_steps(spark, cfg) == []

    rerun = cleanwell_run(tmp_path, "--steps", "ingest")

    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert rows(spark, cfg, "bronze", *bronze_columns) == rows(spark, demo_cfg, "bronze", *bronze_columns)
    assert rows(spark, cfg, "quarantine", *quarantine_columns) == rows(spark, demo_cfg, "quarantine",
                                                                       *quarantine_columns)
    assert recorded_steps(spark, cfg) == ["ingest"]


@pytest.mark.slow  # three pipeline processes (~6 min); CI runs it, the ingest case above is the fast one
def test_a_pipeline_killed_in_embed_and_again_after_gold_ends_with_the_uninterrupted_gold(spark, tmp_path):
    """Kill 1: embed committed silver, clusters not written. Kill 2 (the rerun): gold committed, its
    exclusions and manifest not written. A third, plain run then publishes exactly the pinned demo gold
    and manifest counts (those of an uninterrupted run), the finished steps skipped each time, and no
    MLflow run is left RUNNING."""
    cfg = load_config([str(DEMO_CONFIG)], lake_overrides(tmp_path) + DEMO_SECRETS)

    first = cleanwell_run(tmp_path, kill_at="embed:after-commit:silver")

    assert first.returncode == KILLED, first.stderr[-3000:]
    assert recorded_steps(spark, cfg) == sorted(["ingest", "dedup", "quality", "neardup", "tokenize", "detect"])
    assert rows(spark, cfg, "clusters", "cluster_id") is None
    assert len(rows(spark, cfg, "silver", "doc_id", "cluster_id")) > 0  # embed's complete commit

    second = cleanwell_run(tmp_path, kill_at="sample:after-commit:gold")

    assert second.returncode == KILLED, second.stderr[-3000:]
    for step in ("ingest", "dedup", "quality", "neardup", "tokenize", "detect"):
        assert f"[{step}] up to date" in second.stdout
    assert "[embed] running" in second.stdout
    assert rows(spark, cfg, "gold", "doc_id") and rows(spark, cfg, "manifests", "mixture") is None

    third = cleanwell_run(tmp_path)

    assert third.returncode == 0, third.stderr[-3000:]
    assert "[embed] up to date" in third.stdout and "[sample] running" in third.stdout
    gold = tables.read_table(spark, tables.table_ref(cfg, "gold")).select("mixture", "doc_id").distinct()
    pinned = (REPO / "tests/data/demo_gold_doc_ids.tsv").read_text().splitlines()
    assert sorted(f"{r['mixture']}\t{r['doc_id']}" for r in gold.collect()) == pinned
    manifest = json.loads((tmp_path / "manifests" / "demo" / "latest.json").read_text())
    counts = json.loads((REPO / "tests/data/demo_manifest_counts.json").read_text())
    assert {key: manifest[key] for key in counts} == counts
    assert rows(spark, cfg, "manifests", "mixture") == [("demo",)]
    runs = tables.read_table(spark, tables.table_ref(cfg, "pipeline_runs"))
    assert runs.groupBy("step").count().where(F.col("count") > 1).count() == 0  # each step recorded once
    client = mlflow.MlflowClient(cfg.tracking.uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    assert client.search_runs(experiments, "attributes.status = 'RUNNING'") == []
    assert len(client.search_runs(experiments, "attributes.status = 'KILLED'")) >= 2
