"""Where cleanwell's outputs go on Databricks, as config overrides built in one place.

Tables become Unity Catalog tables ``catalog.schema.<table>``, the detector the Unity Catalog model
``catalog.schema.cleanwell_detector``, runs go to a workspace experiment (an absolute path such as
``/Shared/cleanwell``), and files (manifests, reports, MLflow artifacts) to a volume
``/Volumes/catalog/schema/volume/``. The notebooks and the bundle's job call
:func:`unity_catalog_overrides`; the catalog tests call it too, with a local catalog, registry and
folder in place of the workspace's, so the names they check are built by the same code.

This module builds names only; it creates no catalog, schema, volume or experiment (see README,
"Databricks").
"""
from __future__ import annotations

import re

from jobs.common.errors import ConfigError

DETECTOR_MODEL = "cleanwell_detector"
VOLUMES_ROOT = "/Volumes"
# A name part that needs no quoting in SQL, Delta's Python API, MLflow model names and volume paths alike.
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _identifier(value: str, what: str) -> str:
    if not _IDENTIFIER.match(value or ""):
        raise ConfigError(f"{what} {value!r} is not a plain identifier (letters, digits, underscores; not starting "
                          "with a digit): cleanwell uses it unquoted in table, model and volume names")
    return value


def volume_path(catalog: str, schema: str, volume: str, volumes_root: str = VOLUMES_ROOT) -> str:
    """The folder of a Unity Catalog volume as the driver sees it (``/Volumes/catalog/schema/volume``)."""
    return "/".join([volumes_root.rstrip("/"), catalog, schema, volume])


def unity_catalog_overrides(catalog: str, schema: str, experiment: str = "/Shared/cleanwell",
                            volume: str = "cleanwell", *, volumes_root: str = VOLUMES_ROOT,
                            tracking_uri: str = "databricks", registry_uri: str = "databricks-uc") -> list[str]:
    """``key=value`` overrides that put every table, the detector model, the MLflow runs and every file
    cleanwell writes under one Unity Catalog schema, its volume and a workspace experiment.

    ``volumes_root``, ``tracking_uri`` and ``registry_uri`` are for running the same names off Databricks
    (tests: a temporary folder and a local MLflow store)."""
    _identifier(catalog, "catalog")
    _identifier(schema, "schema")
    _identifier(volume, "volume")
    if not experiment.startswith("/"):
        raise ConfigError(f"experiment {experiment!r} must be an absolute workspace path such as /Shared/cleanwell "
                          "or /Users/<you>/cleanwell (Databricks names experiments by workspace path)")
    files = volume_path(catalog, schema, volume, volumes_root)
    # MLflow reaches a volume through the Files API under the dbfs:/Volumes/ scheme; elsewhere the folder is used as is.
    artifacts = f"dbfs:{files}/mlflow" if volumes_root.rstrip("/") == VOLUMES_ROOT else f"{files}/mlflow"
    return [
        f"lake.catalog={catalog}.{schema}",
        f"lake.root={files}/lake",  # tables are catalog tables; the mixture's export shards follow lake.root
        f"detect.registered_model={catalog}.{schema}.{DETECTOR_MODEL}",
        f"tracking.uri={tracking_uri}",
        f"tracking.registry_uri={registry_uri}",
        f"tracking.experiment={experiment}",
        f"tracking.artifact_root={artifacts}",
        f"sample.manifest_dir={files}/manifests",
        f"report.dir={files}/reports",
    ]
