"""Hostile input (#13): one bad record never aborts an ingest, and no record vanishes or hides in another's row.

Pure tests call the parsers the executors run (no Spark); one Spark test ingests a folder holding every
case at once and checks the per-reason counts and that every good record reached bronze.
"""
from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import zlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from pyspark.sql import functions as F

from jobs import ingest
from jobs.common import tables
from jobs.common.config import IngestConfig, ProvenanceConfig, SourceConfig
from jobs.common.records import ParseSettings, parse_file
from jobs.common.runner import execute
from jobs.pipeline import STEPS
from udfs.text import normalize_text

BOM = b"\xef\xbb\xbf"
LONE_SURROGATE = b'{"text": "before \\ud800 after"}'
DEEP_JSON = b'{"text": "deep", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
HUGE_INT = b'{"text": "x", "n": ' + b"1" * 5000 + b"}"
BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f"


def settings(fmt: str = "jsonl", **ingest_keys) -> ParseSettings:
    return ParseSettings(source=SourceConfig(name="s", path="unused", format=fmt), ingest=IngestConfig(**ingest_keys),
                         provenance=ProvenanceConfig())


def doc(text: str) -> bytes:
    return json.dumps({"text": text}).encode()


def outcome(rows) -> list[tuple[int, str]]:
    return [(r["source_line"], r.get("reason") or r["text"]) for r in rows]


def test_a_lone_surrogate_escape_is_one_rejection_and_the_next_line_is_read():
    rows = list(parse_file("s.jsonl", b"\n".join([doc("first"), LONE_SURROGATE, doc("third")]), settings()))
    assert outcome(rows) == [(1, "first"), (2, "invalid_utf8"), (3, "third")]
    assert "escape \\ud800 is a lone UTF-16 surrogate" in rows[1]["detail"]
    assert rows[1]["raw"] == LONE_SURROGATE.decode()
    raw_bytes = doc("x").replace(b"x", b"\xed\xa0\x80")  # the same surrogate written as (invalid) UTF-8 bytes
    assert [r["reason"] for r in parse_file("r.jsonl", raw_bytes, settings())] == ["invalid_utf8"]
    # a surrogate in a metadata key or value would fail the Arrow hand-over just the same
    meta = b'{"text": "ok", "title": "x\\udfff"}'
    assert [r["reason"] for r in parse_file("m.jsonl", meta, settings())] == ["invalid_utf8"]
    pair = doc("emoji \U0001f600")  # json.dumps escapes it as the valid pair \ud83d\ude00
    assert b"\\ud83d\\ude00" in pair and outcome(parse_file("p.jsonl", pair, settings())) == [(1, "emoji \U0001f600")]


def test_json_nested_too_deep_to_parse_is_malformed_json():
    rows = list(parse_file("d.jsonl", b"\n".join([DEEP_JSON, doc("after")]), settings()))
    assert outcome(rows) == [(1, "malformed_json"), (2, "after")]
    assert "nested too deeply" in rows[0]["detail"]


def test_an_integer_too_long_for_python_is_malformed_json():
    rows = list(parse_file("n.jsonl", b"\n".join([HUGE_INT, doc("after")]), settings()))
    assert outcome(rows) == [(1, "malformed_json"), (2, "after")]
    assert "4300 digits" in rows[0]["detail"]


def test_a_csv_field_longer_than_the_csv_modules_default_limit_is_ingested():
    text = "word " * 42_000  # 210 KB, far under max_text_bytes
    content = b'text,url\n"' + text.encode() + b'",u1\nshort,u2\n'
    default = csv.field_size_limit(131_072)  # what a fresh process starts with
    try:
        rows = list(parse_file("big.csv", content, settings("csv", max_text_bytes=1_000_000)))
    finally:
        csv.field_size_limit(default)
    assert outcome(rows) == [(2, text.strip()), (3, "short")]


@pytest.mark.parametrize("path, fmt, content, expected", [
    ("b.jsonl", "jsonl", BOM + doc("first") + b"\n" + doc("second"), [(1, "first"), (2, "second")]),
    ("b.csv", "csv", BOM + b"text,title\nfirst,t1\nsecond,t2\n", [(2, "first"), (3, "second")]),
    ("b.jsonl.gz", "jsonl", gzip.compress(BOM + doc("first")), [(1, "first")]),
    ("b.txt", "text", BOM + b"a note", [(1, "a note")]),
])
def test_a_utf8_bom_at_the_start_of_a_file_is_not_part_of_the_first_record(path, fmt, content, expected):
    rows = list(parse_file(path, content, settings(fmt)))
    assert outcome(rows) == expected
    if fmt == "csv":
        assert rows[0]["metadata"] == {"title": "t1"}  # the header's first name is `text`, not `\ufefftext`


def test_cr_only_line_ends_give_one_row_per_record():
    content = b"\r".join([doc("one"), doc("two"), b'{"text": "cut', doc("four")]) + b"\r"
    assert outcome(parse_file("mac.jsonl", content, settings())) == [(1, "one"), (2, "two"), (3, "malformed_json"),
                                                                       (4, "four")]
    csv_rows = parse_file("mac.csv", b"text,url\rfirst,u1\rsecond,u2\r", settings("csv"))
    assert outcome(csv_rows) == [(2, "first"), (3, "second")]
    # CR as whitespace inside one valid JSON object is not a line end
    assert outcome(parse_file("ws.jsonl", b'{"text": "x",\r"url": "u"}', settings())) == [(1, "x")]


def test_an_unterminated_csv_quote_rejects_its_own_line_and_the_rows_after_it_are_read():
    content = b'text,url\nfirst,u1\n"second,u2\nthird,u3\nfourth,u4\n'
    rows = list(parse_file("q.csv", content, settings("csv")))
    assert outcome(rows) == [(2, "first"), (3, "malformed_csv"), (4, "third"), (5, "fourth")]
    assert "unterminated quote" in rows[1]["detail"]


def truncated_gzip(texts: list[str]) -> tuple[bytes, int]:
    """Half of the gzip of one document per text, and how many complete lines its readable part holds."""
    cut = gzip.compress(b"".join(doc(t) + b"\n" for t in texts))
    cut = cut[:len(cut) // 2]
    return cut, zlib.decompressobj(wbits=31).decompress(cut).count(b"\n")


def truncated_bz2(texts: list[str]) -> tuple[bytes, int]:
    """The same with bz2 in 100 kB blocks: the readable part is the blocks before the cut."""
    cut = bz2.compress(b"".join(doc(t) + b"\n" for t in texts), compresslevel=1)
    cut = cut[:len(cut) // 2]
    return cut, bz2.BZ2Decompressor().decompress(cut).count(b"\n")


def truncated_zstd(texts: list[str]) -> tuple[bytes, int]:
    """The same with zstd in two frames; zstandard's stream reader (which ends quietly at the cut) gives
    the readable part. Before, the records of pyarrow's last 1 MiB buffer were lost in the row."""
    data = b"".join(doc(t) + b"\n" for t in texts)
    cut = b"".join(zstandard.ZstdCompressor().compress(part) for part in (data[:len(data) // 4], data[len(data) // 4:]))
    cut = cut[:len(cut) // 2]
    return cut, zstandard.ZstdDecompressor().stream_reader(io.BytesIO(cut), read_across_frames=True).read().count(b"\n")


@pytest.mark.parametrize("truncated", [truncated_gzip, truncated_bz2, truncated_zstd])
def test_a_truncated_compressed_file_keeps_every_record_before_the_break(truncated):
    texts = [f"line {i} {i * 7919 % 100_003:x} {i * 104_729 % 99_991:o}" for i in range(1, 40_001)]
    cut, complete = truncated(texts)
    rows = list(parse_file("cut.jsonl", cut, settings()))  # compressed content under a plain name, as well
    assert complete > 5_000 and outcome(rows[:-1]) == [(i, texts[i - 1]) for i in range(1, complete + 1)]
    assert (rows[-1]["source_line"], rows[-1]["reason"]) == (complete + 1, "unreadable_file")
    assert "number of records unknown" in rows[-1]["detail"]


def test_a_truncated_parquet_file_says_its_rows_are_not_read():
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": [f"row {i}" for i in range(1000)]}), buf, row_group_size=100)
    rows = list(parse_file("cut.parquet", buf.getvalue()[:len(buf.getvalue()) // 2], settings("parquet")))
    assert [(r["source_line"], r["reason"]) for r in rows] == [(0, "unreadable_file")]
    assert "number of records unknown" in rows[0]["detail"]


def test_bidi_controls_are_removed_by_normalisation():
    assert normalize_text(f"pay{BIDI}txt.exe ok") == "paytxt.exe ok"
    assert normalize_text("\u05e9\u05dc\u05d5\u05dd abc") == "\u05e9\u05dc\u05d5\u05dd abc"  # RTL letters stay
    rows = list(parse_file("b.txt", f"evil\u202e{BIDI}name".encode(), settings("text")))
    assert outcome(rows) == [(1, "evilname")]


@pytest.mark.spark
def test_a_hostile_folder_is_ingested_with_every_record_accounted_for(spark, make_config, tmp_path):
    """Every case above in one corpus: the ingest finishes, counts add up per reason, good records reach bronze."""
    jsonl, table, cols = (tmp_path / "in" / name for name in ("jsonl", "table", "cols"))
    for folder in (jsonl, table, cols):
        folder.mkdir(parents=True)
    (jsonl / "surrogate.jsonl").write_bytes(b"\n".join([doc("j1"), LONE_SURROGATE, doc("j2")]))
    (jsonl / "deep.jsonl").write_bytes(b"\n".join([DEEP_JSON, HUGE_INT, doc("j3")]))
    (jsonl / "bom.jsonl").write_bytes(BOM + doc("j4") + b"\n" + doc("j5"))
    (jsonl / "mac.jsonl").write_bytes(b"\r".join([doc("j6"), doc("j7"), doc("j8")]))
    (jsonl / "gz-under-plain-name.jsonl").write_bytes(gzip.compress(doc("j9") + b"\n" + doc("j10")))
    (jsonl / "bidi.jsonl").write_bytes(doc(f"j11{BIDI}"))
    cut, complete = truncated_gzip([f"t{i}" for i in range(1, 2001)])
    (jsonl / "cut.jsonl.gz").write_bytes(cut)
    big = "word " * 42_000
    (table / "big.csv").write_bytes(b'text,url\n"' + big.encode() + b'",u1\nc1,u2\n')
    (table / "bom.csv").write_bytes(BOM + b"text,url\nc2,u3\nc3,u4\n")
    (table / "quote.csv").write_bytes(b'text,url\nc4,u5\n"c5,u6\nc6,u7\n')
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": [f"p{i}" for i in range(300)]}), buf, row_group_size=50)
    (cols / "cut.parquet").write_bytes(buf.getvalue()[:len(buf.getvalue()) // 2])
    sources = [{"name": n, "path": str(tmp_path / "in" / n), "format": f}
               for n, f in (("jsonl", "jsonl"), ("table", "csv"), ("cols", "parquet"))]
    cfg = make_config(f"ingest.sources={json.dumps(sources)}", config_files=())

    summary = execute(ingest.STEP, spark, cfg, steps=STEPS, force=True).summary
    assert summary["quarantined"] == {"invalid_utf8": 1, "malformed_json": 2, "malformed_csv": 1,
                                      "unreadable_file": 2}
    good = ([f"j{i}" for i in range(1, 12)] + [f"t{i}" for i in range(1, complete + 1)] + [big.strip()]
            + [f"c{i}" for i in (1, 2, 3, 4, 6)])
    assert summary["records"] == len(good) + 6 and summary["inserted"] == len(good)
    bronze = tables.read_table(spark, tables.table_ref(cfg, "bronze"))
    assert sorted(r["text"] for r in bronze.select("text").collect()) == sorted(good)
    quarantine = tables.read_table(spark, tables.table_ref(cfg, "quarantine"))
    got = sorted((r["source_file"].rsplit("/", 1)[-1], r["source_line"], r["reason"]) for r in quarantine.collect())
    assert got == [("cut.jsonl.gz", complete + 1, "unreadable_file"), ("cut.parquet", 0, "unreadable_file"),
                   ("deep.jsonl", 1, "malformed_json"), ("deep.jsonl", 2, "malformed_json"),
                   ("quote.csv", 3, "malformed_csv"), ("surrogate.jsonl", 2, "invalid_utf8")]
    assert bronze.where(F.col("text").startswith("j6")).count() == 1
