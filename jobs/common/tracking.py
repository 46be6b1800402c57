"""MLflow evidence for every run: a pipeline run is the parent, each step a child run.

Params are the step's config sections (flattened), metrics its counts (rows in/out, quarantined and
removed by reason), artifacts its manifests and gate results. The tracking URI comes from
``MLFLOW_TRACKING_URI`` if set, else ``tracking.uri`` (default ``sqlite:///mlflow.db``).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs.common.config import Config


def _quiet_mlflow() -> None:
    # Alembic migrations and a FutureWarning about the filesystem store are printed on first use;
    # they say nothing a pipeline user can act on.
    for name in ("alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Two warnings on every detect run that ask for choices cleanwell makes on purpose: the detector is
    # a pickled pyfunc (its code is cleanwell's own, installed beside it) and spark_udf runs in the
    # current environment (env_manager="local"; executors already have cleanwell installed).
    logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="mlflow")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


# Read once, at import: mlflow.set_tracking_uri() writes MLFLOW_TRACKING_URI into os.environ itself,
# so reading the variable later would return whatever store the previous run used.
_USER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")


def tracking_uri(cfg: Config) -> str:
    return _USER_TRACKING_URI or cfg.tracking.uri


def configure(cfg: Config):
    """Point MLflow at the configured store and experiment; returns the mlflow module."""
    import mlflow

    _quiet_mlflow()
    mlflow.set_tracking_uri(tracking_uri(cfg))
    if mlflow.get_experiment_by_name(cfg.tracking.experiment) is None:
        root = cfg.tracking.artifact_root
        location = Path(root).resolve().as_uri() if "://" not in root else root
        mlflow.create_experiment(cfg.tracking.experiment, artifact_location=location)
    mlflow.set_experiment(cfg.tracking.experiment)
    return mlflow


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

    def metric(self, name: str, value: float) -> None:
        self.metrics[name] = float(value)

    def counts(self, prefix: str, counts: dict[str, int]) -> None:
        """Counts by reason, as metrics ``prefix.reason`` (and kept in the summary for the CLI)."""
        self.summary[prefix] = dict(counts)
        for reason, value in counts.items():
            self.metric(f"{prefix}.{reason}", value)

    def params(self, params: dict[str, Any]) -> None:
        import mlflow

        flat = {k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in flatten(params).items()}
        mlflow.log_params({k: str(v)[:6000] for k, v in flat.items()})

    def tags(self, tags: dict[str, Any]) -> None:
        import mlflow

        mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def artifact_json(self, obj: Any, name: str) -> None:
        import mlflow

        mlflow.log_dict(json.loads(json.dumps(obj, default=str)), name)

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
    with mlflow.start_run(run_name=name) as run:
        mlflow.set_tag("cleanwell.kind", "pipeline")
        yield run.info.run_id


@contextlib.contextmanager
def tracked_run(cfg: Config, step: str, params: dict[str, Any] | None = None) -> Iterator[RunLog]:
    """MLflow run for one step, nested under an active pipeline run if there is one."""
    mlflow = configure(cfg)
    parent = mlflow.active_run()
    with mlflow.start_run(run_name=step, nested=parent is not None) as run:
        log = RunLog(run_id=run.info.run_id, step=step)
        log.tags({"cleanwell.kind": "step", "cleanwell.step": step})
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
