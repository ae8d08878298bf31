"""A dead letter as PostgreSQL takes it: the parameter tuple of one
``dead_letters`` row (raw key, value and headers in full, storable text) and
its de-duplication key."""

from __future__ import annotations

import hashlib

import psycopg2
from psycopg2.extras import Json

from .messages import ParsedMessage, as_bytes, decode_key, headers_json, reason, safe_text


def dead_letter_key(m: ParsedMessage, incarnation: str) -> tuple:
    """The de-duplication key of a dead letter (its unique constraint)."""
    raw = m.raw
    return (safe_text(str(raw.topic)), incarnation, raw.partition, raw.offset,
            hashlib.sha256(as_bytes(raw.value) or b"").hexdigest())


def dead_letter_row(m: ParsedMessage, incarnation: str = "", error: str | None = None) -> tuple:
    topic, incarnation, partition, offset, sha = dead_letter_key(m, incarnation)
    value, key = as_bytes(m.raw.value), as_bytes(m.raw.key)
    headers = headers_json(m.raw.headers)
    return (
        topic, incarnation, partition, offset, decode_key(key), None if key is None else psycopg2.Binary(key),
        None if headers is None else Json(headers), None if value is None else psycopg2.Binary(value),
        sha, reason(error or m.error or "invalid"),
    )

