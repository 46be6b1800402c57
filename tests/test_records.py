"""Pure parsing of input files into documents or quarantine rows (no Spark)."""
from __future__ import annotations

import datetime as dt
import io
import itertools
import json
import unicodedata

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.common.config import IngestConfig, ProvenanceConfig, SourceConfig
from jobs.common.records import ParseSettings, parse_date, parse_file, resolve_provenance
from tests.conftest import REPO
from udfs.text import content_hash, normalize_text

M4 = REPO / "data" / "m4" / "wikipedia_llama2.jsonl"


def settings(fmt: str = "jsonl", **source) -> ParseSettings:
    src = SourceConfig(name="s", path="unused", format=fmt, **source)
    return ParseSettings(source=src, ingest=IngestConfig(max_text_bytes=5000), provenance=ProvenanceConfig())


def human_texts(n: int) -> list[str]:
    with open(M4, encoding="utf-8") as fh:
        return [json.loads(line)["human_text"] for line in itertools.islice(fh, n)]


def reasons(rows) -> list[str | None]:
    return [r.get("reason") for r in rows]


def test_every_jsonl_record_comes_out_once_as_document_or_rejection():
    text = human_texts(1)[0][:3000]
    lines = [
        json.dumps({"text": text, "origin": "human"}).encode(),
        b'{"text": "unterminated',
        b'{"text": "caf\xe9"}',
        b"[1, 2]",
        json.dumps({"body": "x"}).encode(),
        json.dumps({"text": 5}).encode(),
        json.dumps({"text": "  \u200b "}).encode(),
        json.dumps({"text": "word " * 2000}).encode(),
        json.dumps({"text": "fine", "origin": "robot"}).encode(),
        json.dumps({"text": "fine", "created_at": "next tuesday"}).encode(),
        b"",  # blank line: not a record
    ]
    rows = list(parse_file("f.jsonl", b"\n".join(lines), settings()))
    assert reasons(rows) == [None, "malformed_json", "invalid_utf8", "not_an_object", "missing_text", "wrong_type",
                             "empty_text", "text_too_large", "unknown_origin", "unparsable_date"]
    assert [r["source_line"] for r in rows] == list(range(1, 11))
    assert rows[0]["doc_id"] == content_hash(normalize_text(text))
    assert rows[2]["raw"] == '{"text": "caf\\xe9"}'  # invalid byte kept visible, not replaced
    assert "found: ['body']" in rows[4]["detail"]


def test_normalisation_makes_reencoded_copies_one_doc_id():
    text = human_texts(3)[2]
    variants = ["\ufeff" + text.replace("\n", "\r\n") + "  ", unicodedata.normalize("NFD", text), text + "\x07"]
    assert {content_hash(normalize_text(v)) for v in variants} == {content_hash(normalize_text(text))}
    assert normalize_text("a  b\n\nc") == "a  b\n\nc"  # inner spacing is content


def test_csv_rows_keep_line_numbers_and_flag_bad_rows():
    content = (b'title,body\n"T1","first\nsecond line"\n"T2",plain\nonly-one-field\n') + b'"T3","bad \xff"\n'
    rows = list(parse_file("f.csv", content, settings("csv", columns={"text": "body"})))
    assert reasons(rows) == [None, None, "malformed_csv", "invalid_utf8"]
    assert [r["source_line"] for r in rows] == [2, 4, 5, 6]
    assert rows[0]["text"] == "first\nsecond line"
    assert rows[0]["metadata"] == {"title": "T1"}


def test_parquet_rows_are_mapped_and_a_corrupt_file_is_one_rejection():
    buf = io.BytesIO()
    pq.write_table(pa.table({"content": ["alpha text", None], "model": ["m", "m"]}), buf)
    rows = list(parse_file("g.parquet", buf.getvalue(),
                           settings("parquet", columns={"text": "content", "generator": "model"})))
    assert reasons(rows) == [None, "missing_text"]
    assert rows[0]["generator"] == "m"
    corrupt = list(parse_file("bad.parquet", b"PAR1" + b"\0" * 10, settings("parquet")))
    assert reasons(corrupt) == ["unreadable_file"]


def test_text_files_are_one_document_each():
    rows = list(parse_file("a.txt", b"Hello\r\nworld", settings("text")))
    assert rows[0]["text"] == "Hello\nworld" and rows[0]["source_line"] == 1
    assert reasons(list(parse_file("b.txt", b"\xff\xfe", settings("text")))) == ["invalid_utf8"]


@pytest.mark.parametrize("value, expected", [
    ("2019-05-01", dt.datetime(2019, 5, 1, tzinfo=dt.UTC)),
    ("2024-03-01T12:00:00Z", dt.datetime(2024, 3, 1, 12, tzinfo=dt.UTC)),
    ("2024-03-01T14:00:00+02:00", dt.datetime(2024, 3, 1, 12, tzinfo=dt.UTC)),
    (0, dt.datetime(1970, 1, 1, tzinfo=dt.UTC)),
    ("01.02.2020", dt.datetime(2020, 2, 1, tzinfo=dt.UTC)),
])
def test_dates_parse_to_utc(value, expected):
    assert parse_date(value) == expected


def test_provenance_declared_metadata_beats_inference():
    cfg = ProvenanceConfig()
    old = dt.datetime(2015, 1, 1, tzinfo=dt.UTC)
    new = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    c2pa = {"digital_source_type": "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"}
    assert resolve_provenance("human", new, c2pa, False, cfg) == ("synthetic", "declared", False)
    assert resolve_provenance("synthetic", old, {}, False, cfg) == ("synthetic", "declared", True)
    assert resolve_provenance(None, old, {}, False, cfg) == ("human", "date-inferred", True)
    assert resolve_provenance(None, new, {}, False, cfg) == ("unknown", None, False)
    assert resolve_provenance(None, None, {}, True, cfg) == ("human", "archive", True)
    no_inference = ProvenanceConfig(infer_human_before_cutoff=False)
    assert resolve_provenance(None, old, {}, False, no_inference) == ("unknown", None, True)


def test_defaults_fill_missing_fields_and_unmapped_fields_go_to_metadata():
    line = json.dumps({"text": "some text", "lang": "de", "title": "T", "extra": {"k": 1}}).encode()
    row = next(parse_file("x.jsonl", line, settings(columns={"language": "lang"},
                                                    defaults={"origin": "human", "license": "CC0"})))
    assert (row["language"], row["license"], row["origin"], row["provenance_method"]) == ("de", "CC0", "human",
                                                                                          "declared")
    assert row["metadata"] == {"title": "T", "extra": '{"k": 1}'}
