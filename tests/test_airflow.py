"""The Airflow DAG (dags/cleanwell_dag.py) in a real Airflow 3 with the apache-spark provider.

Airflow cannot share the test venv (its pins conflict, see constraints-airflow.txt), so it lives in
.venv-airflow (`make airflow`) and everything that imports it runs there as a subprocess
(tests/airflow_harness.py) with a fresh AIRFLOW_HOME and sqlite database. The DAG's tasks run
`spark-submit` for real, with master local[N] (the DAG passes the connection's host to --master as
it is; tests/test_cluster.py runs the same packaged pipeline on the standalone cluster of
tests/servers.py). The demo DAG ran on that cluster until 2026-12-03 and took 18 min of CI's 90 (nine
applications, each waiting for executors and replaying Delta logs across them); in local mode it proves
the same DAG surface (nine spark-submit processes, `make package`'s launcher, py-files and jars, models
passed between tasks through the mlflow server) in a third of the time.
"""
from __future__ import annotations

import ast
import itertools
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from jobs.common.session import delta_jar_paths
from jobs.pipeline import STEP_NAMES, STEPS
from tests.airflow_harness import RESULT_MARKER
from tests.conftest import DEMO_CONFIG, REPO
from tests.servers import Package, clean_environment, spark_home

AIRFLOW_VENV = REPO / ".venv-airflow"
HARNESS = REPO / "tests" / "airflow_harness.py"
DAGS = REPO / "dags"
DAG_ID = "cleanwell"


def expected_upstream(steps) -> dict[str, set[str]]:
    """Which steps each step must wait for, from the tables they read and write: the earlier steps that
    wrote a table it reads or writes, and the earlier readers of a table it writes; then only the
    direct ones (transitive reduction)."""
    before: dict[str, set[str]] = {}
    for index, step in enumerate(steps):
        touched, written = set(step.inputs) | set(step.outputs), set(step.outputs)
        before[step.name] = {other.name for other in steps[:index]
                             if touched & set(other.outputs) or written & set(other.inputs)}
    reachable: dict[str, set[str]] = {}
    for step in steps:  # pipeline order: every upstream step is complete before it is needed
        reachable[step.name] = set().union(*(reachable[b] | {b} for b in before[step.name]))
    return {name: {b for b in deps if not any(b in reachable[other] for other in deps - {b})}
            for name, deps in before.items()}


def airflow_environment(home: Path, **extra: str) -> dict[str, str]:
    """A shell without the test venv (as on an Airflow worker), Airflow pointed at ``home`` and dags/."""
    if not (AIRFLOW_VENV / "bin" / "python").exists():
        pytest.fail(f"{AIRFLOW_VENV} is missing: run `make airflow` (make test does)")
    return clean_environment(AIRFLOW_HOME=str(home), AIRFLOW__CORE__DAGS_FOLDER=str(DAGS),
                             AIRFLOW__CORE__LOAD_EXAMPLES="False", **extra)


def readable(output: str, limit: int = 8000) -> str:
    """The end of a harness output without dag.test()'s once-a-second "No tasks to run" lines."""
    return "\n".join(line for line in output.splitlines() if "No tasks to run" not in line)[-limit:]


def harness(env: dict[str, str], *args: str, cwd: Path, timeout: float) -> tuple[dict, str]:
    """Run tests/airflow_harness.py in the Airflow venv; its JSON result and its whole output, which
    goes to ``cwd``/airflow-harness.log as it runs."""
    log = cwd / "airflow-harness.log"
    with log.open("w") as out:
        try:
            proc = subprocess.run([str(AIRFLOW_VENV / "bin" / "python"), str(HARNESS), *args], env=env, cwd=cwd,
                                  stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"Airflow did not finish in {timeout:.0f} s:\n{readable(log.read_text())}")
    output = log.read_text()
    results = [line for line in output.splitlines() if line.startswith(RESULT_MARKER)]
    assert proc.returncode == 0 and results, readable(output)
    return json.loads(results[-1].removeprefix(RESULT_MARKER)), output


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory) -> Path:
    """An AIRFLOW_HOME with a migrated sqlite database, which dag.test() needs."""
    home = tmp_path_factory.mktemp("airflow-home")
    proc = subprocess.run([str(AIRFLOW_VENV / "bin" / "airflow"), "db", "migrate"], env=airflow_environment(home),
                          cwd=home, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return home


def write_runs(folder: Path, *confs: dict) -> str:
    path = folder / "runs.json"
    path.write_text(json.dumps(list(confs)))
    return str(path)


def test_dag_steps_are_the_pipeline_steps():
    """The DAG file keeps a literal list (it must parse without cleanwell installed)."""
    tree = ast.parse((DAGS / "cleanwell_dag.py").read_text())
    steps = next(ast.literal_eval(node.value) for node in ast.walk(tree)
                 if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "STEPS")
    assert steps == STEP_NAMES


def test_expected_dependencies_follow_the_tables():
    # Every signal step rewrites silver, so they are serial; report reads sample's gold: a chain.
    assert expected_upstream(STEPS) == {"ingest": set(), **{b: {a} for a, b in itertools.pairwise(STEP_NAMES)}}


def test_dagbag_loads_with_the_step_dependencies(tmp_path):
    result, _ = harness(airflow_environment(tmp_path), "graph", str(DAGS), cwd=tmp_path, timeout=300)
    assert result["import_errors"] == {}
    assert set(result["dags"]) == {DAG_ID}
    tasks = result["dags"][DAG_ID]
    assert {name: set(task["upstream"]) for name, task in tasks.items()} == expected_upstream(STEPS)
    for name, task in tasks.items():
        assert "SparkSubmitOperator" in task["classes"], name
        assert task["retries"] >= 1 and task["execution_timeout"] and task["execution_timeout"] > 0, (name, task)


def local_run_conf(tmp_path: Path, **changes: str) -> dict:
    """DAG params for a local[1] spark-submit of the repository's launcher with the test venv's Python."""
    conf = {
        "spark_conn_id": "cleanwell_local",
        "spark_home": str(spark_home()),
        "config": str(tmp_path / "config.yaml"),
        "lake_root": str(tmp_path / "lake"),
        "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "artifact_root": str(tmp_path / "mlartifacts"),
        "launcher": str(REPO / "jobs" / "submit.py"),
        "py_files": "",
        "jars": ",".join(map(str, delta_jar_paths())),
        "env_archive": "",
        "executor_python": sys.executable,
        "driver_python": sys.executable,
        "spark_conf": {"spark.ui.enabled": "false"},
    }
    return {**conf, **changes}


# slow: two dag.test() runs (~45 s); test_dagbag_loads_with_the_step_dependencies covers the DAG's shape.
@pytest.mark.slow
def test_exit_code_2_fails_at_once_and_other_failures_retry(airflow_home, tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.jsonl").write_text('{"text": "one small document"}\n')
    (tmp_path / "config.yaml").write_text(f"ingest:\n  sources:\n    - {{name: tiny, path: {tmp_path / 'src'}, "
                                          "format: jsonl}\n")
    runs = write_runs(
        tmp_path,
        local_run_conf(tmp_path, config=str(tmp_path / "missing.yaml")),  # cleanwell exits 2: config not found
        local_run_conf(tmp_path, driver_python=str(tmp_path / "no-python")),  # spark-submit exits 1
        local_run_conf(tmp_path, lake_root="lake", tracking_uri="sqlite:///mlflow.db"),  # refused before submit
    )
    env = airflow_environment(airflow_home,
                              AIRFLOW_CONN_CLEANWELL_LOCAL=json.dumps({"conn_type": "spark", "host": "local[1]"}))
    result, output = harness(env, "run", str(DAGS), DAG_ID, runs, "--retries", "1", "--retry-delay", "1",
                             cwd=tmp_path, timeout=600)
    bad_config, no_python, relative = (run["tasks"] for run in result["runs"])

    assert bad_config["ingest"] == {"state": "failed", "try_number": 1}, readable(output)
    assert "config file not found" in output and "exited 2 (failed gate, invalid input or config)" in output
    assert no_python["ingest"] == {"state": "failed", "try_number": 2}  # retried once, as configured
    assert relative["ingest"] == {"state": "failed", "try_number": 1}
    assert "lake.root='lake': a relative path" in output and "sqlite:////abs/mlflow.db" in output
    for tasks in (bad_config, no_python, relative):
        assert {tasks[name]["state"] for name in STEP_NAMES[1:]} == {"upstream_failed"}
    assert not (tmp_path / "lake").exists()  # nothing ran past the failures


def packaged_run_conf(folder: Path, package: Package, python_env: Path) -> dict:
    """DAG params for the demo submitted to master local[2] with `make package`'s output, everything the
    run writes under ``folder``. The config is the demo's with every input path absolute: a task's
    working directory is Airflow's, not dist/.

    The packed environment is unpacked once at ``python_env``, where the driver and the executors find
    it, as on nodes with the environment installed (``env_archive`` empty): shipping it with each of
    the nine applications costs ~1 GB of disk and a minute of unpacking each, and
    tests/test_cluster.py already proves the shipped archive on the cluster."""
    from jobs.common.config import DetectConfig
    from tests.test_cluster import SPARK_CONF

    config = yaml.safe_load(DEMO_CONFIG.read_text())
    for source in config["ingest"]["sources"]:
        source["path"] = str(package.folder / source["path"])
    config["detect"] = {"training_files": [str(package.folder / p) for p in DetectConfig().training_files]}
    mixture = yaml.safe_load((REPO / config["sample"]["mixture"]).read_text())
    mixture["export"]["dir"] = str(folder / "exports")
    (folder / "mixture.yaml").write_text(yaml.safe_dump(mixture))
    config["sample"]["mixture"] = str(folder / "mixture.yaml")
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return {
        "spark_conn_id": "cleanwell_packaged",
        "spark_home": str(spark_home()),
        "config": str(folder / "config.yaml"),
        "lake_root": str(folder / "lake"),
        "tracking_uri": f"sqlite:///{folder / 'mlflow.db'}",
        "artifact_root": str(folder / "mlartifacts"),
        "launcher": str(package.launcher),
        "py_files": ",".join(map(str, [package.pyfiles, *(j for j in package.jars if "delta-spark" in j.name)])),
        "jars": ",".join(map(str, package.jars)),
        "env_archive": "",
        "executor_python": str(python_env / "bin" / "python"),
        "driver_python": str(python_env / "bin" / "python"),
        # The DAG sets the Python settings; the rest as the spark-submit test passes them, with the
        # executors' memory in the one local JVM. C1-only JIT: each of the nine tasks is a cold JVM that
        # does a few seconds of work, where C2's compilations hardly pay back (a cold `cleanwell dedup` on
        # the demo: mean 68 s -> 58 s over 3-4 runs each, noise +-10 s; a one-process demo run gains
        # nothing; docs/performance.md).
        "spark_conf": {**{k: v for k, v in SPARK_CONF.items() if not k.startswith("spark.pyspark.")},
                       "spark.driver.memory": "3g", "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1"},
    }


# The DAG run's MLflow experiment and registered model on the shared test server.
DAG_EXPERIMENT, DAG_MODEL = "airflow-dag", "airflow-dag-detector"


@pytest.fixture(scope="module")
def demo_dag_run(airflow_home, packaged: Package, mlflow_server, tmp_path_factory):
    """The cleanwell DAG run once with dag.test() on the demo: (params, harness result, output).
    Tracking goes to the test MLflow server, as a team's scheduled runs would: each task is its own
    process, so what one step logs (the tokenizer, the detector) must reach the next through the server."""
    folder = tmp_path_factory.mktemp("airflow-demo")
    with tarfile.open(packaged.env) as archive:  # the environment installed on the "nodes"
        archive.extractall(folder / "node-env", filter="tar")
    conf = packaged_run_conf(folder, packaged, folder / "node-env")
    config = yaml.safe_load(Path(conf["config"]).read_text())
    config["tracking"] = {"experiment": DAG_EXPERIMENT}
    config["detect"]["registered_model"] = DAG_MODEL
    Path(conf["config"]).write_text(yaml.safe_dump(config))
    conf["tracking_uri"] = mlflow_server.uri
    env = airflow_environment(airflow_home, AIRFLOW_CONN_CLEANWELL_PACKAGED=json.dumps(
        {"conn_type": "spark", "host": "local[2]"}))
    # No retries: a failure shows at once (a retry would wait the DAG's retry delay and hide it).
    result, output = harness(env, "run", str(DAGS), DAG_ID, write_runs(folder, conf), "--retries", "0",
                             cwd=folder, timeout=3600)
    return conf, result, output


@pytest.mark.slow
@pytest.mark.spark
def test_dag_runs_the_packaged_demo_pipeline_with_spark_submit(demo_dag_run, mlflow_server, demo, spark):
    from mlflow import MlflowClient

    from jobs.common import tables
    from jobs.common.tracking import PIPELINE_RUN_ID_TAG
    from tests.test_mlflow_server import local_mlflow_folders

    conf, result, output = demo_dag_run
    (run,) = result["runs"]
    assert run["tasks"] == {name: {"state": "success", "try_number": 1} for name in STEP_NAMES}, \
        readable(output)
    assert run["state"] == "success"
    # One spark-submit per step, with the connection's master and the package's launcher.
    submits = [line for line in output.splitlines() if "--master local[2]" in line]
    for step in STEP_NAMES:
        assert any(f"{conf['launcher']} {step} --config" in line for line in submits), (step, readable(output))

    lake = Path(conf["lake_root"])
    gold = tables.read_table(spark, tables.TableRef("gold", str(lake / "gold_mixture"), True))
    ids = sorted(r["doc_id"] for r in gold.select("doc_id").collect())
    local_cfg, _, _ = demo
    local_ids = sorted(r["doc_id"] for r in tables.read_table(spark, tables.table_ref(local_cfg, "gold"))
                       .select("doc_id").collect())
    assert ids and ids == local_ids
    assert (lake / "manifests" / "demo" / "latest.json").is_file()
    assert (lake / "reports" / "latest.html").is_file()

    # Every step's MLflow run is grouped under Airflow's run id (CLEANWELL_PIPELINE_RUN_ID).
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    step_runs = {r.data.tags["cleanwell.step"]: r
                 for r in client.search_runs([client.get_experiment_by_name(DAG_EXPERIMENT).experiment_id])
                 if r.data.tags.get("cleanwell.step")}
    assert sorted(step_runs) == sorted(STEP_NAMES)
    assert {r.data.tags[PIPELINE_RUN_ID_TAG] for r in step_runs.values()} == {run["run_id"]}
    assert all(r.data.tags["airflow.task_id"] == step for step, r in step_runs.items())

    # Steps in separate processes share models through the server: the tokenizer `tokenize` uploaded is in
    # the server's store and `detect` downloaded it from there (the server's access log has the request);
    # the detector `detect` registered has its files there and the champion alias.
    tokenize = step_runs["tokenize"].info
    tokenizer_path = f"{tokenize.experiment_id}/{tokenize.run_id}/artifacts/tokenizer/spm.model"
    assert (mlflow_server.artifacts / tokenizer_path).is_file()
    assert "GET /api/2.0/mlflow-artifacts/artifacts/" + tokenizer_path in mlflow_server.requests()
    assert client.get_model_version_by_alias(DAG_MODEL, "champion").run_id == step_runs["detect"].info.run_id
    assert step_runs["detect"].data.tags["detector.alias_moved"] == "true"
    assert "champion -> version 1 (first registration)" in output
    assert len(list((mlflow_server.artifacts / tokenize.experiment_id).rglob("detector_bundle.pkl"))) == 1
    assert local_mlflow_folders(Path(conf["lake_root"]).parent) == []  # nothing tracked beside the run
