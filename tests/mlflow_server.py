"""A real MLflow tracking server for tests, the way a team runs one.

``mlflow server`` (the venv's CLI) on 127.0.0.1 at a free port, with a sqlite backend store and proxied
artifacts in a temp folder: clients upload and download every artifact through the server and never
see the folder. Started once per test session, stopped (its whole process group) at the end.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

STARTUP_SECONDS = 180  # the server imports MLflow's whole app; on a busy 2-core machine that takes ~30 s


@dataclass(frozen=True)
class MlflowServer:
    uri: str          # http://127.0.0.1:PORT, the tracking (and registry) URI for clients
    artifacts: Path   # --artifacts-destination: where the server keeps what clients upload
    log: Path         # the server's stdout and stderr, including its access log

    def requests(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(process: subprocess.Popen) -> None:
    """The server and the workers it forked share its session (start_new_session), so stop the group."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> Iterator[MlflowServer]:
    root = tmp_path_factory.mktemp("mlflow-server")
    uri = f"http://127.0.0.1:{free_port()}"
    server = MlflowServer(uri=uri, artifacts=root / "artifacts", log=root / "server.log")
    command = [str(Path(sys.executable).with_name("mlflow")), "server",
               "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
               "--artifacts-destination", str(server.artifacts),
               "--host", "127.0.0.1", "--port", uri.rpartition(":")[2], "--workers", "1"]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    with open(server.log, "wb") as log:
        # cwd=root: anything the server writes by default (./mlruns, ./mlartifacts) stays in the temp folder.
        process = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while not _answers(uri):
            if process.poll() is not None:
                pytest.fail(f"mlflow server exited with {process.returncode}:\n{server.requests()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not answer within {STARTUP_SECONDS} s:\n{server.requests()[-3000:]}")
            time.sleep(0.5)
        yield server
    finally:
        _stop(process)
