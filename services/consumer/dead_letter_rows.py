"""A dead letter as PostgreSQL takes it: the parameter tuple of one
``dead_letters`` row (raw key and headers in full, the payload up to
``DEAD_LETTER_PAYLOAD_MAX_BYTES`` with the size and SHA-256 of the whole
payload, storable text) and its de-duplication key.

The hash in the key is always the whole payload's, so the unique constraint
(topic, incarnation, partition, offset, payload hash) tells a re-delivery of
the same bad message from another message at a re-used offset whatever the
cap (sql/120_bounded_stores.sql)."""

from __future__ import annotations

import hashlib

import psycopg2
from psycopg2.extras import Json

from salespulse.settings import get_settings

from .messages import ParsedMessage, as_bytes, decode_key, headers_json, reason, safe_text


def payload_cap() -> int:
    """Payload bytes a dead letter keeps (``DEAD_LETTER_PAYLOAD_MAX_BYTES``)."""
    return get_settings().dead_letter_payload_max_bytes


def dead_letter_key(m: ParsedMessage, incarnation: str) -> tuple:
    """The de-duplication key of a dead letter (its unique constraint)."""
    raw = m.raw
    return (safe_text(str(raw.topic)), incarnation, raw.partition, raw.offset,
            hashlib.sha256(as_bytes(raw.value) or b"").hexdigest())


def dead_letter_row(m: ParsedMessage, incarnation: str = "", error: str | None = None,
                    cap: int | None = None) -> tuple:
    topic, incarnation, partition, offset, sha = dead_letter_key(m, incarnation)
    value, key = as_bytes(m.raw.value), as_bytes(m.raw.key)
    headers = headers_json(m.raw.headers)
    cap = payload_cap() if cap is None else cap
    size = None if value is None else len(value)
    stored = None if value is None else value[:cap]
    return (
        topic, incarnation, partition, offset, decode_key(key), None if key is None else psycopg2.Binary(key),
        None if headers is None else Json(headers), None if stored is None else psycopg2.Binary(stored),
        size, sha, reason(error or m.error or "invalid"),
    )
