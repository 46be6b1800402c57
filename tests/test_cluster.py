"""`make package`'s output submitted to a real Spark standalone cluster from a folder with no checkout."""
from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from jobs.common import tables
from tests.conftest import lake_overrides
from tests.servers import Package, SparkCluster, clean_environment

# What a user passes to spark-submit besides the package (README "Running on a Spark cluster"). The
# shuffle and parallelism settings differ from a local session's (conf/base.yaml; spark.conf is applied
# only to sessions cleanwell builds): the outputs compared with the local run must not depend on them.
SPARK_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
    "spark.pyspark.python": "./env/bin/python",
    "spark.pyspark.driver.python": "env/bin/python",
    "spark.sql.shuffle.partitions": "4",
    "spark.default.parallelism": "8",
    "spark.sql.session.timeZone": "UTC",
    "spark.ui.enabled": "false",
    "spark.driver.host": "127.0.0.1",  # the test cluster listens on loopback only
    "spark.driver.memory": "2g",
    "spark.executor.memory": "1500m",
    # Delta replays a table's log in 50 tasks by default (cleanwell's local sessions use 2, conf/base.yaml):
    # on this 2-core test cluster each replay took ~25 s of the demo's tiny tables, several per step.
    "spark.databricks.delta.snapshotPartitions": "2",
}

# Where each executor's Python and cleanwell came from.
PROBE = """
import json, sys
from pyspark.sql import SparkSession

def where(_):
    import jobs
    import pyarrow
    return json.dumps({"prefix": sys.prefix, "jobs": jobs.__file__, "pyarrow": pyarrow.__file__})

spark = SparkSession.builder.getOrCreate()
print("PROBE " + json.dumps(sorted(set(spark.sparkContext.parallelize(range(8), 8).map(where).collect()))))
spark.stop()
"""


def submit(cluster: SparkCluster, app: Package, *args: str) -> subprocess.CompletedProcess:
    """spark-submit as README documents it, run inside the copied package folder."""
    cmd = [str(cluster.spark_home / "bin" / "spark-submit"), "--master", cluster.master_url,
           "--archives", f"{app.env.name}#env", "--jars", ",".join(f"jars/{j.name}" for j in app.jars),
           "--py-files", ",".join([app.pyfiles.name, *(f"jars/{j.name}" for j in app.jars if "delta-spark" in j.name)])]
    for key, value in SPARK_CONF.items():
        cmd += ["--conf", f"{key}={value}"]
    proc = subprocess.run([*cmd, *args], cwd=app.folder, env=clean_environment(SPARK_LOCAL_IP="127.0.0.1"),
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    return proc


@pytest.fixture(scope="module")
def installed_app(packaged: Package, tmp_path_factory) -> Package:
    """dist/ copied to a temp folder, the environment unpacked beside it for the driver."""
    app = packaged.copy_to(tmp_path_factory.mktemp("no-checkout") / "cleanwell")
    with tarfile.open(app.env) as archive:
        archive.extractall(app.folder / "env", filter="tar")
    return app


# The first three steps (ingest's parsing, dedup's hashing, quality's Arrow UDFs), not the whole pipeline:
# tests/test_airflow.py runs all nine steps of the same package with spark-submit (one process per step,
# master local[2]) and compares the gold with the local run's. On this 2-core cluster the whole pipeline
# took ~7 min of CI's 90 (2026-12-03), and what the cluster adds, executors in other processes running
# the shipped environment, shows in the first UDF step as in the last.
CLUSTER_STEPS = "ingest,dedup,quality"


@pytest.mark.slow
@pytest.mark.spark
def test_packaged_steps_on_a_standalone_cluster_give_the_local_silver(spark_cluster, installed_app, demo, spark,
                                                                      tmp_path):
    out = tmp_path / "out"
    before = set(spark_cluster.executor_dirs())  # the session's cluster also ran other tests' applications
    proc = submit(spark_cluster, installed_app, installed_app.launcher.name, "run", "--config", "conf/demo.yaml",
                  "--steps", CLUSTER_STEPS, *lake_overrides(out)[:-1])
    assert "pipeline finished: 3 step(s) ran" in proc.stdout, proc.stdout[-3000:]

    local_cfg, _, _ = demo
    columns = ["doc_id", "n_words", "alpha_ratio", "gopher_mean_word_length", "detected_language"]
    cluster_silver = tables.read_table(spark, tables.TableRef("silver", str(out / "lake" / "silver_documents"), True))
    local_silver = tables.read_table(spark, tables.table_ref(local_cfg, "silver"))
    rows = sorted(tuple(r) for r in cluster_silver.select(*columns).collect())
    assert rows and rows == sorted(tuple(r) for r in local_silver.select(*columns).collect())

    # Every executor of the application unpacked the shipped environment ...
    executors = [d for d in spark_cluster.executor_dirs() if d not in before]
    assert executors and all((d / "env" / "bin" / "python").exists() for d in executors)


@pytest.mark.slow
def test_executors_run_the_shipped_environment_and_wheel(spark_cluster, installed_app):
    probe = installed_app.folder / "probe.py"
    probe.write_text(PROBE)
    proc = submit(spark_cluster, installed_app, probe.name)
    seen = [json.loads(s) for s in json.loads(proc.stdout.split("PROBE ", 1)[1].splitlines()[0])]
    work_dirs = [str(w) for w in spark_cluster.work_dirs]
    assert seen
    for where in seen:
        # ... and ran its Python: the archive unpacked in an executor's folder on a worker, not any venv
        # of this machine, with cleanwell from the package that --py-files shipped.
        assert Path(where["prefix"]).name == "env" and where["prefix"].startswith(tuple(work_dirs)), where
        assert where["pyarrow"].startswith(where["prefix"]), where
        assert installed_app.pyfiles.name in where["jobs"], where
