"""Real corpus shards: compressed JSONL, large files read as byte ranges, skipped files counted.

The pure tests read files with the same functions the executors run (no Spark); one Spark test
ingests a folder of every kind of shard and checks documents, quarantine lines and file counts.
"""
from __future__ import annotations

import bz2
import gzip
import io
import itertools
import json
import lzma
import random

import pyarrow as pa
import pytest
from pyspark.sql import functions as F

from jobs import ingest
from jobs.common import tables
from jobs.common.config import IngestConfig, ProvenanceConfig, SourceConfig
from jobs.common.errors import SetupError
from jobs.common.records import (
    ParseSettings,
    ReadTask,
    count_newlines,
    ensure_readable_scheme,
    file_kind,
    parse_file,
    read_task,
)
from jobs.common.runner import execute
from jobs.pipeline import STEPS


def settings(fmt: str = "jsonl", **ingest_keys) -> ParseSettings:
    return ParseSettings(source=SourceConfig(name="s", path="unused", format=fmt), ingest=IngestConfig(**ingest_keys),
                         provenance=ProvenanceConfig())


def zstd(data: bytes) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, "zstd") as stream:
        stream.write(data)
    return sink.getvalue().to_pybytes()


def jsonl(texts: list[str]) -> bytes:
    return b"".join(json.dumps({"text": t}).encode() + b"\n" for t in texts)


def line_texts(n: int, bad: dict[int, bytes] | None = None, width: int = 0) -> bytes:
    """``n`` lines; line i (1-based) is a document whose text starts with ``line i``, unless ``bad`` replaces it."""
    bad = bad or {}
    filler = " ".join(f"w{k}" for k in range(width))  # width 0: the text is just ``line i``
    return b"".join(bad.get(i, json.dumps({"text": f"line {i} {filler}"}).encode()) + b"\n" for i in range(1, n + 1))


def outcome(rows) -> list[tuple[int, str]]:
    return [(r["source_line"], r.get("reason") or r["text"]) for r in rows]


@pytest.mark.parametrize("codec, compress", [("gzip", gzip.compress), ("zstd", zstd), ("bz2", bz2.compress),
                                             ("xz", lzma.compress)])
def test_compressed_jsonl_reads_like_plain(codec, compress):
    plain = line_texts(40, bad={7: b'{"text": "cut', 9: b""})
    suffix = {"gzip": "gz", "zstd": "zst", "bz2": "bz2", "xz": "xz"}[codec]
    assert file_kind(f"shard.jsonl.{suffix}", "jsonl") == (codec, None)
    expected = outcome(parse_file("shard.jsonl", plain, settings()))
    assert outcome(parse_file(f"shard.jsonl.{suffix}", compress(plain), settings())) == expected
    assert expected[6] == (7, "malformed_json") and len(expected) == 39  # the blank line 9 is no record


def test_concatenated_gzip_members_and_zstd_frames_are_one_stream():
    first, second = line_texts(3), line_texts(5)[len(line_texts(3)):]
    for data in (gzip.compress(first) + gzip.compress(second), zstd(first) + zstd(second)):
        assert [line for line, _ in outcome(parse_file("x.jsonl.gz", data, settings()))] == [1, 2, 3, 4, 5]


def test_gzip_content_under_a_plain_name_is_read_and_a_false_gz_name_is_one_rejection():
    data = line_texts(5)
    assert outcome(parse_file("shard.jsonl", gzip.compress(data), settings())) == \
        outcome(parse_file("shard.jsonl", data, settings()))
    rows = list(parse_file("shard.jsonl.gz", data, settings()))
    assert [(r["source_line"], r["reason"]) for r in rows] == [(0, "unreadable_file")]
    assert "the name says gzip" in rows[0]["detail"] and "7b 22" in rows[0]["detail"]


def test_truncated_gzip_keeps_the_records_before_the_break_and_names_where():
    data = line_texts(50_000, width=20)  # 8 MB: the break comes after several read buffers
    rows = list(parse_file("cut.jsonl.gz", gzip.compress(data, compresslevel=1)[:-2000], settings()))
    *documents, last = rows
    assert len(documents) > 30_000 and all(r.get("reason") is None for r in documents)
    assert [r["source_line"] for r in documents] == list(range(1, len(documents) + 1))
    assert (last["reason"], last["source_line"]) == ("unreadable_file", len(documents) + 1)
    assert "reading stopped at record" in last["detail"] and len(documents) < 50_000


def test_csv_and_text_shards_stream_compressed():
    csv_rows = list(parse_file("t.csv.gz", gzip.compress(b'title,text\nA,"first\nsecond"\nB,plain\n'),
                               settings("csv")))
    assert [(r["source_line"], r["text"]) for r in csv_rows] == [(2, "first\nsecond"), (4, "plain")]
    text_rows = list(parse_file("a.txt.zst", zstd(b"Hello\r\nworld"), settings("text")))
    assert [(r["source_line"], r["text"]) for r in text_rows] == [(1, "Hello\nworld")]


def test_a_line_over_the_record_limit_is_quarantined_without_being_kept():
    data = line_texts(3) + json.dumps({"text": "x" * 5000}).encode() + b"\n" + line_texts(4)[len(line_texts(3)):]
    rows = list(parse_file("x.jsonl", data, settings(max_record_bytes=1000, raw_preview_chars=50)))
    assert [(r["source_line"], r.get("reason")) for r in rows] == [(1, None), (2, None), (3, None),
                                                               (4, "text_too_large"), (5, None)]
    assert rows[3]["raw_bytes"] == 5013 and len(rows[3]["raw"]) == 50


def test_file_kinds_follow_the_format_and_a_glob_reads_any_name():
    assert file_kind("s3a://b/x/part-0.ndjson.zst", "jsonl") == ("zstd", None)
    assert file_kind("file:/d/x.json.gz", "jsonl") == ("gzip", None)
    assert file_kind("file:/d/README.md", "jsonl") == (None, "unsupported_suffix")
    assert file_kind("file:/d/x.parquet.gz", "parquet") == ("gzip", "unsupported_suffix")
    assert file_kind("file:/d/x.csv.bz2", "csv") == ("bz2", None)
    assert file_kind("file:/d/part-0001", "jsonl", any_name=True) == (None, None)


def test_a_scheme_without_its_fsspec_package_is_a_setup_error_before_reading():
    with pytest.raises(SetupError, match="nosuchfs://"):
        ensure_readable_scheme("nosuchfs://bucket/shard.jsonl.gz")
    ensure_readable_scheme("file:/tmp/x.jsonl")
    ensure_readable_scheme("s3a://bucket/x.jsonl")  # s3fs is installed


def test_small_files_share_partitions_and_large_ones_have_their_own():
    tasks = [(ReadTask(0, f"f{i}"), 10_000) for i in range(50)] + [(ReadTask(0, "big", start=s), 4 << 20)
                                                                    for s in range(3)]
    partitions = ingest.pack(tasks, split_bytes=4 << 20, parallelism=2)
    assert sorted(len(p) for p in partitions if p[0].path == "big") == [1, 1, 1]
    small = [p for p in partitions if p[0].path != "big"]
    assert sum(len(p) for p in small) == 50 and len(small) <= 4


def test_byte_ranges_read_every_line_once_with_its_exact_number(tmp_path):
    """Every split size from 1 byte up, over lines of every kind (blank, CRLF, bad, long): the ranges
    together give exactly the rows of one whole read, same line numbers."""
    content = (b'{"text": "a"}\n\n{"text": "bb"}\r\n' + b'{"bad\n' + b"\n\n" + json.dumps({"text": "c" * 40}).encode()
               + b"\n" + b'{"text": "d"}\n' + b"[1]\n" + b'{"text": "last, no newline"}')
    path = tmp_path / "x.jsonl"
    path.write_bytes(content)
    parse = settings()
    whole = outcome(read_task(ReadTask(0, f"file:{path}"), parse))
    assert [line for line, _ in whole] == [1, 3, 4, 7, 8, 9, 10]
    for split in range(1, len(content) + 2):
        ranges = ingest.byte_ranges(ReadTask(0, f"file:{path}"), len(content), split)
        counts = [count_newlines(r.path, r.start, r.end) for r in ranges]
        assert sum(n for n, _ in counts) == content.count(b"\n")
        read = [row for task, _ in ingest.number_ranges(ranges, counts) for row in read_task(task, parse)]
        assert outcome(read) == whole, f"split {split}"


def test_reader_yields_records_before_reading_the_whole_stream():
    class Endless(io.RawIOBase):
        """200 MB of JSONL, produced on demand; counts what was read."""

        def __init__(self):
            self.lines = (json.dumps({"text": f"line {i} " + "z" * 200}).encode() + b"\n" for i in itertools.count(1))
            self.pending, self.served = b"", 0

        def readable(self):
            return True

        def readinto(self, buffer):
            if self.served >= 200 << 20:
                return 0
            parts, size = [self.pending], len(self.pending)
            while size < len(buffer):
                parts.append(next(self.lines))
                size += len(parts[-1])
            joined = b"".join(parts)
            chunk, self.pending = joined[:len(buffer)], joined[len(buffer):]
            buffer[:len(chunk)] = chunk
            self.served += len(chunk)
            return len(chunk)

    stream = Endless()
    from jobs.common.records import parse_stream

    first = list(itertools.islice(parse_stream(ReadTask(0, "endless.jsonl"), stream, settings()), 1000))
    assert [r["source_line"] for r in first] == list(range(1, 1001))
    assert stream.served < 4 << 20  # a read buffer or two, not 200 MB


@pytest.mark.spark
def test_a_folder_of_shards_is_ingested_with_exact_lines_and_every_file_counted(spark, make_config, tmp_path):
    shards, big, notes, table = (tmp_path / "in" / name for name in ("shards", "big", "notes", "table"))
    for folder in (shards, big, notes, table):
        folder.mkdir(parents=True)
    # widths differ so that no two shards share a text (no exact duplicates within the source)
    (shards / "a.jsonl.gz").write_bytes(gzip.compress(line_texts(300, bad={150: b'{"text": "broken'}, width=1)))
    (shards / "b.jsonl.zst").write_bytes(zstd(line_texts(200, width=2)))
    # gzip bytes under a plain name, large enough to be planned as byte ranges: read whole once sniffed
    noise = random.Random(0)
    c_lines = [json.dumps({"text": f"line {i} {noise.randbytes(100).hex()}"}) for i in range(1, 4001)]
    (shards / "c.jsonl").write_bytes(gzip.compress("\n".join(c_lines).encode(), compresslevel=1))
    (shards / "d.json.bz2").write_bytes(bz2.compress(line_texts(20, width=3)))
    (shards / "empty.jsonl").write_bytes(b"")
    (shards / "README.md").write_text("not a shard")
    # 3.5 MB read as 14 byte ranges of 256 KiB, with bad lines (one longer than the record limit) planted
    planted = {1: b"[1]", 2_000: b'{"text": "cut', 7_777: b"\xff\xfe", 9_001: b"", 12_000: b"x" * 300_000}
    (big / "big.jsonl").write_bytes(line_texts(14_000, bad=planted, width=40))
    (notes / "n.txt.gz").write_bytes(gzip.compress(b"A short note."))
    (notes / "empty.txt").write_bytes(b"")
    (table / "t.csv.gz").write_bytes(gzip.compress(b"text,url\nfirst row,u1\nsecond row,u2\n"))
    sources = [{"name": n, "path": str(tmp_path / "in" / n), "format": f}
               for n, f in (("shards", "jsonl"), ("big", "jsonl"), ("notes", "text"), ("table", "csv"))]
    cfg = make_config(f"ingest.sources={json.dumps(sources)}", "ingest.split_bytes=262144", "ingest.batch_rows=500",
                      "ingest.max_record_bytes=200000", config_files=())

    plan = ingest.plan_reads(ingest.list_files(spark, cfg), cfg)
    assert len([r for r in plan.ranges if r.path.endswith("big.jsonl")]) >= 10
    assert any(r.path.endswith("/c.jsonl") for r in plan.ranges)  # sniffed as gzip when read

    summary = execute(ingest.STEP, spark, cfg, steps=STEPS, force=True).summary
    assert summary["files_read"] == {"shards": 4, "big": 1, "notes": 1, "table": 1}
    assert summary["files_skipped"] == {"notes.empty_file": 1, "shards.empty_file": 1,
                                        "shards.unsupported_suffix": 1}
    assert summary["quarantined"] == {"malformed_json": 2, "not_an_object": 1, "invalid_utf8": 1,
                                      "text_too_large": 1}
    assert summary["records"] == 300 + 200 + 4000 + 20 + (14_000 - 1) + 1 + 2  # the blank line is no record
    assert summary["inserted"] == summary["records"] - 5

    quarantine = tables.read_table(spark, tables.table_ref(cfg, "quarantine"))
    got = sorted((r["source_file"].rsplit("/", 1)[-1], r["source_line"], r["reason"]) for r in quarantine.collect())
    assert got == [("a.jsonl.gz", 150, "malformed_json"), ("big.jsonl", 1, "not_an_object"),
                   ("big.jsonl", 2_000, "malformed_json"), ("big.jsonl", 7_777, "invalid_utf8"),
                   ("big.jsonl", 12_000, "text_too_large")]
    # Every document's line number is the one its text names, in every range, compressed or not.
    bronze = tables.read_table(spark, tables.table_ref(cfg, "bronze")).where(F.col("source").isin("shards", "big"))
    wrong = bronze.where(~F.col("text").startswith(F.concat(F.lit("line "), F.col("source_line"), F.lit(" "))))
    assert wrong.count() == 0
    assert bronze.where(F.col("source") == "big").count() == 14_000 - 5


def test_shards_stream_from_an_object_store_under_the_uris_spark_lists(s3_server, monkeypatch):
    """Executors open what Spark listed (``s3a://…``) through fsspec/s3fs, whole or as a byte range."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    data = line_texts(3000, bad={1234: b'{"text": "cut'}, width=5)
    fs = s3_server.filesystem()
    fs.pipe(f"{s3_server.bucket}/shards/a.jsonl.zst", zstd(data))
    fs.pipe(f"{s3_server.bucket}/shards/b.jsonl", data)
    parse = settings()
    expected = outcome(parse_file("a.jsonl", data, parse))
    assert outcome(read_task(ReadTask(0, s3_server.url("shards/a.jsonl.zst", scheme="s3a"), "zstd"), parse)) == expected
    plain = s3_server.url("shards/b.jsonl", scheme="s3a")
    ranges = ingest.byte_ranges(ReadTask(0, plain), len(data), 20_000)
    counts = [count_newlines(r.path, r.start, r.end) for r in ranges]
    read = [row for task, _ in ingest.number_ranges(ranges, counts) for row in read_task(task, parse)]
    assert len(ranges) > 5 and outcome(read) == expected
