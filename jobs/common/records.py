"""Turn the bytes of one input file into documents or quarantine rows (pure Python, no Spark).

Every record of the file comes out exactly once: as a document (``reason`` None) or as a rejection
with a reason, the file and the line (or row number) — never dropped silently. Parsing is strict on
purpose: invalid UTF-8 is a rejection, not a replacement character, because a replacement
character silently changes the text and its ``doc_id``.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from jobs.common.config import DOCUMENT_FIELDS, ORIGINS, IngestConfig, ProvenanceConfig, SourceConfig
from udfs.text import content_hash, normalize_text

DATE_FIELDS = ("created_at", "crawled_at")
_DATE_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y/%m/%d", "%d.%m.%Y", "%Y%m%d")


@dataclass(frozen=True)
class ParseSettings:
    source: SourceConfig
    ingest: IngestConfig
    provenance: ProvenanceConfig


class Rejected(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def parse_date(value: Any) -> dt.datetime:
    """ISO 8601 date or datetime (``Z`` allowed), a few common layouts, or epoch seconds -> aware UTC."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return dt.datetime.fromtimestamp(value, tz=dt.UTC)
    if isinstance(value, dt.datetime):
        parsed = value
    elif isinstance(value, dt.date):
        parsed = dt.datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        text = value.strip()
        try:
            parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            for layout in _DATE_FORMATS:
                try:
                    parsed = dt.datetime.strptime(text, layout)
                    break
                except ValueError:
                    continue
            else:
                raise ValueError(f"unrecognised date {value!r}") from None
    else:
        raise ValueError(f"unrecognised date of type {type(value).__name__}")
    return parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed.astimezone(dt.UTC)


def resolve_provenance(declared_origin: str | None, created_at: dt.datetime | None, metadata: dict[str, str],
                       archive: bool, cfg: ProvenanceConfig) -> tuple[str, str | None, bool]:
    """(origin, provenance_method, pre_ai_archive). Declared metadata wins over inference: a C2PA/IPTC
    digital-source-type of AI media makes the document synthetic whatever else was said."""
    pre_ai = archive or (created_at is not None and created_at.date() < cfg.ai_cutoff_date)
    if metadata.get("digital_source_type", "").rsplit("/", 1)[-1] in cfg.synthetic_source_types:
        return "synthetic", "declared", pre_ai
    if declared_origin in ("human", "synthetic"):
        return declared_origin, "declared", pre_ai
    if archive:
        return "human", "archive", pre_ai
    if pre_ai and cfg.infer_human_before_cutoff:
        return "human", "date-inferred", pre_ai
    return "unknown", None, pre_ai


def _stringify(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def build_document(record: dict[str, Any], settings: ParseSettings) -> dict[str, Any]:
    """Map one input record to the document columns, or raise :class:`Rejected`."""
    src = settings.source
    column_of = {f: src.columns.get(f, f) for f in DOCUMENT_FIELDS}
    values: dict[str, Any] = {}
    for field in DOCUMENT_FIELDS:
        value = record.get(column_of[field])
        if value is None or (isinstance(value, str) and not value.strip() and field != "text"):
            value = src.defaults.get(field)
        values[field] = value

    text = values["text"]
    if text is None:
        present = sorted(record)
        raise Rejected("missing_text", f"no value in column `{column_of['text']}`; found: {present}")
    if not isinstance(text, str):
        raise Rejected("wrong_type", f"column `{column_of['text']}` holds {type(text).__name__}, not a string")
    text = normalize_text(text)
    if len(text) < settings.ingest.min_text_chars:
        raise Rejected("empty_text", f"{len(text)} characters after normalisation "
                                     f"(minimum {settings.ingest.min_text_chars})")
    size = len(text.encode("utf-8"))
    if size > settings.ingest.max_text_bytes:
        raise Rejected("text_too_large", f"{size} bytes after normalisation (maximum {settings.ingest.max_text_bytes})")

    origin = values["origin"]
    if origin is not None:
        origin = str(origin).strip().lower()
        if origin not in ORIGINS:
            raise Rejected("unknown_origin", f"origin {values['origin']!r} is not one of {list(ORIGINS)}")
    for field in DATE_FIELDS:
        if values[field] is not None and values[field] != "":
            try:
                values[field] = parse_date(values[field])
            except (ValueError, OverflowError, OSError) as exc:
                raise Rejected("unparsable_date", f"{field}: {exc}") from None
        else:
            values[field] = None

    used = {column_of[f] for f in DOCUMENT_FIELDS}
    metadata = {str(k): _stringify(v) for k, v in record.items() if k not in used and v is not None}
    origin, method, pre_ai = resolve_provenance(origin, values["created_at"], metadata, src.archive,
                                                settings.provenance)
    doc = {f: (None if values[f] is None else (values[f] if f in DATE_FIELDS else str(values[f])))
           for f in DOCUMENT_FIELDS}
    doc.update(text=text, doc_id=content_hash(text), origin=origin, provenance_method=method,
               pre_ai_archive=pre_ai, metadata=metadata)
    return doc


def _rejection(reason: str, detail: str, raw: bytes | str | None, settings: ParseSettings) -> dict[str, Any]:
    if isinstance(raw, bytes):
        raw_bytes = len(raw)
        raw = raw.decode("utf-8", errors="backslashreplace")
    else:
        raw_bytes = len(raw.encode("utf-8", errors="surrogateescape")) if raw is not None else None
    limit = settings.ingest.raw_preview_chars
    if raw is not None:
        raw = raw.encode("utf-8", errors="backslashreplace").decode("utf-8")[:limit]
    return {"reason": reason, "detail": detail, "raw": raw, "raw_bytes": raw_bytes}


def _from_mapping(record: Any, raw: bytes | str, settings: ParseSettings) -> dict[str, Any]:
    try:
        return build_document(record, settings)
    except Rejected as rej:
        return _rejection(rej.reason, rej.detail, raw, settings)


def _jsonl(content: bytes, settings: ParseSettings) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in enumerate(content.split(b"\n"), start=1):
        line = line.rstrip(b"\r")
        if not line.strip():
            continue  # blank lines separate records; they are not records
        try:
            decoded = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield number, _rejection("invalid_utf8", f"byte {exc.start}: {exc.reason}", line, settings)
            continue
        try:
            record = json.loads(decoded)
        except json.JSONDecodeError as exc:
            yield number, _rejection("malformed_json", str(exc), line, settings)
            continue
        if not isinstance(record, dict):
            yield number, _rejection("not_an_object", f"JSON {type(record).__name__}, expected an object",
                                     line, settings)
            continue
        yield number, _from_mapping(record, line, settings)


def _csv(content: bytes, settings: ParseSettings) -> Iterator[tuple[int, dict[str, Any]]]:
    # surrogateescape keeps invalid bytes visible per row instead of failing the whole file.
    text = content.decode("utf-8", errors="surrogateescape")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=settings.source.csv_delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return
    start = reader.line_num + 1
    for row in reader:
        number, start = start, reader.line_num + 1
        raw = settings.source.csv_delimiter.join(row)
        if any("\udc80" <= ch <= "\udcff" for ch in raw):
            yield number, _rejection("invalid_utf8", "row contains bytes that are not UTF-8",
                                     raw.encode("utf-8", errors="surrogateescape"), settings)
            continue
        if len(row) != len(header):
            if not any(cell.strip() for cell in row):
                continue
            yield number, _rejection("malformed_csv", f"{len(row)} fields, header has {len(header)}", raw, settings)
            continue
        yield number, _from_mapping(dict(zip(header, row, strict=True)), raw, settings)


def _parquet(content: bytes, settings: ParseSettings) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(content))
    except Exception as exc:  # pyarrow raises several types for corrupt files; all mean the same here
        yield 0, _rejection("unreadable_file", f"not a readable Parquet file: {exc}", content[:200], settings)
        return
    for number, record in enumerate(table.to_pylist(), start=1):
        yield number, _from_mapping(record, json.dumps(record, ensure_ascii=False, default=str), settings)


def _text(content: bytes, settings: ParseSettings) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        decoded = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        yield 1, _rejection("invalid_utf8", f"byte {exc.start}: {exc.reason}", content, settings)
        return
    yield 1, _from_mapping({settings.source.columns.get("text", "text"): decoded}, decoded, settings)


PARSERS = {"jsonl": _jsonl, "csv": _csv, "parquet": _parquet, "text": _text}
DEFAULT_GLOBS = {"jsonl": "*.jsonl", "csv": "*.csv", "parquet": "*.parquet", "text": "*.txt"}


def parse_file(path: str, content: bytes, settings: ParseSettings) -> Iterator[dict[str, Any]]:
    """Every record of one file, as a document or a rejection, with source, file and line set."""
    for number, row in PARSERS[settings.source.format](content, settings):
        row.update(source=settings.source.name, source_file=path, source_line=number)
        yield row
