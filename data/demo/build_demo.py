"""Rebuild the bundled demo corpus from the M4 sample in data/m4 (deterministic; output is committed).

    python data/demo/build_demo.py

Five sources, each in a different input format, so every ingest path and every guardrail has
something to catch:
- wikipedia/  JSONL  human Wikipedia articles (M4 human_text), licence CC BY-SA 4.0
- wikihow/    CSV    human WikiHow articles under other column names (`body`), one malformed row
- llama2/     Parquet llama-2-70b-chat texts (M4 machine_text), declared synthetic, plus a corrupt file
- archive/    .txt   15 Wikipedia articles again, as a pre-AI archive (cross-source exact duplicates)
- injected/   JSONL  exact duplicates (re-encoded: CRLF, NFD, BOM), near-duplicates (1-6 % word edits),
                     dated documents, a C2PA-declared synthetic text, and malformed records of every
                     quarantine reason (bad JSON, invalid UTF-8, wrong types, empty, giant, bad origin/date)
"""
from __future__ import annotations

import csv
import json
import random
import unicodedata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
M4 = HERE.parent / "m4"
OUT = HERE / "sources"
SEED = 20241125


def load(name: str) -> list[dict]:
    with open(M4 / name, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def title_of(prompt: str) -> str:
    return prompt.split('"')[1] if prompt.count('"') >= 2 else prompt[:80]


def edit_words(text: str, rate: float, rng: random.Random) -> str:
    """Realistic small edits: delete, duplicate, swap neighbours or substitute words at ``rate``."""
    words = text.split(" ")
    out: list[str] = []
    i = 0
    while i < len(words):
        roll = rng.random()
        if roll < rate / 4:
            i += 1  # deletion
            continue
        if roll < rate / 2:
            out.append(words[i])  # duplication
        elif roll < 3 * rate / 4 and i + 1 < len(words):
            out.extend([words[i + 1], words[i]])  # swap
            i += 2
            continue
        elif roll < rate:
            out.append(rng.choice(["the", "a", "this", "very", "also", "then"]))  # substitution
            i += 1
            continue
        out.append(words[i])
        i += 1
    return " ".join(out)


def write_jsonl(path: Path, rows: list[dict | bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        for row in rows:
            fh.write(row if isinstance(row, bytes) else json.dumps(row, ensure_ascii=False).encode("utf-8"))
            fh.write(b"\n")


def main() -> None:
    rng = random.Random(SEED)
    wikipedia, wikihow = load("wikipedia_llama2.jsonl"), load("wikihow_llama2.jsonl")

    write_jsonl(OUT / "wikipedia" / "articles.jsonl", [
        {"text": r["human_text"], "title": title_of(r["prompt"]), "m4_source_id": str(r.get("source_id")),
         "lang": "en"} for r in wikipedia])

    (OUT / "wikihow").mkdir(parents=True, exist_ok=True)
    with open(OUT / "wikihow" / "articles.csv", "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["title", "body", "page_url"])
        for r in wikihow:
            title = title_of(r["prompt"])
            writer.writerow([title, r["human_text"], "https://www.wikihow.com/" + title.replace(" ", "-")])
        writer.writerow(["a row with a missing field", "only two fields"])  # malformed_csv

    machine = [{"content": r["machine_text"], "model": r["model"], "domain": domain, "prompt": r["prompt"]}
               for domain, rows in (("wikipedia", wikipedia), ("wikihow", wikihow)) for r in rows]
    (OUT / "llama2").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(machine), OUT / "llama2" / "generated.parquet")
    (OUT / "llama2" / "truncated.parquet").write_bytes(b"PAR1" + b"\x00" * 64)  # unreadable_file

    archive = OUT / "archive"
    archive.mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(wikipedia[:15]):
        (archive / f"article_{i:03d}.txt").write_text(r["human_text"], encoding="utf-8")

    injected: list[dict | bytes] = []
    for r in wikipedia[20:25]:  # exact duplicates after normalisation: CRLF, NFD, BOM, trailing spaces
        text = r["human_text"]
        injected.append({"text": "\ufeff" + text.replace("\n", "\r\n") + "   ", "origin": "human"})
        injected.append({"text": unicodedata.normalize("NFD", text), "origin": "human"})
    for r in wikihow[30:50]:  # near duplicates of human articles, dated before the AI cutoff
        injected.append({"text": edit_words(r["human_text"], rng.uniform(0.01, 0.06), rng),
                         "created_at": f"2019-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}"})
    for r in wikipedia[40:50]:  # near duplicates of machine text, undeclared, dated after the cutoff
        injected.append({"text": edit_words(r["machine_text"], rng.uniform(0.01, 0.06), rng),
                         "created_at": "2024-03-01T12:00:00Z"})
    injected.append({"text": wikihow[60]["machine_text"], "metadata_note": "C2PA manifest present",
                     "digital_source_type": "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"})
    injected += [
        b'{"text": "a record cut off in the middle',                                   # malformed_json
        b'{"text": "caf\xe9 au lait is not valid UTF-8 here", "origin": "human"}',     # invalid_utf8
        b'["a", "JSON", "array", "instead", "of", "an", "object"]',                     # not_an_object
        {"body": "the text is under the wrong key", "origin": "human"},                 # missing_text
        {"text": 12345, "origin": "human"},                                             # wrong_type
        {"text": "", "origin": "human"},                                                # empty_text
        {"text": " \n\t \u200b ", "origin": "human"},                                   # empty_text
        {"text": "A web page. " * 25000, "origin": "unknown"},                          # text_too_large
        {"text": "Written by a robot, it says.", "origin": "robot"},                    # unknown_origin
        {"text": "A note with a date nobody can read.", "created_at": "next tuesday"},  # unparsable_date
    ]
    injected.append(injected[0])  # the same record twice in one source: exact_duplicate_in_source
    write_jsonl(OUT / "injected" / "mixed.jsonl", injected)


if __name__ == "__main__":
    main()
