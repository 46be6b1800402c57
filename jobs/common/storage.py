"""One filesystem layer for every path a user names outside the tables.

Config files, mixtures, expectation suites, detector training files, manifests, reports: all are read
and written here, through fsspec, so ``s3://``, ``abfss://``, ``gs://``, ``file://`` and plain paths
work alike (the protocol's fsspec package must be installed: s3fs, adlfs, gcsfs). Tables and
exported shards go through Spark instead (Hadoop's FileSystem, the same URIs).

Two kinds of path get special handling:
- ``dbfs:/x`` is read and written as ``/dbfs/x``, the FUSE mount every Databricks cluster has
  (``/Volumes/...`` paths are local already);
- a relative ``conf/...`` path that does not exist in the working directory is the bundled copy
  shipped as package data (``jobs.conf``), read with importlib.resources, so a wheel on
  ``--py-files``, a zip or a Databricks library finds its defaults where no checkout is.

Never ``pathlib.Path`` on something a user typed: ``Path("s3://b/x")`` is ``s3:/b/x``.
"""
from __future__ import annotations

import importlib.resources
import os
import posixpath
import shutil
import tempfile
from importlib.resources.abc import Traversable
from pathlib import Path

import fsspec

from jobs.common.errors import ConfigError

BUNDLED_PACKAGE = "jobs.conf"
BUNDLED_PREFIX = "conf"


def is_url(path: str) -> bool:
    """True for ``scheme://…`` and ``dbfs:/…``; False for plain (local) paths."""
    return "://" in path or path.startswith("dbfs:")


def fsspec_path(path: str) -> str:
    if path.startswith("dbfs:"):
        return "/dbfs/" + path.removeprefix("dbfs:").lstrip("/")
    return path


def bundled(path: str) -> Traversable | None:
    """The packaged copy of a relative ``conf/...`` path, or None when there is none."""
    if is_url(path) or os.path.isabs(path):
        return None
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    if len(parts) < 2 or parts[0] != BUNDLED_PREFIX:
        return None
    resource = importlib.resources.files(BUNDLED_PACKAGE).joinpath(*parts[1:])
    return resource if resource.is_file() else None


def bundled_conf(name: str) -> Traversable:
    """A file of the bundled conf/ folder (``base.yaml``, ``mixtures/demo.yaml``)."""
    resource = bundled(f"{BUNDLED_PREFIX}/{name}")
    if resource is None:
        raise ConfigError(f"the installed cleanwell package lacks conf/{name}; reinstall it")
    return resource


def _use_bundled(path: str) -> Traversable | None:
    """The bundled copy, when the path names one and the working directory has no such file."""
    if is_url(path) or os.path.exists(path):
        return None
    return bundled(path)


def exists(path: str) -> bool:
    if _use_bundled(path) is not None:
        return True
    fs, target = fsspec.core.url_to_fs(fsspec_path(path))
    return fs.exists(target)


def is_file(path: str) -> bool:
    if _use_bundled(path) is not None:
        return True
    fs, target = fsspec.core.url_to_fs(fsspec_path(path))
    return fs.isfile(target)


def read_bytes(path: str) -> bytes:
    """The file's bytes; FileNotFoundError (with the path as typed) when it is missing."""
    resource = _use_bundled(path)
    if resource is not None:
        return resource.read_bytes()
    try:
        with fsspec.open(fsspec_path(path), "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise FileNotFoundError(path) from None


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes(path: str, data: bytes) -> None:
    """Write a whole file, creating local parent folders; object stores need none."""
    with fsspec.open(fsspec_path(path), "wb", auto_mkdir=True) as fh:
        fh.write(data)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def join(base: str, *parts: str) -> str:
    """``base/part/...`` without resolving anything: URIs keep their scheme and double slash."""
    if is_url(base):
        return posixpath.join(base, *parts)
    return os.path.join(base, *parts)


def materialized_conf(name: str) -> Path:
    """A bundled conf file as a real local file that outlives this call (a zip-imported package has
    none): the file itself when installed as files, else a copy under the temp folder."""
    resource = bundled_conf(name)
    if isinstance(resource, Path):
        return resource
    target = Path(tempfile.gettempdir()) / "cleanwell-conf" / name
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with importlib.resources.as_file(resource) as source:
            shutil.copyfile(source, target)
    return target
