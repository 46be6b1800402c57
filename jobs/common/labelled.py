"""Labelled text files: M4-format JSONL (``human_text``, ``machine_text``, ``source``, ``model`` per line),
read as the detect step trains on them and as ``eval-detector`` and the collapse lab read them."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from jobs.common import storage
from jobs.common.errors import InputError
from udfs.text import normalize_text


@dataclass(frozen=True)
class LabelledText:
    """One labelled text of an M4-format file: ``label`` 1 for machine, its domain and generator."""

    text: str
    label: int
    domain: str
    generator: str | None


def domain_name(value: str | None, fallback: str) -> str:
    """A domain label: lowercased, cut at the first ``-`` or ``.`` (M4 writes ``wikipedia-20220301.en``,
    the demo's sources ``wikipedia``, so both name one domain); ``fallback`` when empty."""
    name = re.split(r"[-.]", (value or "").strip().lower(), maxsplit=1)[0]
    return name or fallback


def read_labelled(paths: list[str]) -> list[LabelledText]:
    """Every text of M4-format JSONL files (``human_text`` and ``machine_text`` per line), normalised as
    ingest normalises. The domain is the record's ``source`` (else the file's name up to ``_``), the
    generator its ``model`` (machine texts only)."""
    labelled = []
    for path in paths:
        try:
            lines = storage.read_text(path).split("\n")  # not splitlines(): U+2028 is valid inside JSON
        except FileNotFoundError:
            raise InputError(f"M4-format file not found: {path}") from None
        file_domain = domain_name(PurePosixPath(path).name.split("_")[0], "unknown")
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path} line {number} is not JSON: {exc}") from None
            if not isinstance(record, dict):
                raise InputError(f"{path} line {number} is not a JSON object")
            domain = domain_name(record.get("source") if isinstance(record.get("source"), str) else None,
                                 file_domain)
            model = record.get("model") if isinstance(record.get("model"), str) else None
            for key, label in (("human_text", 0), ("machine_text", 1)):
                if isinstance(record.get(key), str) and record[key].strip():
                    labelled.append(LabelledText(normalize_text(record[key]), label, domain,
                                                 model if label else None))
    return labelled


def read_pairs(paths: list[str]) -> tuple[list[str], list[str]]:
    """(human texts, machine texts) of M4-format files (see :func:`read_labelled`)."""
    labelled = read_labelled(paths)
    return [t.text for t in labelled if t.label == 0], [t.text for t in labelled if t.label == 1]
