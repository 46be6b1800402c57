"""Property-based fuzz of the ingest parsers (#13 item 4): whatever the bytes, the parser the executors run
never raises, every record comes out exactly once (a document or a quarantine row naming file, line and
reason) and a valid record's text comes out as written, normalised.

hypothesis runs derandomized (a fixed seed: the same cases on every machine) with a short budget in
`make test`; `CLEANWELL_FUZZ_EXAMPLES=5000 python -m pytest tests/test_fuzz.py` (or `python -m bench.fuzz`)
runs a long one. A failing case is printed as the smallest input hypothesis could shrink it to.
"""
from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import os

import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobs.common.config import IngestConfig, ProvenanceConfig, SourceConfig
from jobs.common.records import ParseSettings, parse_file
from udfs.text import normalize_text

EXAMPLES = int(os.environ.get("CLEANWELL_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
COMPRESSORS = {"": lambda b: b, ".gz": gzip.compress, ".zst": zstandard.ZstdCompressor().compress,
               ".bz2": bz2.compress}


# Content sniffed as compressed whatever the file's name (jobs/common/records.py): gzip, zstd, xz (bz2's
# "BZh" counts only with a block magic after it, which random lines do not produce).
MAGIC = (b"\x1f\x8b", b"\x28\xb5\x2f\xfd", b"\xfd7zXZ\x00")


def parse_settings(fmt: str) -> ParseSettings:
    return ParseSettings(source=SourceConfig(name="fuzz", path="unused", format=fmt),
                         ingest=IngestConfig(max_record_bytes=1 << 20), provenance=ProvenanceConfig())


def parse(path: str, content: bytes, fmt: str) -> list[dict]:
    rows = list(parse_file(path, content, parse_settings(fmt)))
    for row in rows:  # every row says where it came from, and is a document or a rejection with a reason
        assert row["source"] == "fuzz" and row["source_file"] == path and isinstance(row["source_line"], int)
        assert bool(row.get("reason")) != bool(row.get("text")), row
    return rows


# Texts with what breaks parsers: controls and NUL, lone surrogates, bidi controls, BOMs, line and
# paragraph separators, quotes and commas, astral characters.
HOSTILE_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=60) | st.sampled_from(
    ["\ud800", "a\udfffb", "\ufeffbom", "x\u2028y\u2029z", "nul\x00nul", "\u202eevil", '"q",,"', "\U0001f600",
     "\x85next", "\x1c\x1d\x1e", " \t "])
JSON_VALUE = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | HOSTILE_TEXT,
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(HOSTILE_TEXT, inner, max_size=3),
                          max_leaves=8)
# Bytes of one line: random, without the line breaks the test uses to count lines.
RAW_LINE = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b" ").replace(b"\r", b" "))


def json_line(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=True).encode()


LINE = st.one_of(
    st.builds(lambda t: json_line({"text": t}), HOSTILE_TEXT),                    # a document (maybe empty)
    st.builds(lambda t, v: json_line({"text": t, "meta": v}), HOSTILE_TEXT, JSON_VALUE),
    st.builds(lambda v: json_line({"text": v}), JSON_VALUE),                       # wrong types for text
    st.builds(lambda d: json_line({"text": "dated", "created_at": d}),
              st.sampled_from(["0001-01-01", "9999-12-31T23:59:59Z", "99999-01-01", "1969-12-31", "yesterday", ""])),
    st.builds(json_line, JSON_VALUE),                                              # any JSON, not only objects
    st.just(b'{"text": "first", "text": "second"}'),                               # duplicate keys
    st.builds(lambda n: b"[" * n + b"]" * n, st.integers(1, 3000)),                # deep nesting
    st.builds(lambda t: b"\xef\xbb\xbf" + json_line({"text": t}), HOSTILE_TEXT),   # a BOM on any line
    st.builds(lambda t: json_line({"text": t}).decode("ascii").encode("utf-16-le"), HOSTILE_TEXT),  # wrong encoding
    RAW_LINE,
)


def expected_text(line: bytes) -> str | None:
    """The text a line's record must come out with, when it is a valid document (else None)."""
    try:
        record = json.loads(line.removeprefix(b"\xef\xbb\xbf").decode("utf-8"))
        text = record.get("text") if isinstance(record, dict) else None
        text.encode("utf-8")  # a lone surrogate is a rejection (invalid_utf8), not a document
        return normalize_text(text) or None if isinstance(text, str) and len(record) == 1 else None
    except (ValueError, UnicodeError, AttributeError, RecursionError):
        return None


@FUZZ
@given(lines=st.lists(LINE, max_size=12), crlf=st.booleans(), suffix=st.sampled_from(sorted(COMPRESSORS)))
def test_jsonl_every_non_blank_line_is_one_row_and_valid_texts_come_out_as_written(lines, crlf, suffix):
    plain = (b"\r\n" if crlf else b"\n").join(lines)
    rows = parse(f"fuzz.jsonl{suffix}", COMPRESSORS[suffix](plain), "jsonl")
    by_line = {row["source_line"]: row for row in rows}
    assert len(by_line) == len(rows)  # no line in two rows
    # A line of ASCII whitespace only (space, tab, VT, FF) is blank, not a record; a BOM starting any line
    # (files joined with cat) is dropped first.
    expected_lines = {number for number, line in enumerate(lines, 1) if line.removeprefix(b"\xef\xbb\xbf").strip()}
    read_up_to = len(lines) + 1  # the lines before it are read
    if not suffix and plain.startswith(MAGIC):
        # Content that starts like a compressed stream is read as one (gzip under a plain name is common);
        # where it is not, one unreadable_file row stands for the rest of the file, from its line on.
        (broken,) = [row for row in rows if row.get("reason") == "unreadable_file"]
        assert broken is rows[-1] and "not read" in broken["detail"]
        read_up_to = broken["source_line"]
        expected_lines = {n for n in expected_lines if n < read_up_to} | {read_up_to}
    assert set(by_line) == expected_lines  # nothing lost, nothing invented
    for number, line in enumerate(lines[:read_up_to - 1], 1):
        text = expected_text(line)
        if text is not None:
            assert by_line[number].get("text") == text, (line, by_line[number])


@FUZZ
@given(records=st.lists(st.tuples(HOSTILE_TEXT, HOSTILE_TEXT), max_size=10))
def test_csv_every_record_is_one_row_whatever_its_quotes_and_newlines(records):
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(["text", "url"])
    writer.writerows(records)
    content = buffer.getvalue().encode("utf-8", "surrogatepass")
    rows = parse("fuzz.csv", content, "csv")
    assert len(rows) == len(records) or any(r.get("reason") == "invalid_utf8" for r in rows)
    valid = [normalize_text(text) for text, url in records if _encodable(text + url)]
    if len(valid) == len(records):
        assert len(rows) == len(records)
        assert [r.get("text") for r in rows] == [t or None for t in valid]


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


@FUZZ
@given(content=st.binary(max_size=400), fmt=st.sampled_from(["jsonl", "csv", "text", "parquet"]),
       suffix=st.sampled_from(sorted(COMPRESSORS)), compress=st.booleans())
def test_random_bytes_under_any_name_never_crash(content, fmt, suffix, compress):
    name = {"jsonl": "x.jsonl", "csv": "x.csv", "text": "x.txt", "parquet": "x.parquet"}[fmt] + suffix
    parse(name, COMPRESSORS[suffix](content) if compress else content, fmt)
