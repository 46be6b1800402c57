"""Loading the config tree: bundled ``base.yaml``, then each ``--config FILE``, then ``key=value``.

Files are deep-merged in order; overrides take dotted keys and YAML-typed values. Every read goes
through the storage layer (local path, URI, or bundled ``conf/...``), and every failure is a
:class:`ConfigError` that names the file or the bad key.
"""
from __future__ import annotations

import copy
from typing import Any

import yaml
from pydantic import ValidationError

from jobs.common import storage
from jobs.common.config.settings import Config
from jobs.common.errors import ConfigError


def _deep_merge(base: dict, extra: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def read_yaml(path: str, text: str | None = None) -> dict:
    """A YAML mapping from any path the storage layer reads (local, URI, or bundled ``conf/...``)."""
    try:
        data = yaml.safe_load(storage.read_text(path) if text is None else text) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, ImportError, ValueError) as exc:  # no fsspec driver for the scheme, no access, ...
        raise ConfigError(f"cannot read config file {path}: {type(exc).__name__}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (['a','b','c'], value parsed as YAML, so numbers and booleans keep their type)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not of the form key=value (e.g. ingest.max_text_bytes=500000)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def _set_dotted(tree: dict, keys: list[str], value: Any) -> None:
    if keys[:2] == ["spark", "conf"] and len(keys) > 3:  # Spark property names contain dots themselves
        keys = keys[:2] + [".".join(keys[2:])]
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {'.'.join(keys)}: {key} is not a section")
    node[keys[-1]] = value


def format_validation_error(exc: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration ({origin}):"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        lines.append(f"  conf key `{key}`: {err['msg']}" + (f" (got {err['input']!r})"
                                                           if err["type"] != "extra_forbidden" else ""))
    return "\n".join(lines)


def load_config(config_files: list[str] | tuple[str, ...] = (), overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """base.yaml, then each config file, then key=value overrides -> validated :class:`Config`."""
    # Always the installed package's defaults, never a conf/base.yaml that happens to be in the cwd.
    tree = read_yaml("base.yaml (bundled)", storage.bundled_conf("base.yaml").read_text(encoding="utf-8"))
    for file in config_files:
        tree = _deep_merge(tree, read_yaml(file))
    for item in overrides:
        keys, value = parse_override(item)
        _set_dotted(tree, keys, value)
    origin = "base.yaml" + "".join(f" + {f}" for f in config_files) + (" + overrides" if overrides else "")
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, origin)) from None

