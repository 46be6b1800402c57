"""SparkSession for every job: reuse the one the platform gives, else build a local Delta session.

Under ``spark-submit`` and on Databricks a session (or a launcher gateway) already exists with the
cluster's master, JARs and settings; cleanwell then touches none of them. On a laptop or in CI it
builds ``local[*]`` with Delta Lake's SQL extension and catalog, loading the JARs of its *JAR sets*
through ``spark.jars`` from the local Maven repository: ``delta`` always, ``s3`` (Hadoop S3A) when
``spark.jar_sets`` names it.

Why not ``spark.jars.packages`` / ``configure_spark_with_delta_pip``: Spark's Ivy resolver fails
offline on Delta's transitive JARs even when ~/.m2 holds them. Each set below lists every JAR it
needs, non-transitively, minus what pyspark's jars/ already ships. ``cleanwell fetch-jars [--with s3]``
puts them in ~/.m2 with one ``mvn`` run; after that no network is needed.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from jobs.common import storage
from jobs.common.config import Config
from jobs.common.errors import SetupError
from jobs.common.secrets import is_secret_key

DELTA_VERSION = "4.4.0"
# (groupId, artifactId, version): the Delta JARs for Spark 4.1 / Scala 2.13.
DELTA_ARTIFACTS = (
    ("io.delta", "delta-spark_4.1_2.13", DELTA_VERSION),
    ("io.delta", "delta-storage", DELTA_VERSION),
)

# Hadoop S3A for pyspark 4.1.4, whose jars/ has hadoop-client-api/-runtime 3.4.2: hadoop-aws must be the
# same version, and 2.29.52 is the AWS SDK v2 that hadoop 3.4.2 is built with (hadoop-project's
# aws-java-sdk-v2.version). Instead of the SDK's ~600 MB shaded `bundle`, the runtime closure of `s3` and
# `s3-transfer-manager` (30 JARs, 9.3 MB), less what Spark ships (httpclient, httpcore, commons-codec,
# slf4j, netty 4.2) and less what S3A never loads (crt-core, eventstream: S3 Select and the CRT client).
# netty-nio-client stays: a rename (a copy) past fs.s3a.multipart.threshold goes through the async client.
HADOOP_AWS_VERSION = "3.4.2"
AWS_SDK_VERSION = "2.29.52"
AWS_SDK_MODULES = (
    "s3", "s3-transfer-manager", "aws-xml-protocol", "aws-query-protocol", "protocol-core", "arns", "profiles",
    "http-auth", "identity-spi", "http-auth-spi", "http-auth-aws", "checksums", "checksums-spi", "retries-spi",
    "retries", "sdk-core", "auth", "http-client-spi", "regions", "annotations", "utils", "aws-core", "metrics-spi",
    "json-utils", "third-party-jackson-core", "endpoints-spi", "apache-client", "netty-nio-client",
)
S3_ARTIFACTS = (
    ("org.apache.hadoop", "hadoop-aws", HADOOP_AWS_VERSION),
    *(("software.amazon.awssdk", module, AWS_SDK_VERSION) for module in AWS_SDK_MODULES),
    ("org.reactivestreams", "reactive-streams", "1.0.4"),
)


@dataclass(frozen=True)
class JarSet:
    """JARs that a session cleanwell builds loads, and the Spark settings that come with them (applied only
    to sessions cleanwell builds: a cluster's own settings are never overridden)."""
    artifacts: tuple[tuple[str, str, str], ...]
    conf: dict[str, str] = field(default_factory=dict)


JAR_SETS = {
    "delta": JarSet(DELTA_ARTIFACTS, {
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
    }),
    # s3:// served by S3A too, so one URI works for Spark and for fsspec (s3fs takes s3:// and s3a://).
    "s3": JarSet(S3_ARTIFACTS, {
        "spark.hadoop.fs.s3.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        "spark.hadoop.fs.AbstractFileSystem.s3.impl": "org.apache.hadoop.fs.s3a.S3A",
    }),
}
ALWAYS = ("delta",)


def maven_repo() -> Path:
    return Path(os.environ.get("CLEANWELL_M2_REPO", Path.home() / ".m2" / "repository"))


def _jar_path(group: str, artifact: str, version: str) -> Path:
    return maven_repo() / group.replace(".", "/") / artifact / version / f"{artifact}-{version}.jar"


def _set_names(names: Iterable[str]) -> list[str]:
    """``delta`` plus ``names``, in order, once each; SetupError for a name that is no JAR set."""
    ordered = list(dict.fromkeys([*ALWAYS, *names]))
    unknown = [name for name in ordered if name not in JAR_SETS]
    if unknown:
        raise SetupError(f"unknown JAR set {', '.join(unknown)}; known: {', '.join(JAR_SETS)}")
    return ordered


def jar_set_paths(name: str) -> list[Path]:
    """Where one set's JARs lie in the local Maven repository (present or not)."""
    return [_jar_path(*artifact) for artifact in JAR_SETS[_set_names([name])[-1]].artifacts]


def delta_jar_paths() -> list[Path]:
    return jar_set_paths("delta")


def _resolver_pom(artifacts: Iterable[tuple[str, str, str]]) -> str:
    # Each artifact alone (exclusions *): the sets already list every JAR they need.
    dependencies = "".join(
        f"<dependency><groupId>{g}</groupId><artifactId>{a}</artifactId><version>{v}</version><exclusions>"
        "<exclusion><groupId>*</groupId><artifactId>*</artifactId></exclusion></exclusions></dependency>"
        for g, a, v in artifacts)
    return ('<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>'
            "<groupId>cleanwell</groupId><artifactId>cleanwell-jars</artifactId><version>0</version>"
            f"<packaging>pom</packaging><dependencies>{dependencies}</dependencies></project>")


def fetch_jars(sets: Iterable[str] = (), quiet: bool = True) -> list[Path]:
    """Resolve the JARs of ``delta`` and ``sets`` into the local Maven repository with one mvn run (a no-op
    when all are present); their paths."""
    artifacts = [art for name in _set_names(sets) for art in JAR_SETS[name].artifacts]
    missing = [art for art in artifacts if not _jar_path(*art).is_file()]
    if missing and not shutil.which("mvn"):
        raise SetupError("Maven (mvn) is needed once to fetch the JARs; install it, or set spark.jars to existing "
                         f"copies of: {', '.join(a for _, a, _ in missing)}")
    if missing:
        with tempfile.TemporaryDirectory(prefix="cleanwell-jars-") as tmp:
            pom = Path(tmp) / "pom.xml"
            pom.write_text(_resolver_pom(missing), encoding="utf-8")
            # One JVM for all of them: a dependency:get per JAR costs a Maven start-up each.
            cmd = ["mvn", "-B", "-f", str(pom), "dependency:resolve", f"-Dmaven.repo.local={maven_repo()}"]
            if quiet:
                cmd.insert(1, "-q")
            proc = subprocess.run(cmd, capture_output=True, text=True)
        absent = [":".join(art) for art in missing if not _jar_path(*art).is_file()]
        if proc.returncode != 0 or absent:
            raise SetupError(f"mvn could not fetch {', '.join(absent) or 'the JARs'}:\n{proc.stdout[-2000:]}"
                             f"{proc.stderr[-2000:]}")
    return [_jar_path(*art) for art in artifacts]


def local_jars(cfg: Config) -> list[Path]:
    """The JARs of a session cleanwell builds: ``spark.jars`` (else the Delta set), then each set in
    ``spark.jar_sets``; SetupError naming the command that fetches whatever is missing."""
    jars = [Path(j) for j in cfg.spark.jars]
    if not jars:
        absent = [str(j) for j in delta_jar_paths() if not j.is_file()]
        if absent:
            raise SetupError("Delta Lake JARs not found: " + ", ".join(absent) + "\nRun `cleanwell fetch-jars` "
                             "(or `make setup`) once, with network access to Maven Central.")
        jars = delta_jar_paths()
    else:
        absent = [str(j) for j in jars if not j.is_file()]
        if absent:
            raise SetupError(f"spark.jars names JARs that do not exist: {', '.join(absent)}")
    for name in _set_names(cfg.spark.jar_sets)[len(ALWAYS):]:
        paths = jar_set_paths(name)
        absent = [p.name for p in paths if not p.is_file()]
        if absent:
            raise SetupError(f"spark.jar_sets names `{name}`, but {len(absent)} of its {len(paths)} JARs are not in "
                             f"{maven_repo()} ({', '.join(absent[:3])}{', …' if len(absent) > 3 else ''}).\n"
                             f"Run `cleanwell fetch-jars --with {name}` (or `make jars`) once, with network access "
                             "to Maven Central.")
        jars += [p for p in paths if p not in jars]
    return jars


def local_conf(cfg: Config) -> dict[str, str]:
    """Spark settings of a session cleanwell builds: each JAR set's, then ``spark.conf`` over them."""
    # Spark makes its warehouse folder when the catalog starts, even for path tables: under the lake root,
    # not as ./spark-warehouse in whatever folder the job was started from.
    merged = {"spark.sql.warehouse.dir": storage.join(cfg.lake.root, "_warehouse")}
    for name in _set_names(cfg.spark.jar_sets):
        merged.update(JAR_SETS[name].conf)
    return {**merged, **cfg.spark.conf}


# The local JVM's heap gives back what it does not use. With G1's defaults the JVM keeps every page of
# `spark.driver.memory` it ever touched (a 3g heap: ~3.4 GiB resident for good after the first big
# shuffle), beside the Python driver and workers that do most of a step's work; the 1 M-document run
# peaked at 8.65 GiB while the JVM idled at 4.14 GiB during detect's training on the driver (issue #16).
# A free ratio of 10-30 % sizes the committed heap to what is live after each collection, and a
# collection every 5 s of idleness shrinks it between jobs: on a 30 M-row shuffle, 3.37 -> 1.7 GiB
# after the job, 1.3 GiB idle, job times equal (docs/performance.md). Options a user sets in
# `spark.driver.extraJavaOptions` come later on the command line, so they win; a collector chosen there
# replaces G1 and its settings (the JVM refuses two collectors, "Multiple garbage collectors selected", which
# PySpark reports only as a gateway that exited). conf/demo.yaml picks the parallel collector for small data.
G1_OPTIONS = ("-XX:+UseG1GC", "-XX:G1PeriodicGCInterval=5000")
LOCAL_HEAP_OPTIONS = (*G1_OPTIONS, "-XX:MinHeapFreeRatio=10", "-XX:MaxHeapFreeRatio=30")
_OTHER_COLLECTOR = re.compile(r"-XX:\+Use(Serial|Parallel|ParallelOld|Z|Shenandoah|Epsilon)GC\b")


def driver_java_options(conf: dict[str, str]) -> str:
    """The local driver JVM's options: cleanwell's log4j settings and :data:`LOCAL_HEAP_OPTIONS`, then
    ``spark.driver.extraJavaOptions`` from ``conf`` (removed from it). Setting that key used to replace
    the log4j option, and with it the quiet console."""
    log4j = storage.materialized_conf("log4j2.properties")
    configured = str(conf.pop("spark.driver.extraJavaOptions", "") or "")
    other_collector = _OTHER_COLLECTOR.search(configured) is not None
    heap = [o for o in LOCAL_HEAP_OPTIONS if not (other_collector and o in G1_OPTIONS)]
    return " ".join(filter(None, [f"-Dlog4j2.configurationFile={log4j}", *heap, configured]))


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

    jars = local_jars(cfg)
    # Workers must run this interpreter (the venv's), not whatever `python3` is first on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    conf = local_conf(cfg)
    builder = (SparkSession.builder.master(cfg.spark.master).appName(cfg.spark.app_name)
               .config("spark.jars", ",".join(str(j) for j in jars))
               .config("spark.driver.extraJavaOptions", driver_java_options(conf)))
    # PySpark starts the JVM with every builder setting as `--conf key=value` on spark-submit's command
    # line, where `ps` shows it to every user of the machine: credentials are set once the JVM runs.
    secret = {key: value for key, value in conf.items() if is_secret_key(key)}
    for key, value in conf.items():
        if key not in secret:
            builder = builder.config(key, value)
    spark = builder.getOrCreate()
    _set_after_start(spark, secret)
    spark.sparkContext.setLogLevel(cfg.spark.log_level)
    return spark


def _set_after_start(spark, settings: dict[str, str]) -> None:
    """``spark.hadoop.*`` keys go to the Hadoop configuration (the file systems read them when first used,
    after this), the rest to the session's runtime conf."""
    hadoop = spark.sparkContext._jsc.hadoopConfiguration()
    for key, value in settings.items():
        if key.startswith("spark.hadoop."):
            hadoop.set(key[len("spark.hadoop."):], str(value))
        else:
            spark.conf.set(key, str(value))
