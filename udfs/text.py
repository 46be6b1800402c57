"""Text normalisation and content hashing shared by every step (pure Python, no Spark).

``normalize_text`` defines what "the same document" means for the whole system: ``doc_id`` is the
hash of its output, so changing it changes every id in the lake (and is a breaking change).
"""
from __future__ import annotations

import re
import unicodedata

import xxhash

# C0/C1 control characters except tab and newline; zero-width and BOM characters, invisible yet making
# otherwise identical texts hash differently; and Unicode's Bidi_Control characters (U+061C, U+200E/F,
# U+202A..U+202E, U+2066..U+2069), which reorder how text is displayed ("Trojan Source") without being
# content. Right-to-left letters are untouched: their direction comes from the letters themselves.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e"
                      "\u2060\u2066-\u2069\ufeff]")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")


def normalize_text(text: str) -> str:
    """NFC, CRLF/CR -> LF, control, zero-width and bidi control characters removed, trailing spaces on lines and
    surrounding whitespace stripped. Inner spacing and case are kept: they are content."""
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = _TRAILING_SPACE.sub("\n", text)
    return text.strip()


def content_hash(text: str) -> str:
    """32-hex-digit xxh3-128 of the UTF-8 bytes. xxh3 over sha256: ids are for deduplication, not
    security, and hashing every document of a corpus is on the hot path (~10x faster)."""
    return xxhash.xxh3_128_hexdigest(text.encode("utf-8"))


def whitespace_tokens(text: str) -> int:
    return len(text.split())
