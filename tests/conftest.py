"""Shared fixtures: one SparkSession for the whole run, and a fresh lake + MLflow store per use."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Before any cleanwell module is imported: a developer's MLFLOW_TRACKING_URI must not receive test runs.
for _variable in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "CLEANWELL_PIPELINE_RUN_ID"):
    os.environ.pop(_variable, None)
# MLflow 3 sends usage telemetry unless told not to (it checks PYTEST_CURRENT_TEST only at import, which
# collection does first); tests talk to loopback only, and subprocesses inherit this.
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

pytest_plugins = ["tests.mlflow_server", "tests.servers", "tests.s3"]

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "conf" / "demo.yaml"


def lake_overrides(root: Path) -> list[str]:
    """Overrides that keep every output of a run under ``root`` (lake, MLflow, manifests, reports)."""
    return [f"lake.root={root / 'lake'}", f"tracking.uri=sqlite:///{root / 'mlflow.db'}",
            f"tracking.artifact_root={root / 'mlartifacts'}", f"sample.manifest_dir={root / 'manifests'}",
            f"report.dir={root / 'reports'}", "spark.conf.spark.sql.shuffle.partitions=4"]


def spark_jobs(spark) -> int:
    """How many Spark jobs the session has run so far: equal before and after a block that ran none."""
    return len(spark.sparkContext.statusTracker().getJobIdsForGroup(None))


# For a test process that runs one or two steps in a cold JVM: C1-only JIT (C2's compilations hardly pay
# back in a JVM that lives a minute; a one-process demo run gains nothing, docs/performance.md).
SHORT_LIVED_JVM = "spark.conf.spark.driver.extraJavaOptions=-XX:TieredStopAtLevel=1"

# A credential in the demo run's config, as a user's S3 key would be: harmless to a local lake (spark.conf is
# outside every step's config hash), and no file the run writes may hold it (tests/test_secrets.py).
PLANTED_SECRET = "PLANTED-demo-s3cr3t-91c4"
DEMO_SECRETS = [f"spark.conf.spark.hadoop.fs.s3a.secret.key={PLANTED_SECRET}"]


@pytest.fixture(scope="session", autouse=True)
def _isolated_environment():
    os.chdir(REPO)  # demo paths are relative to the repository root
    yield


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from jobs.common.config import load_config
    from jobs.common.session import get_spark

    # Small data, as the demo config sizes it (conf/demo.yaml): no whole-stage code generation.
    cfg = load_config(overrides=[*lake_overrides(tmp_path_factory.mktemp("session")),
                                 "spark.conf.spark.sql.codegen.wholeStage=false"])
    session = get_spark(cfg)
    yield session
    session.stop()


@pytest.fixture
def make_config(tmp_path):
    """Config for the demo sources with everything written under this test's tmp_path."""
    from jobs.common.config import load_config

    def make(*extra: str, config_files: tuple[str, ...] = (str(DEMO_CONFIG),), root: Path | None = None):
        return load_config(config_files, lake_overrides(root or tmp_path) + list(extra))

    return make


@pytest.fixture(scope="session")
def demo(spark, tmp_path_factory):
    """The demo pipeline run once for the whole session: (config, root folder, {step: outcome}).
    Tests must not change this lake; a test that writes uses ``fork_demo``."""
    from jobs.common.config import load_config
    from jobs.pipeline import run_pipeline
    from tests import driver_rows

    root = tmp_path_factory.mktemp("demo")
    cfg = load_config([str(DEMO_CONFIG)], lake_overrides(root) + DEMO_SECRETS)
    with driver_rows.recording() as records:  # what each step brought to the driver (test_driver_rows.py)
        outcomes = run_pipeline(cfg)
    driver_rows.RECORDED["demo"] = records
    return cfg, root, {o.step: o for o in outcomes}


@pytest.fixture
def fork_demo(demo, tmp_path):
    """A private copy of the demo lake (tables, MLflow store, manifests) for a test that writes."""
    import shutil

    from jobs.common.config import load_config

    _, root, _ = demo

    def fork(*extra: str):
        copy = tmp_path / "fork"
        if not copy.exists():
            shutil.copytree(root, copy)
        return load_config([str(DEMO_CONFIG)], lake_overrides(copy) + list(extra)), copy

    return fork
