"""Airflow DAG: the cleanwell pipeline, one SparkSubmitOperator task per step, on a Spark cluster.

Each task runs ``spark-submit <launcher> <step> --config <config> lake.root=… tracking.uri=…`` with
`make package`'s output (cleanwell's .zip and the Delta JAR on --py-files, the packed environment as
spark.archives for the executors). Everything a deployment names is a DAG param, templated into the tasks as
``{{ params.x }}``, so a run can be triggered against another config, lake or cluster connection.

Steps hand each other state only through the lake and MLflow, never through the worker's disk, so
both locations must be absolute (a relative ``./lake`` or ``sqlite:///mlflow.db`` would land in a
task's temporary working directory and vanish): the defaults are checked when the DAG is parsed,
the rendered values when a task starts. A step exits 2 for a failed gate, invalid input or config
(jobs/common/runner.py run_guarded): that fails the task at once; any other failure is retried, and
a retried step skips itself if it had already finished (pipeline_runs).

The operator runs spark-submit on the Airflow worker in client mode: the worker needs Java, a Spark
distribution (``spark_home``; tests/test_airflow.py uses the pyspark in .venv, so Spark is installed
once) and the unpacked environment for the driver (``driver_python``). This file imports only Airflow and its Spark
provider, never cleanwell, so it parses in an Airflow environment without Spark's Python packages.
"""
from __future__ import annotations

import datetime as dt
import itertools
import json
import re
from typing import Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG, Param
from airflow.sdk.exceptions import AirflowFailException

# jobs.pipeline.STEP_NAMES, in pipeline order (tests/test_airflow.py keeps them equal).
STEPS = ["ingest", "dedup", "quality", "neardup", "tokenize", "detect", "embed", "sample", "report"]
# Each step's upstream tasks, from the tables the steps read and write (jobs/*.py STEP.inputs/outputs):
# dedup reads ingest's bronze; quality, neardup, tokenize, detect and embed each rewrite silver in
# place (and detect loads the tokenizer that tokenize logged), so they run one after another; sample
# reads the finished silver; report reads gold. No two steps are independent, so nothing fans out.
UPSTREAM: dict[str, list[str]] = {step: [before] for before, step in itertools.pairwise(STEPS)}

NOT_RETRYABLE_EXIT = 2  # cleanwell's exit code for a failed gate, invalid input or config
# Overrides that name where a step's results go: each must be absolute, or steps lose each other's output.
LOCATION_KEYS = ("lake.root", "tracking.uri", "tracking.artifact_root", "sample.manifest_dir", "report.dir")
SERVER_URIS = ("databricks", "databricks-uc")  # MLflow tracking URIs without a path

PARAMS = {
    "spark_conn_id": Param("spark_default", type="string", description="Airflow connection of the Spark master "
                           "(conn type spark, host e.g. spark://host:7077, yarn or local[4])."),
    "spark_home": Param("", type="string", description="Spark distribution on the worker; empty: spark-submit "
                        "from PATH."),
    "config": Param("/opt/cleanwell/conf/cleanwell.yaml", type="string", description="cleanwell config file "
                    "(local, s3://, abfss://, …); relative input paths in it are relative to the worker's "
                    "working directory, so use absolute ones."),
    "lake_root": Param("/opt/cleanwell/lake", type="string", description="Absolute lake root that the driver "
                       "and every executor reach (a shared path, s3://, abfss://, dbfs:/ …)."),
    "tracking_uri": Param("sqlite:////opt/cleanwell/mlflow.db", type="string", description="MLflow tracking "
                          "URI: a server (http://…), databricks, or an absolute sqlite:////… path."),
    "artifact_root": Param("/opt/cleanwell/mlartifacts", type="string", description="Absolute MLflow artifact "
                           "location for a new experiment (a server chooses its own)."),
    "launcher": Param("/opt/cleanwell/dist/cleanwell_submit.py", type="string",
                      description="The spark-submit launcher from `make package`."),
    "py_files": Param("/opt/cleanwell/dist/cleanwell-0.1.0.zip,"
                      "/opt/cleanwell/dist/jars/delta-spark_4.1_2.13-4.4.0.jar", type="string",
                      description="--py-files: cleanwell (the wheel as a .zip: executors import only .zip, "
                      ".egg and .jar py-files) and the Delta JAR (Delta's Python)."),
    "jars": Param("/opt/cleanwell/dist/jars/delta-spark_4.1_2.13-4.4.0.jar,"
                  "/opt/cleanwell/dist/jars/delta-storage-4.4.0.jar", type="string", description="--jars: Delta."),
    "env_archive": Param("/opt/cleanwell/dist/cleanwell-env.tar.gz", type="string", description="Packed "
                         "environment shipped to the executors as ./env; empty: the executors' own Python."),
    "executor_python": Param("./env/bin/python", type="string", description="spark.pyspark.python: the "
                             "executors' Python (./env/bin/python is the shipped environment)."),
    "driver_python": Param("/opt/cleanwell/env/bin/python", type="string", description="The driver's Python on "
                           "the Airflow worker: cleanwell-env.tar.gz unpacked there."),
    "spark_conf": Param({}, type="object", description="More --conf settings for every step, e.g. "
                        "{\"spark.executor.memory\": \"8g\"} (they win over the DAG's own)."),
    "manifest_dir": Param("", type="string", description="Absolute folder for mixture manifests; empty: "
                          "<lake_root>/manifests."),
    "report_dir": Param("", type="string", description="Absolute folder for HTML reports; empty: "
                        "<lake_root>/reports."),
}


def location_problem(key: str, value: str) -> str | None:
    """Why a location override would not outlive the task (relative to its working directory), or None."""
    if key == "tracking.uri":
        if value in SERVER_URIS or value.startswith("/"):
            return None
        if value.startswith("sqlite:"):
            return None if value.startswith("sqlite:////") else ("a sqlite URI needs an absolute path: "
                                                                  "sqlite:////abs/mlflow.db")
        return None if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/]|^file:///", value) else "not a URI or absolute path"
    if value.startswith("/") or value.startswith("dbfs:/") or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", value):
        return None
    return "a relative path lands in the task's temporary working directory; give an absolute path or URI"


def relative_locations(args: list[str]) -> list[str]:
    """The ``key=value`` arguments among ``args`` whose location is not absolute, each with the reason."""
    problems = []
    for arg in args:
        key, sep, value = str(arg).partition("=")
        if sep and key in LOCATION_KEYS and (why := location_problem(key, value)):
            problems.append(f"{key}={value!r}: {why}")
    return problems


class CleanwellStep(SparkSubmitOperator):
    """spark-submit of one cleanwell step. Exit code 2 (failed gate, invalid input or config) raises
    AirflowFailException, so the task fails without retries; any other failure is retried.

    The provider templates neither the spark-submit binary nor the connection id, and a template cannot
    add keys to ``conf``; this operator takes them as templated fields and hands them to the hook when
    the task runs.
    """

    template_fields = (*SparkSubmitOperator.template_fields, "spark_submit", "spark_conn_id", "extra_conf")

    def __init__(self, *, step: str, spark_submit: str, spark_conn_id: str, extra_conf: str = "{}",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.step = step
        self.spark_submit = spark_submit
        self.spark_conn_id = spark_conn_id
        self.extra_conf = extra_conf  # a JSON object (a template cannot add keys to ``conf``)

    def execute(self, context: Any) -> None:
        problems = relative_locations(self.application_args or [])
        if problems:
            raise AirflowFailException(f"cleanwell {self.step}: locations must be absolute: " + "; ".join(problems))
        self._spark_binary = self.spark_submit
        self._conn_id = self.spark_conn_id
        # An empty param means "not set": spark-submit must not get --conf spark.archives= or an empty env var.
        conf = {**(self.conf or {}), **json.loads(self.extra_conf or "{}")}
        self.conf = {key: str(value) for key, value in conf.items() if value not in ("", None)}
        self.env_vars = {key: value for key, value in (self.env_vars or {}).items() if value}
        self._hook = None  # built from the rendered connection id, also on a retry in the same process
        try:
            super().execute(context)
        except Exception as exc:
            process = getattr(self._hook, "_submit_sp", None)  # the hook's spark-submit Popen
            if process is not None and process.returncode == NOT_RETRYABLE_EXIT:
                raise AirflowFailException(
                    f"cleanwell {self.step} exited {NOT_RETRYABLE_EXIT} (failed gate, invalid input or config); "
                    f"not retrying. {exc}") from exc
            raise


def check_default_locations() -> None:
    """Refuse relative default locations when the DAG is parsed (a triggered run is checked per task)."""
    defaults = {"lake.root": "lake_root", "tracking.uri": "tracking_uri", "tracking.artifact_root": "artifact_root"}
    problems = relative_locations([f"{key}={PARAMS[name].value}" for key, name in defaults.items()])
    if problems:
        raise ValueError("cleanwell DAG params: locations must be absolute: " + "; ".join(problems))


check_default_locations()

with DAG(
    dag_id="cleanwell",
    description="Provenance, filtering, mixing and gates before a training run, as spark-submit tasks",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # every step writes the same Delta tables
    params=PARAMS,
    default_args={"retries": 2, "retry_delay": dt.timedelta(minutes=5), "retry_exponential_backoff": True,
                  "execution_timeout": dt.timedelta(hours=2)},
    tags=["cleanwell", "spark", "data-quality"],
) as dag:
    tasks = {
        step: CleanwellStep(
            task_id=step,
            step=step,
            spark_submit="{{ params.spark_home ~ '/bin/spark-submit' if params.spark_home else 'spark-submit' }}",
            spark_conn_id="{{ params.spark_conn_id }}",
            name=f"cleanwell-{step}",
            application="{{ params.launcher }}",
            application_args=[
                step, "--config", "{{ params.config }}",
                "lake.root={{ params.lake_root }}",
                "tracking.uri={{ params.tracking_uri }}",
                "tracking.artifact_root={{ params.artifact_root }}",
                "sample.manifest_dir={{ params.manifest_dir or params.lake_root ~ '/manifests' }}",
                "report.dir={{ params.report_dir or params.lake_root ~ '/reports' }}",
            ],
            py_files="{{ params.py_files }}",
            jars="{{ params.jars }}",
            extra_conf="{{ params.spark_conf | tojson }}",
            conf={
                "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
                "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
                "spark.archives": "{{ params.env_archive ~ '#env' if params.env_archive else '' }}",
                "spark.pyspark.python": "{{ params.executor_python }}",
                "spark.pyspark.driver.python": "{{ params.driver_python }}",
            },
            env_vars={
                "CLEANWELL_PIPELINE_RUN_ID": "{{ run_id }}",  # groups the steps' MLflow runs
                "SPARK_HOME": "{{ params.spark_home }}",
            },
        )
        for step in STEPS
    }
    for step, upstream in UPSTREAM.items():
        for before in upstream:
            tasks[before] >> tasks[step]
