"""Real servers for the cluster tests, started on 127.0.0.1 and stopped afterwards.

- ``spark_cluster``: a Spark standalone cluster (one master and two workers, each its own JVM,
  started with ``spark-class`` from the installed pyspark). Workers get an environment without the
  test's virtualenv (no PYSPARK_PYTHON, no .venv on PATH), so an executor can only find cleanwell's
  dependencies in what a job ships to it.
- ``packaged``: the dist/ folder that ``make package`` builds (wheel, packed environment, Delta JARs,
  launcher, demo data), built once per test session.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WORKERS = 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def clean_environment(**extra: str) -> dict[str, str]:
    """os.environ without the test venv's Python settings: what a cluster node's shell would have."""
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "VIRTUAL_ENV", "PYTHONPATH")
           # mlflow.set_tracking_uri() in this process exports these; a node's shell has its own or none.
           and not k.startswith("MLFLOW_")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    env["SPARK_HOME"] = str(spark_home())
    env.update(extra)
    return env


def wait_until(predicate, timeout: float, what: str, logs: list[Path] = ()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    tails = "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-3000:]}" for p in logs if p.is_file())
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s\n{tails}")


@dataclass
class SparkCluster:
    master_url: str
    web_url: str
    spark_home: Path
    work_dirs: list[Path]
    processes: list[subprocess.Popen] = field(default_factory=list)

    def state(self) -> dict:
        with urllib.request.urlopen(f"{self.web_url}/json/", timeout=5) as response:
            return json.load(response)

    def alive_workers(self) -> int:
        try:
            return sum(w["state"] == "ALIVE" for w in self.state()["workers"])
        except OSError:
            return 0

    def executor_dirs(self) -> list[Path]:
        """Every executor's working folder (work_dir/app-*/<executor id>) on every worker."""
        return sorted(p for w in self.work_dirs for p in w.glob("app-*/*") if p.is_dir())


def _start(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=log.parent)


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory) -> Iterator[SparkCluster]:
    root = tmp_path_factory.mktemp("spark-cluster")
    home = spark_home()
    spark_class = str(home / "bin" / "spark-class")
    env = clean_environment(SPARK_LOCAL_IP="127.0.0.1", SPARK_LOG_DIR=str(root))
    port, web_port = free_port(), free_port()
    cluster = SparkCluster(f"spark://127.0.0.1:{port}", f"http://127.0.0.1:{web_port}", home, [])
    master_log = root / "master.log"
    cluster.processes.append(_start([spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                                     "--port", str(port), "--webui-port", str(web_port)], master_log, env))
    try:
        wait_until(lambda: cluster.alive_workers() == 0 and _answers(cluster), 120, "Spark master", [master_log])
        logs = [master_log]
        for number in range(WORKERS):
            work = root / f"worker-{number}"
            work.mkdir()
            cluster.work_dirs.append(work)
            logs.append(root / f"worker-{number}.log")
            cluster.processes.append(_start(
                [spark_class, "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--cores", "1",
                 "--memory", "3g", "--work-dir", str(work), "--webui-port", str(free_port()), cluster.master_url],
                logs[-1], env))
        wait_until(lambda: cluster.alive_workers() == WORKERS, 120, f"{WORKERS} Spark workers", logs)
        yield cluster
    finally:
        for process in reversed(cluster.processes):
            process.terminate()
        for process in cluster.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def _answers(cluster: SparkCluster) -> bool:
    try:
        cluster.state()
        return True
    except OSError:
        return False


@dataclass(frozen=True)
class Package:
    """What ``make package`` put in dist/ (``pyfiles``: the wheel as a .zip, for --py-files)."""

    folder: Path
    wheel: Path
    pyfiles: Path
    env: Path
    jars: list[Path]
    launcher: Path

    def copy_to(self, target: Path) -> Package:
        """The whole dist/ folder copied elsewhere (a place with no checkout), as a user would."""
        shutil.copytree(self.folder, target, ignore=shutil.ignore_patterns(".env-build"))
        return Package(target, target / self.wheel.name, target / self.pyfiles.name, target / self.env.name,
                       [target / "jars" / j.name for j in self.jars], target / self.launcher.name)


@pytest.fixture(scope="session")
def packaged() -> Package:
    proc = subprocess.run(["make", "package"], cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    dist = REPO / "dist"
    wheels = sorted(dist.glob("cleanwell-*.whl"))
    assert len(wheels) == 1, wheels
    return Package(dist, wheels[0], wheels[0].with_name(wheels[0].name.split("-py3")[0] + ".zip"),
                   dist / "cleanwell-env.tar.gz", sorted((dist / "jars").glob("*.jar")),
                   dist / "cleanwell_submit.py")
