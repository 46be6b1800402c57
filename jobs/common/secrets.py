"""Secrets stay out of evidence: what cleanwell logs, prints, tags and writes goes through :func:`redact`.

Two kinds of secret are recognised:

- a value under a key that names a credential: a key whose words (split at ``.``, ``_``, ``-``) include
  ``secret``, ``password``, ``passwd``, ``pwd`` or ``credentials``, end in ``token``, or end in ``key``
  after ``access``, ``secret``, ``api``, ``private``, ``session``, ``account``, ``encryption``, ``sas`` or
  ``watermark`` (``spark.hadoop.fs.s3a.secret.key``, ``fs.azure.account.key.<account>...``,
  ``detect.watermark_key``); ``token_budget`` or ``group_key`` are not secrets;
- a password inside a URI anywhere in a string (``https://user:pw@host``, ``s3://AKIA…:secret@bucket/…``).

Redaction keeps the shape: the value becomes ``***`` and a URI keeps its user and host
(``https://user:***@host``), so a reader still sees what was configured.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REDACTED = "***"
_ALWAYS = frozenset({"secret", "secrets", "password", "passwd", "pwd", "credential", "credentials"})
_KEY_QUALIFIERS = frozenset({"access", "secret", "api", "private", "session", "account", "encryption", "sas",
                             "watermark"})
_WORD = re.compile(r"[._\-\s]+")
# scheme://user:password@  (the password may not contain '@', '/' or whitespace)
_URI_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@]*:)(?P<password>[^\s@/]+)(?P<tail>@)")


def is_secret_key(key: str) -> bool:
    """Whether a value stored under ``key`` is a credential (see the module docstring)."""
    words = [w for w in _WORD.split(str(key).lower()) if w]
    if not words:
        return False
    if _ALWAYS.intersection(words) or words[-1] in ("token", "apikey"):
        return True
    return any(word == "key" and i > 0 and words[i - 1] in _KEY_QUALIFIERS for i, word in enumerate(words))


def redact_text(text: str) -> str:
    """``text`` with the password of every URI in it replaced by ``***``."""
    return _URI_PASSWORD.sub(lambda m: f"{m['head']}{REDACTED}{m['tail']}", text)


def redact(value: Any, key: str = "") -> Any:
    """``value`` fit for logs, MLflow params and tags, manifests and reports: a credential-named key's value
    becomes ``***``, URI passwords in strings are masked, mappings and lists are redacted item by item."""
    if key and is_secret_key(key) and value not in (None, "", [], {}):
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    return value
