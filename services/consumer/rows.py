"""Rows as PostgreSQL takes them: COPY text lines for events, orders and
order items (with the content hash that tells a re-send from a conflict), and
the parameter tuple of a dead letter.

A valid message that no column can hold (an amount beyond NUMERIC(12,2), a
NUL in text) raises :class:`Unstorable` here, before anything is sent.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import Any

import psycopg2
from psycopg2.extras import Json

from salespulse.contracts import EcommerceEvent, RestaurantOrder

from .messages import ParsedMessage, as_bytes, decode_key, headers_json, reason, safe_text

_ESCAPE = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_NULL = "\\N"
_MONEY_LIMIT = 10 ** 10  # NUMERIC(12, 2)


class Unstorable(ValueError):
    """A valid message that no column can hold."""


def _t(value: str | None) -> str:
    return _NULL if value is None else value.translate(_ESCAPE)


def _n(value: Any) -> str:
    return _NULL if value is None else str(value)


def _m(value: Any) -> str:
    if value is not None and abs(value) >= _MONEY_LIMIT:
        raise Unstorable(f"amount {value} does not fit NUMERIC(12,2)")
    return _n(value)


def _event_line(e: EcommerceEvent) -> str:
    p = e.product
    return "\t".join((
        str(e.event_id), e.event_type, e.timestamp.isoformat(), _t(e.user_id), _t(e.session_id),
        _NULL if p is None else _t(p.id), _NULL if p is None else _t(p.name),
        _NULL if p is None else _t(p.category), _NULL if p is None else _m(p.price),
        _n(e.quantity), _m(e.total_amount), _t(e.payment_method), _t(e.search_query),
    ))


def _order_lines(o: RestaurantOrder) -> tuple[str, list[str]]:
    oid = str(o.order_id)
    items = [
        "\t".join((oid, str(i), _t(it.item_id), _t(it.name), _t(it.category), str(it.quantity),
                   _m(it.unit_price), _m(it.line_total)))
        for i, it in enumerate(o.items)
    ]
    order = "\t".join((
        oid, o.timestamp.isoformat(), _t(o.restaurant_id), _n(o.table_number), o.channel,
        _m(o.total_amount), _t(o.payment_method), str(sum(it.quantity for it in o.items)),
    ))
    return order, items


def _encode(line: str) -> bytes:
    if "\x00" in line:
        raise Unstorable("text contains a NUL character, which PostgreSQL text cannot hold")
    return line.encode("utf-8")  # a lone surrogate raises here, not inside COPY


@dataclass
class Row:
    """The storable form of one valid message (its first copy in the batch)."""

    index: int  # position in the batch's to-do list
    kind: str  # "e" (event) or "o" (order)
    ident: str
    digest: str  # hex content hash of the normalised row
    line: bytes  # COPY line incl. the hash (events / orders)
    items: list[bytes]


def build_row(index: int, model: EcommerceEvent | RestaurantOrder) -> Row:
    """COPY lines plus content hash; raises for a message no column can hold."""
    if isinstance(model, EcommerceEvent):
        line = _event_line(model)
        kind, ident, main, items = "e", line[:36], _encode(line), []  # the line starts with the event id
        content = main
    else:
        order, item_lines = _order_lines(model)
        kind, ident, main = "o", str(model.order_id), _encode(order)
        items = [_encode(line) for line in item_lines]
        content = b"\n".join([main, *items])
    digest = hashlib.sha256(content).hexdigest()[:32]
    return Row(index, kind, ident, digest, main + b"\t\\\\x" + digest.encode("ascii"), items)


def copy_lines(cur, table: str, lines: list[bytes]) -> None:
    if lines:
        cur.copy_expert(f"COPY {table} FROM STDIN", io.BytesIO(b"\n".join(lines) + b"\n"))


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

