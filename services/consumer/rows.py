"""Rows as PostgreSQL takes them: COPY text lines for events, orders and
order items, with the content hash that tells a re-send from a conflict
(dead letters: ``dead_letter_rows.py``).

Built by ``messages.parse`` on the consuming thread, so the writer thread only
talks to the database. A valid message that no column can hold (an amount
beyond NUMERIC(12,2), a NUL in text) raises :class:`Unstorable` here, before
anything is sent.
"""

from __future__ import annotations

import hashlib
import io
import re
from typing import Any, NamedTuple

from salespulse.contract_fast_path import contract_of
from salespulse.contracts import EcommerceEvent

_ESCAPE = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_NEEDS_ESCAPE = re.compile(r"[\\\t\n\r]")
_NULL = "\\N"
_MONEY_LIMIT = 10 ** 10  # NUMERIC(12, 2)


class Unstorable(ValueError):
    """A valid message that no column can hold."""


def _t(value: str | None) -> str:
    return _NULL if value is None else value.translate(_ESCAPE)


def _plain(value: str | None) -> str:
    """``_t`` for text known to hold nothing COPY escapes."""
    return _NULL if value is None else value


def _text_writer(texts: str):
    """``_t``, or the cheaper ``_plain`` when ``texts`` (a row's text fields,
    concatenated) holds no character COPY escapes: the usual case, decided by
    one regex search per row instead of a translation per field."""
    return _t if _NEEDS_ESCAPE.search(texts) else _plain


def _n(value: Any) -> str:
    return _NULL if value is None else str(value)


def _m(value: Any) -> str:
    if value is not None and abs(value) >= _MONEY_LIMIT:
        raise Unstorable(f"amount {value} does not fit NUMERIC(12,2)")
    return _n(value)


def _event_line(e) -> str:
    """The COPY line of an event (contract model or its values): its text
    form is also what the content hash is taken over, so it never changes."""
    p = e.product
    texts = e.user_id + e.session_id + (e.payment_method or "") + (e.search_query or "")
    if p is None:
        t = _text_writer(texts)
        product = (_NULL, _NULL, _NULL, _NULL)
    else:
        t = _text_writer(texts + p.id + p.name + p.category)
        product = (t(p.id), t(p.name), t(p.category), _m(p.price))
    return "\t".join((
        str(e.event_id), e.event_type, e.timestamp.isoformat(), t(e.user_id), t(e.session_id), *product,
        _n(e.quantity), _m(e.total_amount), t(e.payment_method), t(e.search_query),
    ))


def _order_lines(o) -> tuple[str, list[str]]:
    oid = str(o.order_id)
    items = o.items
    t = _text_writer("".join([o.restaurant_id, o.payment_method,
                              *[text for it in items for text in (it.item_id, it.name, it.category)]]))
    item_lines = [
        "\t".join((oid, str(i), t(it.item_id), t(it.name), t(it.category), str(it.quantity),
                   _m(it.unit_price), _m(it.line_total)))
        for i, it in enumerate(items)
    ]
    order = "\t".join((
        oid, o.timestamp.isoformat(), t(o.restaurant_id), _n(o.table_number), o.channel,
        _m(o.total_amount), t(o.payment_method), str(sum(it.quantity for it in items)),
    ))
    return order, item_lines


def _encode(line: str) -> bytes:
    if "\x00" in line:
        raise Unstorable("text contains a NUL character, which PostgreSQL text cannot hold")
    return line.encode("utf-8")  # a lone surrogate raises here, not inside COPY


class Row(NamedTuple):
    """The storable form of one valid message (a named tuple: one object per
    message, which the consumer keeps until its batch is committed)."""

    index: int  # the caller's tag (the writer keeps positions of its own)
    kind: str  # "e" (event) or "o" (order)
    ident: str
    digest: str  # hex content hash of the normalised row
    line: bytes  # COPY line incl. the hash and the Kafka origin (events / orders)
    items: tuple[bytes, ...]  # COPY lines of the order items


_new_tuple = tuple.__new__
_NO_ORIGIN = b"\t\\N\t\\N"  # kafka_partition, kafka_offset of a row with no Kafka origin (a test's model)


def build_row(index: int, model, partition: int | None = None, offset: int | None = None) -> Row:
    """COPY lines plus content hash of a contract model or its values
    (``salespulse.contract_fast_path``); raises for a message no column can hold.
    ``partition``/``offset``: the message's Kafka origin, stored with the row
    (not part of the content hash: a re-send from another offset is the same
    content)."""
    if contract_of(model) is EcommerceEvent:
        line = _event_line(model)
        kind, main, items = "e", _encode(line), ()
        content = main
    else:
        line, item_lines = _order_lines(model)
        kind, main = "o", _encode(line)
        items = tuple([_encode(item) for item in item_lines])
        content = b"\n".join([main, *items])
    digest = hashlib.sha256(content).hexdigest()[:32]
    origin = _NO_ORIGIN if partition is None else b"\t%d\t%d" % (partition, offset)
    # both lines start with the 36-character id; then the hash and the origin close the line
    return _new_tuple(Row, (index, kind, line[:36], digest, main + b"\t\\\\x" + digest.encode("ascii") + origin, items))


COPY_CHUNK_BYTES = 64 << 20


def copy_lines(cur, table: str, lines: list[bytes]) -> None:
    """COPY ``lines`` into ``table``, in as few chunks as possible: psycopg2
    lets go of the GIL for every chunk it sends, and getting it back from a
    busy consuming thread can take a whole switch interval (5 ms)."""
    if lines:
        data = b"\n".join(lines) + b"\n"
        cur.copy_expert(f"COPY {table} FROM STDIN", io.BytesIO(data), size=min(len(data), COPY_CHUNK_BYTES))
