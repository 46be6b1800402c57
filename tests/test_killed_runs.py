"""A step killed with SIGKILL cannot end its MLflow run (issue #13: "killed runs stay RUNNING"): the next
cleanwell process on the host marks such runs KILLED, and leaves alone the runs of processes still alive."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import mlflow
import pytest

from jobs.common.config import load_config
from jobs.common.tracking import configure
from tests.conftest import REPO

STEP = """
import os, signal, sys
from jobs.common.config import load_config
from jobs.common.tracking import tracked_run
cfg = load_config([], [f"tracking.uri=sqlite:///{sys.argv[1]}", f"tracking.artifact_root={sys.argv[1]}.art"])
with tracked_run(cfg, sys.argv[2]) as log:
    print(log.run_id, flush=True)
    if sys.argv[2] == "killed":
        os.kill(os.getpid(), signal.SIGKILL)
    sys.stdin.readline()  # "alive": runs until the test says so
"""


@pytest.mark.slow  # two processes (~6 s); CI runs it
def test_runs_of_killed_processes_are_marked_killed_and_live_ones_are_kept(tmp_path):
    (tmp_path / "step.py").write_text(STEP)
    database = tmp_path / "mlflow.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def start(name):
        return subprocess.Popen([sys.executable, "step.py", str(database), name], cwd=tmp_path, env=env, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    killed = start("killed")
    killed_run = killed.stdout.readline().strip()
    assert killed.wait(timeout=120) == -signal.SIGKILL
    client = mlflow.MlflowClient(f"sqlite:///{database}")
    assert client.get_run(killed_run).info.status == "RUNNING"  # what MLflow is left with
    cfg = load_config([], [f"tracking.uri=sqlite:///{database}", f"tracking.artifact_root={database}.art"])

    configure(cfg)  # what every cleanwell process does first

    run = client.get_run(killed_run)
    assert run.info.status == "KILLED" and run.info.end_time is not None
    assert "ended without ending this run" in run.data.tags["cleanwell.error"]
    alive = start("alive")
    alive_run = alive.stdout.readline().strip()
    configure(cfg)
    assert client.get_run(alive_run).info.status == "RUNNING"  # its process is still there
    alive.communicate("done\n", timeout=120)
    assert alive.returncode == 0 and client.get_run(alive_run).info.status == "FINISHED"
