"""SparkSession for every job: reuse the one the platform gives, else build a local Delta session.

Under ``spark-submit`` and on Databricks a session (or a launcher gateway) already exists with the
cluster's master, JARs and settings; cleanwell then touches none of them. On a laptop or in CI it
builds ``local[*]`` with Delta Lake's SQL extension and catalog, loading the Delta JARs through
``spark.jars`` from the local Maven repository.

Why not ``spark.jars.packages`` / ``configure_spark_with_delta_pip``: Spark's Ivy resolver fails
offline on Delta's transitive JARs even when ~/.m2 holds them, while the two JARs below are all a
local session needs (Spark itself ships the rest). ``cleanwell fetch-jars`` puts them in ~/.m2 with
``mvn dependency:get``; after that no network is needed.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from jobs.common.config import Config, conf_dir
from jobs.common.errors import SetupError

DELTA_VERSION = "4.4.0"
# (groupId, artifactId, version): the Delta JARs for Spark 4.1 / Scala 2.13.
DELTA_ARTIFACTS = (
    ("io.delta", "delta-spark_4.1_2.13", DELTA_VERSION),
    ("io.delta", "delta-storage", DELTA_VERSION),
)

# Applied only to sessions cleanwell builds itself; a cluster's own settings are never overridden.
LOCAL_DEFAULTS = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}


def maven_repo() -> Path:
    return Path(os.environ.get("CLEANWELL_M2_REPO", Path.home() / ".m2" / "repository"))


def delta_jar_paths() -> list[Path]:
    repo = maven_repo()
    return [repo / g.replace(".", "/") / a / v / f"{a}-{v}.jar" for g, a, v in DELTA_ARTIFACTS]


def fetch_jars(quiet: bool = True) -> list[Path]:
    """Resolve the Delta JARs into the local Maven repository with mvn (no-op when present)."""
    paths = delta_jar_paths()
    missing = [(art, p) for art, p in zip(DELTA_ARTIFACTS, paths, strict=True) if not p.is_file()]
    if missing and not shutil.which("mvn"):
        raise SetupError("Maven (mvn) is needed once to fetch the Delta Lake JARs; install it, or set spark.jars "
                         f"to existing copies of: {', '.join(a for (_, a, _), _ in missing)}")
    for (group, artifact, version), path in missing:
        cmd = ["mvn", "-B", "dependency:get", f"-Dartifact={group}:{artifact}:{version}", "-Dtransitive=false"]
        if quiet:
            cmd.insert(1, "-q")
        if str(maven_repo()) != str(Path.home() / ".m2" / "repository"):
            cmd.append(f"-Dmaven.repo.local={maven_repo()}")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not path.is_file():
            raise SetupError(f"mvn could not fetch {group}:{artifact}:{version}:\n{proc.stdout[-2000:]}"
                             f"{proc.stderr[-2000:]}")
    return paths


def _platform_session():
    """The session the platform made (Databricks, notebooks, tests), or None."""
    from pyspark.sql import SparkSession

    return SparkSession.getActiveSession()


def _launched_by_spark_submit() -> bool:
    # spark-submit starts the Python driver with a gateway already open and the cluster conf loaded.
    return "PYSPARK_GATEWAY_PORT" in os.environ


def get_spark(cfg: Config):
    """The active SparkSession if there is one (or spark-submit's), else a local Delta session."""
    from pyspark.sql import SparkSession

    active = _platform_session()
    if active is not None:
        return active
    if _launched_by_spark_submit():
        return SparkSession.builder.appName(cfg.spark.app_name).getOrCreate()

    jars = [Path(j) for j in cfg.spark.jars] or delta_jar_paths()
    absent = [str(j) for j in jars if not j.is_file()]
    if absent:
        raise SetupError("Delta Lake JARs not found: " + ", ".join(absent) +
                         "\nRun `cleanwell fetch-jars` (or `make setup`) once, with network access to Maven Central.")
    # Workers must run this interpreter (the venv's), not whatever `python3` is first on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    log4j = conf_dir() / "log4j2.properties"
    builder = (SparkSession.builder.master(cfg.spark.master).appName(cfg.spark.app_name)
               .config("spark.jars", ",".join(str(j) for j in jars))
               .config("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile={log4j}"))
    for key, value in {**LOCAL_DEFAULTS, **cfg.spark.conf}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(cfg.spark.log_level)
    return spark
