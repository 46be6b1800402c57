"""What a config hash covers: every key of a model except those marked as output locations.

The hash decides whether a step is up to date (``pipeline_runs``) and names a mixture's config in its
manifest, so the same settings must give the same hash across releases.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel

# Marks a key that says where an output goes, not what it contains: it is left out of the config hash
# that decides whether a step is up to date.
OUTPUT_LOCATION = {"output_location": True}


def config_hash(model: BaseModel) -> str:
    """Stable hash of a config model (output locations left out)."""
    return _hash(_without_locations(model))


def sections_hash(config: BaseModel, sections: tuple[str, ...] | list[str]) -> str:
    """Stable hash of the named sections of ``config`` (output locations left out)."""
    return _hash({name: _without_locations(getattr(config, name)) for name in sorted(sections)})


def _hash(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _without_locations(model: BaseModel) -> dict[str, Any]:
    dumped = model.model_dump(mode="json")
    for name, field in type(model).model_fields.items():
        if (field.json_schema_extra or {}).get("output_location"):
            dumped.pop(name)
        elif isinstance(getattr(model, name), BaseModel):
            dumped[name] = _without_locations(getattr(model, name))
    return dumped

