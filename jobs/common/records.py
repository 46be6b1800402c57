"""Turn input files into documents or quarantine rows (pure Python, no Spark).

Every record of a file comes out exactly once: as a document (``reason`` None) or as a rejection
with a reason, the file and the line (or row number) — never dropped silently. Parsing is strict on
purpose: invalid UTF-8 is a rejection, not a replacement character, because a replacement
character silently changes the text and its ``doc_id``.

Files are read as streams (fsspec, then gzip / zstd / bz2 / xz decompression chosen by the content's
magic bytes), so memory is bounded by the largest record, never by the file; docs/ingest.md.
"""
from __future__ import annotations

import bz2
import csv
import datetime as dt
import gzip
import io
import json
import lzma
import re
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import fsspec
import pyarrow as pa

from jobs.common.config import DOCUMENT_FIELDS, ORIGINS, IngestConfig, ProvenanceConfig, SourceConfig
from jobs.common.errors import SetupError
from jobs.common.storage import fsspec_path
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


# --- reading files as streams ------------------------------------------------------------------------------------

# Compression by file-name suffix; the content's magic bytes are checked too (see ``_sniff``).
COMPRESSION_SUFFIXES = {".gz": "gzip", ".gzip": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2", ".xz": "xz"}
# What each format reads when a source sets no glob; the streamed formats also read these names compressed.
FORMAT_SUFFIXES = {"jsonl": (".jsonl", ".ndjson", ".json"), "csv": (".csv",), "parquet": (".parquet",),
                   "text": (".txt",)}
_READ_BUFFER = 1 << 20
_SKIP_CHUNK = 1 << 20
_BZ2_BLOCK_MAGICS = (b"\x31\x41\x59\x26\x53\x59", b"\x17\x72\x45\x38\x50\x90")  # first block, or end of stream
# What a broken stream raises while being read: truncated or corrupt compressed data (OSError, EOFError,
# pyarrow's ArrowInvalid is a ValueError, lzma.LZMAError, zlib.error), a file deleted or unreadable mid-read.
_STREAM_ERRORS = (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error)
_BOM = b"\xef\xbb\xbf"


class _ZstdToTheBreak(io.RawIOBase):
    """zstd frames decompressed with every byte before a break handed out, and the break raised: a stream
    that ends inside a frame is EOFError, corrupt data OSError. (``zstandard``'s own ``stream_reader``
    ends quietly at a truncation, which would lose the rest of the file without a quarantine row.)"""

    def __init__(self, raw: BinaryIO) -> None:
        import zstandard

        self._raw, self._zstd = raw, zstandard
        self._frame = zstandard.ZstdDecompressor().decompressobj()
        self._in_frame, self._pending = False, b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            data = self._raw.read(_READ_BUFFER)
            if not data:
                if self._in_frame:
                    raise EOFError("zstd stream ends inside a frame (truncated file)")
                return 0
            self._pending = self._feed(data)
        size = min(len(buffer), len(self._pending))
        buffer[:size], self._pending = self._pending[:size], self._pending[size:]
        return size

    def _feed(self, data: bytes) -> bytes:
        out = []
        while data:
            try:
                out.append(self._frame.decompress(data))
            except self._zstd.ZstdError as exc:
                raise OSError(f"corrupt zstd data: {exc}") from None
            self._in_frame = not self._frame.eof
            if not self._frame.eof:
                break
            data = self._frame.unused_data  # the next frame's first bytes
            self._frame = self._zstd.ZstdDecompressor().decompressobj()
            self._in_frame = bool(data)
        return b"".join(out)


def _zstd_open(stream: BinaryIO, mode: str = "rb") -> BinaryIO:
    return io.BufferedReader(_ZstdToTheBreak(stream), _READ_BUFFER)


# Readers that hand out every byte decompressed before a break (pyarrow's drop their last buffer).
_EXACT_TO_THE_BREAK = {"gzip": gzip.open, "bz2": bz2.open, "zstd": _zstd_open}
# A \u escape of a UTF-16 surrogate; only a line holding one can decode to a lone surrogate.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


@dataclass(frozen=True)
class ReadTask:
    """One unit of reading: a whole file, or the lines *starting* in bytes [start, end) of an uncompressed
    JSONL file, which has ``newlines_before`` newline bytes before ``start`` (so line numbers stay exact)."""

    source: int  # index of the source's ParseSettings in the reader's list
    path: str
    compression: str | None = None  # what the suffix names; the content's magic bytes decide
    start: int = 0
    end: int | None = None  # None: to the end of the file
    newlines_before: int = 0


class _BrokenStream(Exception):
    """The file's bytes stopped being readable before record ``number``."""

    def __init__(self, number: int, cause: BaseException):
        super().__init__(f"reading stopped at record {number}: {type(cause).__name__}: {cause}; the records from "
                         "there to the end of the file are not read (number of records unknown)")
        self.number = number


def file_kind(path: str, fmt: str, any_name: bool = False) -> tuple[str | None, str | None]:
    """(compression its suffix names, reason to skip the file or None). With ``any_name`` (a source's own
    glob chose the file) every file is read as ``fmt``."""
    name = path.rstrip("/").rsplit("/", 1)[-1].lower()
    stem, dot, ext = name.rpartition(".")
    compression = COMPRESSION_SUFFIXES.get(f".{ext}") if dot else None
    if any_name:
        return compression, None
    if fmt == "parquet" and compression:
        return compression, "unsupported_suffix"  # Parquet needs random access: a compressed copy is not read
    if not (stem if compression else name).endswith(FORMAT_SUFFIXES[fmt]):
        return compression, "unsupported_suffix"
    return compression, None


def _sniff(head: bytes) -> str | None:
    """The compression the first bytes announce. None of these can start valid UTF-8 JSON, CSV or text,
    except ``BZh``, which is checked with its block magic."""
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head[:3] == b"BZh" and head[3:4].isdigit() and head[4:10] in _BZ2_BLOCK_MAGICS:
        return "bz2"
    return None


def _decompressed(stream: BinaryIO, codec: str | None) -> BinaryIO:
    if codec is None:
        return stream
    if codec == "xz":
        return lzma.LZMAFile(stream)
    # pyarrow's streaming codecs: C++ speed, concatenated gzip members and zstd frames, no extra dependency.
    return io.BufferedReader(pa.CompressedInputStream(pa.PythonFile(stream, mode="r"), codec), _READ_BUFFER)


def ensure_readable_scheme(path: str) -> None:
    """Raise SetupError when fsspec cannot open files of this path's scheme here (its package is missing)."""
    protocol, _ = fsspec.core.split_protocol(fsspec_path(path))
    if protocol is None:
        return
    try:
        fsspec.get_filesystem_class(protocol)
    except (ImportError, ValueError) as exc:
        raise SetupError(f"cannot read {protocol}:// files: {exc}. Install the fsspec implementation for it "
                         "(s3fs for s3/s3a, adlfs for abfs/abfss, gcsfs for gs) on the driver and executors"
                         ) from None


def _open(path: str) -> BinaryIO:
    """The file through fsspec, the layer storage.py uses (``file:/``, ``s3a://``, ``dbfs:/`` as /dbfs/…)."""
    try:
        return fsspec.open(fsspec_path(path), "rb").open()
    except (ImportError, ValueError):
        ensure_readable_scheme(path)
        raise


def count_newlines(path: str, start: int, end: int) -> tuple[int, str | None]:
    """Newline bytes in [start, end) of the file; for start 0 also the compression its content announces
    (then the count is 0: a compressed file is not split)."""
    count, position = 0, start
    with _open(path) as raw:
        raw.seek(start)
        while position < end:
            chunk = raw.read(min(end - position, 8 << 20))
            if not chunk:
                break
            if position == 0 and (codec := _sniff(chunk[:16])):
                return 0, codec
            count += chunk.count(b"\n")
            position += len(chunk)
    return count, None


def _skip_line(stream: BinaryIO) -> tuple[bytes, int]:
    """Consume the rest of the current line without keeping it: (its first byte, its length)."""
    first, size = b"", 0
    while True:
        chunk = stream.readline(_SKIP_CHUNK)
        first, size = first or chunk[:1], size + len(chunk)
        if not chunk or chunk.endswith(b"\n"):
            return first, size


def _lines(stream: BinaryIO, task: ReadTask, limit: int) -> Iterator[tuple[int, bytes, int]]:
    """(line number, line cut at ``limit + 1`` bytes, full length) of every line starting in the task's range."""
    position, number = task.start, task.newlines_before
    try:
        if task.start:
            # The stream is at start - 1: the line that byte ends belongs to the previous range.
            first, size = _skip_line(stream)
            position += size - 1
            number += 0 if first == b"\n" else 1
        while task.end is None or position < task.end:
            line = stream.readline(limit + 1)
            if not line:
                return
            size = len(line)
            if size > limit and not line.endswith(b"\n"):
                size += _skip_line(stream)[1]
            position, number = position + size, number + 1
            yield number, line, size
    except _STREAM_ERRORS as exc:
        raise _BrokenStream(number + 1, exc) from exc


def _lone_surrogate(record: dict[str, Any]) -> str | None:
    """The first lone surrogate a JSON object decoded to, as its escape, or None. JSON allows ``\\ud800``
    alone, but it is no character: it cannot be written as UTF-8 (nor handed to Arrow)."""
    try:
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"\\u{ord(exc.object[exc.start]):04x}"
    return None


def _jsonl_line(line: bytes, settings: ParseSettings) -> dict[str, Any]:
    try:
        decoded = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _rejection("invalid_utf8", f"byte {exc.start}: {exc.reason}", line, settings)
    try:
        record = json.loads(decoded)
    except ValueError as exc:  # JSONDecodeError, or an integer literal past Python's 4,300-digit limit
        return _rejection("malformed_json", str(exc), line, settings)
    except RecursionError:
        return _rejection("malformed_json", "nested too deeply to parse (RecursionError)", line, settings)
    if not isinstance(record, dict):
        return _rejection("not_an_object", f"JSON {type(record).__name__}, expected an object", line, settings)
    if _SURROGATE_ESCAPE.search(line) and (escape := _lone_surrogate(record)):
        # The same reason as the surrogate's UTF-8 bytes (ED A0 80) written raw: one character, one reason.
        return _rejection("invalid_utf8", f"the JSON escape {escape} is a lone UTF-16 surrogate, not a character: "
                          "the record cannot be encoded as UTF-8", line, settings)
    return _from_mapping(record, line, settings)


def _too_large(what: str, size: int, head: bytes, settings: ParseSettings) -> dict[str, Any]:
    limit = settings.ingest.max_record_bytes
    preview = head[:4 * settings.ingest.raw_preview_chars]
    return {**_rejection("text_too_large", f"{what} of {size} bytes exceeds ingest.max_record_bytes ({limit}); "
                         "not parsed", preview, settings), "raw_bytes": size}


def _jsonl(stream: BinaryIO, task: ReadTask, settings: ParseSettings) -> Iterator[tuple[int, dict[str, Any]]]:
    limit = settings.ingest.max_record_bytes
    extra = 0  # lines ended by a bare CR (CR-only line ends) before this one: each is a line of its own
    for number, line, size in _lines(stream, task, limit):
        record = line.removesuffix(b"\n")
        if len(record) > limit:
            yield number + extra, _too_large("line", size, line, settings)
            continue
        # A BOM starts a file written as "UTF-8 with BOM", or a file concatenated from such files.
        record = record.rstrip(b"\r").removeprefix(_BOM)
        if not record.strip():
            continue  # blank lines separate records; they are not records
        row = _jsonl_line(record, settings)
        # A bare CR is whitespace to JSON, so a line with one that parses is one record. One that does not
        # parse holds CR-only line ends (classic Mac): each CR-separated piece is a record. Not in a byte range
        # of a split file, whose later ranges number lines by LF alone (numbers would clash).
        if row.get("reason") == "malformed_json" and b"\r" in record and task.end is None:
            pieces = record.split(b"\r")
            for offset, piece in enumerate(pieces):
                if (piece := piece.removeprefix(_BOM)).strip():
                    yield number + extra + offset, _jsonl_line(piece, settings)
            extra += len(pieces) - 1
        else:
            yield number + extra, row


class _CsvLines:
    """The physical lines csv.reader reads, keeping those of the record being read, so that the lines an
    unterminated quote swallowed can be read again; ``ended``: the reader asked for a line past the end."""

    def __init__(self, text: io.TextIOWrapper):
        self._text = text
        self._again: deque[str] = deque()
        self.record: list[str] = []
        self.number = 0  # lines handed out
        self.ended = False

    def __iter__(self) -> _CsvLines:
        return self

    def __next__(self) -> str:
        if self._again:
            line = self._again.popleft()
        else:
            try:
                line = next(self._text)
            except StopIteration:
                self.ended = True
                raise
        self.record.append(line)
        self.number += 1
        return line

    def next_record(self) -> int:
        """Start a record; returns the number of its first line."""
        self.record.clear()
        return self.number + 1

    def read_again(self, lines: list[str]) -> None:
        self._again.extendleft(reversed(lines))
        self.number -= len(lines)
        self.ended = False


def _csv(stream: BinaryIO, task: ReadTask, settings: ParseSettings) -> Iterator[tuple[int, dict[str, Any]]]:
    # The field limit is per process; raising it to the record limit lets a long text field through.
    csv.field_size_limit(max(csv.field_size_limit(), settings.ingest.max_record_bytes))
    # surrogateescape keeps invalid bytes visible per row instead of failing the whole file; utf-8-sig drops
    # a leading BOM, which would otherwise become part of the first column's name.
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
    delimiter = settings.source.csv_delimiter
    lines = _CsvLines(text)
    reader = csv.reader(lines, delimiter=delimiter)
    header: list[str] | None = None
    while True:
        number = lines.next_record()
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield number, _rejection("malformed_csv", f"{'header: ' if header is None else ''}{exc}", None, settings)
            if header is None:
                return  # without a header no row can be mapped
            continue
        except _STREAM_ERRORS as exc:
            raise _BrokenStream(number, exc) from exc
        if lines.ended:
            # The file ended inside a quoted field: the quote opened on this record's first line never closes,
            # and the csv module would hand back every line after it as one field. Those lines are read again.
            swallowed = lines.record[1:]
            yield number, _rejection("malformed_csv", f"{'header: ' if header is None else ''}unterminated quote: "
                                     f"the field opened on line {number} never closes; the {len(swallowed)} "
                                     "line(s) after it are read again as rows", lines.record[0], settings)
            if header is None:
                return
            lines.read_again(swallowed)
            reader = csv.reader(lines, delimiter=delimiter)
            continue
        if header is None:
            header = row
            continue
        raw = delimiter.join(row)
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


def _parquet(stream: BinaryIO, task: ReadTask, settings: ParseSettings) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(stream).iter_batches(batch_size=settings.ingest.batch_rows)
    except Exception as exc:  # pyarrow raises several types for corrupt files; all mean the same here
        stream.seek(0)
        yield 0, _rejection("unreadable_file", "not a readable Parquet file, no record read (number of records "
                            f"unknown): {exc}", stream.read(200), settings)
        return
    number = 0
    while True:  # a batch at a time (within one row group), never the whole table
        try:
            batch = next(batches, None)
        except Exception as exc:  # a corrupt row group after readable ones: the rows read so far stand
            raise _BrokenStream(number + 1, exc) from exc
        if batch is None:
            return
        for record in batch.to_pylist():
            number += 1
            yield number, _from_mapping(record, json.dumps(record, ensure_ascii=False, default=str), settings)


def _text(stream: BinaryIO, task: ReadTask, settings: ParseSettings) -> Iterator[tuple[int, dict[str, Any]]]:
    limit = settings.ingest.max_record_bytes
    try:
        content = stream.read(limit + 1)
        if len(content) > limit:
            size = len(content)
            while chunk := stream.read(_SKIP_CHUNK):
                size += len(chunk)
            yield 1, _too_large("file", size, content, settings)
            return
    except _STREAM_ERRORS as exc:
        raise _BrokenStream(1, exc) from exc
    try:
        decoded = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        yield 1, _rejection("invalid_utf8", f"byte {exc.start}: {exc.reason}", content, settings)
        return
    yield 1, _from_mapping({settings.source.columns.get("text", "text"): decoded}, decoded, settings)


PARSERS = {"jsonl": _jsonl, "csv": _csv, "parquet": _parquet, "text": _text}


def _records(stream: BinaryIO, task: ReadTask, settings: ParseSettings) -> Iterator[tuple[int, dict[str, Any]]]:
    parser = PARSERS[settings.source.format]
    if settings.source.format == "parquet":
        yield from parser(stream, task, settings)  # random access; its pages carry their own compression
        return
    buffered = io.BufferedReader(stream, _READ_BUFFER)
    if task.start:
        yield from parser(buffered, task, settings)  # a byte range of a file known to be plain
        return
    try:
        head = buffered.peek(16)[:16]
    except _STREAM_ERRORS as exc:
        raise _BrokenStream(0, exc) from exc
    codec = _sniff(head)
    if task.compression and codec is None:
        yield 0, _rejection("unreadable_file", f"the name says {task.compression} but the content is not "
                            f"(first bytes {head[:8].hex(' ')}); not read", head, settings)
        return
    rows = parser(_decompressed(buffered, codec), task, settings)
    if codec in _EXACT_TO_THE_BREAK and stream.seekable():
        rows = _read_to_the_break(rows, _EXACT_TO_THE_BREAK[codec], stream, task, settings)
    yield from rows


def _read_to_the_break(rows: Iterator[tuple[int, dict[str, Any]]], exact_reader: Callable, stream: BinaryIO,
                       task: ReadTask, settings: ParseSettings) -> Iterator[tuple[int, dict[str, Any]]]:
    """pyarrow's codecs drop the 1 MiB buffer they were filling when the stream breaks (a truncated file),
    so records that were there would be lost in the ``unreadable_file`` row; stdlib gzip and bz2 hand out
    every byte before the break. On a break, the file is read again with them (slower, so only then), past
    the records already out: the row then stands only for the records the file really lost."""
    try:
        yield from rows
    except _BrokenStream as broken:
        stream.seek(0)
        again = PARSERS[settings.source.format](exact_reader(stream, "rb"), task, settings)
        try:
            for number, row in again:
                if number >= broken.number:
                    yield number, row
        except _BrokenStream as exact:
            raise (exact if exact.number >= broken.number else broken) from None


def parse_stream(task: ReadTask, stream: BinaryIO, settings: ParseSettings) -> Iterator[dict[str, Any]]:
    """Every record of the task's file (or byte range), as a document or a rejection, with source, file and
    line set (line 0: the file as a whole). Reads incrementally: memory is bounded by the largest record
    (``ingest.max_record_bytes``) and a read buffer, not by the file. A stream that breaks mid-file
    (truncated gzip, corrupt row group) ends in one ``unreadable_file`` row; the records before it stand."""
    rows = _records(stream, task, settings)
    while True:
        try:
            number, row = next(rows)
        except StopIteration:
            return
        except _BrokenStream as broken:
            number, row = broken.number, _rejection("unreadable_file", str(broken), None, settings)
            rows = iter(())
        row.update(source=settings.source.name, source_file=task.path, source_line=number)
        yield row


def read_task(task: ReadTask, settings: ParseSettings) -> Iterator[dict[str, Any]]:
    """Open the task's file and parse it; a file that cannot be opened is one ``unreadable_file`` row."""
    try:
        raw = _open(task.path)
    except OSError as exc:
        yield {**_rejection("unreadable_file", f"cannot open: {type(exc).__name__}: {exc}", None, settings),
               "source": settings.source.name, "source_file": task.path, "source_line": 0}
        return
    with raw:
        if task.start:
            raw.seek(task.start - 1)
        yield from parse_stream(task, raw, settings)


def parse_file(path: str, content: bytes, settings: ParseSettings) -> Iterator[dict[str, Any]]:
    """Every record of one file held in memory (tests, small inputs): the same parsers as :func:`read_task`."""
    compression, _ = file_kind(path, settings.source.format, any_name=True)
    yield from parse_stream(ReadTask(0, path, compression), io.BytesIO(content), settings)
