"""MLflow evidence for every run: a pipeline run is the parent, each step a child run.

Params are the step's config sections (flattened), metrics its counts (rows in/out, quarantined and
removed by reason), artifacts its manifests and gate results. The tracking URI is ``tracking.uri``
when a config sets it, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` (an explicit
``tracking.uri=…`` from an Airflow task must not lose to a variable the worker exports); with a
tracking server (``http(s)://``, ``databricks``) every artifact goes through the server, so a step in
one process (an Airflow task) finds what a step in another logged.

Every run is tagged with where it came from (package version, git SHA, Airflow's dag/run/task ids) and
with ``cleanwell.pipeline_run_id``, which groups the step runs of one pipeline run across processes:
``CLEANWELL_PIPELINE_RUN_ID`` if set, else Airflow's run id, else the enclosing ``cleanwell run``'s
MLflow run id, else the run's own id.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import logging
import os
import socket
import subprocess
import urllib.parse
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from jobs.common import storage
from jobs.common.config import Config
from jobs.common.secrets import redact


def _quiet_mlflow() -> None:
    # Alembic migrations and a FutureWarning about the filesystem store are printed on first use;
    # they say nothing a pipeline user can act on.
    for name in ("alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Warnings that ask for choices cleanwell makes on purpose: the detector is a pickled pyfunc (its code
    # is cleanwell's own, installed beside it), and spark_udf, where a user serves it, runs in the current
    # environment (env_manager="local"; executors already have cleanwell installed).
    logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="mlflow")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


# Read once, at import: mlflow.set_tracking_uri() writes MLFLOW_TRACKING_URI into os.environ itself,
# so reading the variable later would return whatever store the previous run used.
_USER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")
_USER_REGISTRY_URI = os.environ.get("MLFLOW_REGISTRY_URI")  # likewise for set_registry_uri()

PIPELINE_RUN_ID_ENV = "CLEANWELL_PIPELINE_RUN_ID"
GIT_SHA_ENV = "CLEANWELL_GIT_SHA"
PIPELINE_RUN_ID_TAG = "cleanwell.pipeline_run_id"
# Where a run's process runs: a later process on the same host closes runs whose process is gone.
HOST_TAG = "cleanwell.host"
PID_TAG = "cleanwell.pid"
# Airflow exports these to every task process (and so to the spark-submit it starts).
AIRFLOW_CONTEXT_TAGS = {"AIRFLOW_CTX_DAG_ID": "airflow.dag_id", "AIRFLOW_CTX_DAG_RUN_ID": "airflow.run_id",
                        "AIRFLOW_CTX_TASK_ID": "airflow.task_id", "AIRFLOW_CTX_TRY_NUMBER": "airflow.try_number"}
# Tracking URIs of servers that own their artifact store; clients must not point experiments at local folders.
_SERVER_SCHEMES = ("http", "https", "databricks")
# The id of the enclosing pipeline run (`cleanwell run`), for the step runs nested under it.
_pipeline_run_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("pipeline_run_id", default=None)


DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def without_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """(uri without ``user:password@``, user, password) for an ``http(s)://`` URI; others unchanged.
    MLflow prints run links built from the tracking URI, so a password inside it would be echoed on
    every run: cleanwell hands MLflow the bare URI and the credentials through
    ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``, which it sends as basic auth."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme.lower() not in ("http", "https") or "@" not in parts.netloc:
        return uri, None, None
    host = parts.netloc.rpartition("@")[2]
    bare = urllib.parse.urlunsplit(parts._replace(netloc=host))
    return bare, urllib.parse.unquote(parts.username or "") or None, \
        None if parts.password is None else urllib.parse.unquote(parts.password)


def _use_credentials(uri: str) -> str:
    bare, user, password = without_credentials(uri)
    if user is not None:
        os.environ["MLFLOW_TRACKING_USERNAME"] = user
    if password is not None:
        os.environ["MLFLOW_TRACKING_PASSWORD"] = password
    return bare


def tracking_uri(cfg: Config) -> str:
    """``tracking.uri`` if configured, else ``MLFLOW_TRACKING_URI`` (e.g. Databricks sets it), else sqlite."""
    return cfg.tracking.uri or _USER_TRACKING_URI or DEFAULT_TRACKING_URI


def registry_uri(cfg: Config) -> str | None:
    return cfg.tracking.registry_uri or _USER_REGISTRY_URI


def is_tracking_server(uri: str) -> bool:
    return uri.partition(":")[0].lower() in _SERVER_SCHEMES


def experiment_artifact_location(cfg: Config) -> str | None:
    """Where a new experiment keeps its artifacts; None lets a tracking server choose (proxied
    ``mlflow-artifacts:``), so that clients need no access to the server's folders."""
    root = cfg.tracking.artifact_root
    if storage.is_url(root):
        return root
    return None if is_tracking_server(tracking_uri(cfg)) else Path(root).resolve().as_uri()


def configure(cfg: Config):
    """Point MLflow at the configured store, registry and experiment; returns the mlflow module."""
    import mlflow

    _quiet_mlflow()
    mlflow.set_tracking_uri(_use_credentials(tracking_uri(cfg)))
    registry = registry_uri(cfg)
    if registry:
        mlflow.set_registry_uri(_use_credentials(registry))
    else:
        # A registry set for an earlier config in this process must not outlive it (set_registry_uri also
        # exports MLFLOW_REGISTRY_URI); unset, MLflow derives the registry from the tracking URI.
        os.environ.pop("MLFLOW_REGISTRY_URI", None)
        mlflow.set_registry_uri(None)
    with _sqlite_store_lock(tracking_uri(cfg)):
        # The first use of a store creates (or migrates) a sqlite database; two processes doing it at once
        # both fail (alembic CommandError, "table _alembic_tmp_metrics already exists"): one at a time.
        if mlflow.get_experiment_by_name(cfg.tracking.experiment) is None:
            try:
                mlflow.create_experiment(cfg.tracking.experiment, artifact_location=experiment_artifact_location(cfg))
            except mlflow.exceptions.MlflowException as exc:  # another process created it first
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
        experiment = mlflow.set_experiment(cfg.tracking.experiment)
    # Once per process and store: configure runs at every step start, the search need not.
    checked = (tracking_uri(cfg), experiment.experiment_id)
    if checked not in _abandoned_runs_checked:
        close_abandoned_runs(mlflow.MlflowClient(), experiment.experiment_id)
        _abandoned_runs_checked.add(checked)
    return mlflow


_abandoned_runs_checked: set[tuple[str, str]] = set()


def close_abandoned_runs(client, experiment_id: str) -> list[str]:
    """Mark KILLED the runs left RUNNING by a process of this host that no longer exists (a step killed
    with SIGKILL, an out-of-memory kill, a lost container): MLflow cannot end a run whose process died.
    Runs of other hosts are left alone (their processes cannot be checked from here). Returns their ids."""
    host = socket.gethostname()
    running = client.search_runs([experiment_id], filter_string=f"attributes.status = 'RUNNING' and "
                                 f"tags.`{HOST_TAG}` = '{host}'", max_results=1000)
    closed = []
    for run in running:
        pid = run.data.tags.get(PID_TAG, "")
        if not pid.isdigit() or int(pid) == os.getpid() or _process_exists(int(pid)):
            continue
        client.set_tag(run.info.run_id, "cleanwell.error", f"process {pid} on {host} ended without ending this run "
                       "(killed); marked KILLED by the next cleanwell process on that host")
        client.set_terminated(run.info.run_id, status="KILLED")
        closed.append(run.info.run_id)
    return closed


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


@contextlib.contextmanager
def _sqlite_store_lock(uri: str) -> Iterator[None]:
    """An exclusive lock beside a local sqlite tracking database (``<db>.lock``) for as long as the block
    runs; nothing for other stores (a tracking server serialises its own database)."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here; concurrent first use stays unsafe there
        fcntl = None
    if fcntl is None or not uri.startswith("sqlite:///") or uri == "sqlite:///:memory:":
        yield
        return
    database = Path(urllib.parse.unquote(uri[len("sqlite:///"):].split("?", 1)[0]))
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def package_version() -> str | None:
    try:
        return metadata.version("cleanwell")
    except metadata.PackageNotFoundError:  # imported from a zip or a folder without its metadata
        return None


@functools.cache
def _checkout_sha() -> str | None:
    """HEAD of the git checkout the package is imported from; None for a wheel or when git is missing."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        done = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def git_sha() -> str | None:
    """The code's git SHA: ``CLEANWELL_GIT_SHA`` (set it when deploying a wheel), else the checkout's."""
    return os.environ.get(GIT_SHA_ENV) or _checkout_sha()


def context_tags() -> dict[str, str]:
    """Where a run's code came from and which scheduler started it; only the tags that are known."""
    sha = git_sha()
    tags = {"cleanwell.version": package_version(), "cleanwell.git_sha": sha, "mlflow.source.git.commit": sha,
            HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}
    tags.update({tag: os.environ.get(variable) for variable, tag in AIRFLOW_CONTEXT_TAGS.items()})
    return {name: value for name, value in tags.items() if value}


def pipeline_run_id(own_run_id: str) -> str:
    """The id that groups a run with the other step runs of its pipeline run (see the module docstring)."""
    return (os.environ.get(PIPELINE_RUN_ID_ENV) or os.environ.get("AIRFLOW_CTX_DAG_RUN_ID")
            or _pipeline_run_id.get() or own_run_id)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


@dataclass
class RunLog:
    """What a step reports; collected during the step and logged to MLflow when it ends."""

    run_id: str
    step: str
    metrics: dict[str, float] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    # gate_results rows queued by gates.record, appended in one commit when the step ends (gates.flush).
    gate_rows: list[tuple] = field(default_factory=list)

    def metric(self, name: str, value: float) -> None:
        self.metrics[name] = float(value)

    def counts(self, prefix: str, counts: dict[str, int]) -> None:
        """Counts by reason, as metrics ``prefix.reason`` (and kept in the summary for the CLI)."""
        self.summary[prefix] = dict(counts)
        for reason, value in counts.items():
            self.metric(f"{prefix}.{reason}", value)

    def params(self, params: dict[str, Any]) -> None:
        import mlflow

        flat = {k: redact(v, k) for k, v in flatten(params).items()}  # no credential reaches MLflow
        flat = {k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in flat.items()}
        mlflow.log_params({k: str(v)[:6000] for k, v in flat.items()})

    def tags(self, tags: dict[str, Any]) -> None:
        import mlflow

        mlflow.set_tags({k: str(redact(v, k)) for k, v in tags.items()})

    def artifact_json(self, obj: Any, name: str) -> None:
        import mlflow

        mlflow.log_dict(json.loads(json.dumps(obj, default=str)), name)

    def artifact_text(self, text: str, name: str) -> None:
        import mlflow

        mlflow.log_text(text, name)

    def artifact_bytes(self, data: bytes, name: str) -> None:
        """A binary artifact (e.g. a fitted model) under ``name`` (folder/file)."""
        import tempfile

        folder, _, filename = name.rpartition("/")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / filename
            path.write_bytes(data)
            self.artifact_file(path, folder or None)

    def artifact_file(self, path: str | Path, folder: str | None = None) -> None:
        import mlflow

        mlflow.log_artifact(str(path), artifact_path=folder)


@contextlib.contextmanager
def pipeline_run(cfg: Config, name: str = "pipeline") -> Iterator[str]:
    """Parent run that step runs nest under."""
    mlflow = configure(cfg)
    with mlflow.start_run(run_name=name, tags={**context_tags(), "cleanwell.kind": "pipeline"}) as run:
        group = pipeline_run_id(run.info.run_id)
        mlflow.set_tag(PIPELINE_RUN_ID_TAG, group)
        token = _pipeline_run_id.set(group)
        try:
            yield run.info.run_id
        finally:
            _pipeline_run_id.reset(token)


@contextlib.contextmanager
def tracked_run(cfg: Config, step: str, params: dict[str, Any] | None = None) -> Iterator[RunLog]:
    """MLflow run for one step, nested under an active pipeline run if there is one."""
    mlflow = configure(cfg)
    parent = mlflow.active_run()
    tags = {**context_tags(), "cleanwell.kind": "step", "cleanwell.step": step}
    with mlflow.start_run(run_name=step, nested=parent is not None, tags=tags) as run:
        log = RunLog(run_id=run.info.run_id, step=step)
        log.tags({PIPELINE_RUN_ID_TAG: pipeline_run_id(run.info.run_id)})
        if params:
            log.params(params)
        try:
            yield log
        except BaseException as exc:
            mlflow.set_tag("cleanwell.error", f"{type(exc).__name__}: {exc}"[:5000])
            if log.metrics:
                mlflow.log_metrics(log.metrics)
            raise
        mlflow.log_metrics(log.metrics)
