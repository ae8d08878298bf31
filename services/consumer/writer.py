"""The batch writer: parse raw messages, write one batch in ONE transaction.

Usable without Kafka (unit tests, replay tools): give it :class:`RawMessage`
objects (or anything with ``topic/partition/offset/key/value/headers``).

The rule it keeps: every message of a batch ends in exactly one place, and
:meth:`BatchWriter.write` raises nothing but :class:`DatabaseUnavailable`
(nothing committed: retry the whole batch later). Per batch, in one transaction:

1. **Ledger first.** Lock the batch's partitions (transaction-level advisory
   locks, in a fixed order) and read which of its offsets ``ingest_ledger``
   already covers: those are re-deliveries of a committed batch (a crash
   between the database commit and the offset commit) and are *skipped*. A
   second consumer briefly owning the same partition waits for the lock and
   then sees the first one's ledger rows; the ledger's exclusion constraint is
   the backstop (an overlap fails the transaction, and the retry skips).
2. **Valid rows** are COPYed into per-connection temp tables and moved with
   ``INSERT ... ON CONFLICT DO NOTHING RETURNING``; products, transactions and
   order items are written only for the events/orders actually inserted, in
   the same statement. The first copy of an id in a batch wins. An id already
   stored is a duplicate if its content hash (a hash of the normalised row) is
   the same, otherwise a dead letter: "conflicting re-send ...".
3. **Dead letters** keep the raw key, value and headers in full; text columns
   never hold NUL (escaped), so storing one cannot fail because of content.
4. **The ledger row** per (topic, partition) range: messages, stored,
   duplicates, dead-lettered.

Messages the database (or the row building) unexpectedly rejects are isolated:
the batch is re-run with the row insert split in halves under savepoints
until the culprits are single messages, which become dead letters with the
reason; the rest is stored.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2.extras import Json, execute_values

from salespulse.contracts import (
    ContractError,
    EcommerceEvent,
    RestaurantOrder,
    TimestampWindow,
    parse_message,
)
from salespulse.settings import get_settings

log = logging.getLogger(__name__)

CONFLICT = "conflicting re-send of an id already stored with other content"
MAX_REASON_CHARS = 2000  # a reason is for people (and a DLQ header), not a dump
DEFAULT_GROUP = "salespulse-ingest"


# --------------------------------------------------------------------------
# messages
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class RawMessage:
    """A Kafka message as the writer needs it (no Kafka client required).
    ``incarnation``: the topic id it was read from ('' if unknown)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None = None
    incarnation: str = ""

    @classmethod
    def from_kafka(cls, msg: Any, incarnation: str = "") -> "RawMessage":
        return cls(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(), msg.headers(), incarnation)


@dataclass
class ParsedMessage:
    """A raw message plus its validated model, or the reason it is invalid."""

    raw: RawMessage
    model: EcommerceEvent | RestaurantOrder | None = None
    error: str | None = None

    @property
    def valid(self) -> bool:
        return self.error is None


def safe_text(value: str) -> str:
    """Text PostgreSQL (TEXT and JSONB) can hold: NUL written as ``\\x00``, a lone
    surrogate as ``\\udXXX``."""
    if "\x00" in value:
        value = value.replace("\x00", "\\x00")
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")


def reason(text: str) -> str:
    """A dead-letter reason: storable text, capped."""
    text = safe_text(text)
    if len(text) > MAX_REASON_CHARS:
        text = f"{text[:MAX_REASON_CHARS]}... ({len(text) - MAX_REASON_CHARS} more characters)"
    return text


_window_cache: tuple[Any, TimestampWindow] | None = None


def default_window() -> TimestampWindow:
    """The settings' window (``EVENT_MAX_FUTURE_SECONDS``, ``EVENT_EARLIEST``)."""
    global _window_cache
    settings = get_settings()
    if _window_cache is None or _window_cache[0] is not settings:
        _window_cache = (settings, TimestampWindow.from_settings(settings))
    return _window_cache[1]


def parse(raw: RawMessage, window: TimestampWindow | None = None) -> ParsedMessage:
    """Validate one message against its topic's contract and the timestamp window
    (default: the settings'); never raises."""
    try:
        return ParsedMessage(raw, parse_message(raw.topic, raw.value, window or default_window()))
    except ContractError as exc:
        return ParsedMessage(raw, error=reason(exc.reason))
    except Exception as exc:  # a contract bug must not stop the pipeline either
        return ParsedMessage(raw, error=reason(f"unexpected validation error: {type(exc).__name__}: {exc}"))


def _as_bytes(value: bytes | str | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace")
    return bytes(value)


def decode_key(key: bytes | str | None) -> str | None:
    """The key as readable, storable text (undecodable bytes as ``\\xNN``)."""
    if key is None:
        return None
    if not isinstance(key, str):
        key = _as_bytes(key).decode("utf-8", errors="backslashreplace")
    return safe_text(key)


def headers_json(headers: Any) -> list[dict] | None:
    """Headers as JSONB-safe ``[{"key": text, "value_b64": base64 | null}]``."""
    if headers is None:
        return None
    try:
        out = []
        for k, v in (headers.items() if isinstance(headers, Mapping) else headers):
            value = _as_bytes(v)
            out.append({"key": decode_key(k if isinstance(k, (str, bytes)) else str(k)),
                        "value_b64": None if value is None else base64.b64encode(value).decode("ascii")})
        return out
    except Exception:  # not a list of pairs: keep what it was, readably
        return [{"key": reason(f"unreadable headers: {headers!r}"), "value_b64": None}]


# --------------------------------------------------------------------------
# results and errors
# --------------------------------------------------------------------------
class DatabaseUnavailable(RuntimeError):
    """The database could not be reached or the transaction could not finish;
    nothing of the batch was committed. Retry later (the writer reconnects)."""


@dataclass
class TopicCounts:
    received: int = 0
    stored: int = 0  # new rows (events / orders)
    duplicates: int = 0  # valid, identical to a stored row
    dead_letters: int = 0  # in dead_letters (new or stored before)
    skipped: int = 0  # offsets the ledger already covers: not written again


@dataclass
class WriteResult:
    topics: dict[str, TopicCounts] = field(default_factory=dict)
    dead_letters: list[ParsedMessage] = field(default_factory=list)  # newly dead-lettered: publish to the DLQ
    skipped: list[ParsedMessage] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)  # table -> rows inserted
    ledger: list[tuple] = field(default_factory=list)  # the ingest_ledger rows written
    db_seconds: float = 0.0
    isolated: bool = False  # the isolating re-run happened
    statements: int = 0  # statements sent by the last attempt (COMMIT not counted)

    def counts(self, topic: str) -> TopicCounts:
        return self.topics.setdefault(topic, TopicCounts())


# --------------------------------------------------------------------------
# rows (COPY text format) and their content hash
# --------------------------------------------------------------------------
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
class _Row:
    """The storable form of one valid message (its first copy in the batch)."""

    index: int  # position in the batch's to-do list
    kind: str  # "e" (event) or "o" (order)
    ident: str
    digest: str  # hex content hash of the normalised row
    line: bytes  # COPY line incl. the hash (events / orders)
    items: list[bytes]


def build_row(index: int, model: EcommerceEvent | RestaurantOrder) -> _Row:
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
    return _Row(index, kind, ident, digest, main + b"\t\\\\x" + digest.encode("ascii"), items)


def _copy(cur, table: str, lines: list[bytes]) -> None:
    if lines:
        cur.copy_expert(f"COPY {table} FROM STDIN", io.BytesIO(b"\n".join(lines) + b"\n"))


# --------------------------------------------------------------------------
# SQL
# --------------------------------------------------------------------------
_TEMP_TABLES = """
CREATE TEMP TABLE IF NOT EXISTS tmp_events (
    event_id UUID, event_type TEXT, ts TIMESTAMPTZ, user_id TEXT, session_id TEXT,
    product_id TEXT, product_name TEXT, category TEXT, price NUMERIC,
    quantity INTEGER, total_amount NUMERIC, payment_method TEXT, search_query TEXT, content_hash BYTEA
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS tmp_orders (
    order_id UUID, ts TIMESTAMPTZ, restaurant_id TEXT, table_number INTEGER, channel TEXT,
    total_amount NUMERIC, payment_method TEXT, item_count INTEGER, content_hash BYTEA
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS tmp_order_items (
    order_id UUID, line_number INTEGER, item_id TEXT, name TEXT, category TEXT,
    quantity INTEGER, unit_price NUMERIC, line_total NUMERIC
) ON COMMIT DELETE ROWS;
"""
_TRUNCATE_TEMP = "TRUNCATE tmp_events, tmp_orders, tmp_order_items"

# Two statements in one round trip: each gets its own snapshot, so the ledger
# read sees whatever a consumer that held the lock before us committed.
_LOCK_AND_COVERAGE = """
SELECT pg_advisory_xact_lock(k) FROM unnest(%(locks)s::bigint[]) AS k;
SELECT b.topic, b.inc, b.p, l.first_offset, l.last_offset
FROM unnest(%(topics)s::text[], %(incs)s::text[], %(parts)s::int[], %(los)s::bigint[], %(his)s::bigint[])
     AS b(topic, inc, p, lo, hi)
JOIN ingest_ledger l ON l.consumer_group = %(group)s AND l.topic = b.topic AND l.topic_incarnation = b.inc
     AND l."partition" = b.p AND int8range(l.first_offset, l.last_offset, '[]') && int8range(b.lo, b.hi, '[]')
"""

# Events, then products and transactions for the events actually inserted.
# Products: the latest catalogue data per product by event time (ordered by
# product_id, so concurrent consumers lock product rows in the same order),
# only overwriting newer-or-equal, different data.
_INSERT_EVENTS = """
WITH ins AS (
    INSERT INTO events (event_id, event_type, "timestamp", user_id, session_id, product_id, search_query,
                        content_hash)
    SELECT event_id, event_type, ts, user_id, session_id, product_id, search_query, content_hash FROM tmp_events
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
), new AS (
    SELECT t.* FROM tmp_events t JOIN ins USING (event_id)
), prod AS (
    INSERT INTO products AS p (product_id, product_name, category, price, catalog_as_of, updated_at)
    SELECT DISTINCT ON (product_id) product_id, product_name, category, price, ts, now()
    FROM new WHERE product_id IS NOT NULL
    ORDER BY product_id, ts DESC
    ON CONFLICT (product_id) DO UPDATE
    SET product_name = EXCLUDED.product_name, category = EXCLUDED.category, price = EXCLUDED.price,
        catalog_as_of = EXCLUDED.catalog_as_of, updated_at = now()
    WHERE (p.catalog_as_of IS NULL OR p.catalog_as_of <= EXCLUDED.catalog_as_of)
      AND (p.product_name, p.category, p.price) IS DISTINCT FROM
          (EXCLUDED.product_name, EXCLUDED.category, EXCLUDED.price)
    RETURNING 1
), tx AS (
    INSERT INTO transactions (transaction_id, event_id, product_id, quantity, total_amount, payment_method,
                              "timestamp")
    SELECT event_id::text, event_id, product_id, quantity, total_amount, payment_method, ts
    FROM new WHERE event_type = 'purchase'
    ON CONFLICT (transaction_id) DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM prod), (SELECT count(*) FROM tx), ARRAY(SELECT event_id::text FROM ins)
"""

_INSERT_ORDERS = """
WITH ins AS (
    INSERT INTO orders (order_id, "timestamp", restaurant_id, table_number, channel, total_amount, payment_method,
                        item_count, content_hash)
    SELECT order_id, ts, restaurant_id, table_number, channel, total_amount, payment_method, item_count,
           content_hash
    FROM tmp_orders
    ON CONFLICT (order_id) DO NOTHING
    RETURNING order_id
), items AS (
    INSERT INTO order_items (order_id, line_number, item_id, name, category, quantity, unit_price, line_total)
    SELECT i.order_id, line_number, item_id, name, category, quantity, unit_price, line_total
    FROM tmp_order_items i JOIN ins USING (order_id)
    ON CONFLICT (order_id, line_number) DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM items), ARRAY(SELECT order_id::text FROM ins)
"""

# Ids not inserted whose stored content differs (rows stored before content
# hashes existed have none and count as identical).
_CONFLICTS = """
SELECT 'e', s.event_id::text FROM events s
JOIN unnest(%(eids)s::uuid[], %(ehashes)s::text[]) AS c(id, h) ON s.event_id = c.id
WHERE s.content_hash <> decode(c.h, 'hex')
UNION ALL
SELECT 'o', s.order_id::text FROM orders s
JOIN unnest(%(oids)s::uuid[], %(ohashes)s::text[]) AS c(id, h) ON s.order_id = c.id
WHERE s.content_hash <> decode(c.h, 'hex')
"""

_INSERT_DEAD_LETTERS = """
INSERT INTO dead_letters (topic, topic_incarnation, "partition", "offset", key, key_bytes, headers, payload,
                          payload_sha256, error)
VALUES %s
ON CONFLICT (topic, topic_incarnation, "partition", "offset", payload_sha256) DO NOTHING
RETURNING topic, topic_incarnation, "partition", "offset", payload_sha256
"""
_DEAD_LETTER_CHUNK_BYTES = 32 << 20  # raw payload bytes per INSERT statement

_INSERT_LEDGER = """
INSERT INTO ingest_ledger (consumer_group, topic, topic_incarnation, "partition", first_offset, last_offset,
                           messages, stored, duplicates, dead_lettered)
VALUES %s
"""


def _dead_letter_key(m: ParsedMessage, incarnation: str) -> tuple:
    """The de-duplication key of a dead letter (its unique constraint)."""
    raw = m.raw
    return (safe_text(str(raw.topic)), incarnation, raw.partition, raw.offset,
            hashlib.sha256(_as_bytes(raw.value) or b"").hexdigest())


def dead_letter_row(m: ParsedMessage, incarnation: str = "", error: str | None = None) -> tuple:
    topic, incarnation, partition, offset, sha = _dead_letter_key(m, incarnation)
    value, key = _as_bytes(m.raw.value), _as_bytes(m.raw.key)
    headers = headers_json(m.raw.headers)
    return (
        topic, incarnation, partition, offset, decode_key(key), None if key is None else psycopg2.Binary(key),
        None if headers is None else Json(headers), None if value is None else psycopg2.Binary(value),
        sha, reason(error or m.error or "invalid"),
    )


def _lock_key(*parts: Any) -> int:
    digest = hashlib.blake2b("\x00".join(map(str, parts)).encode("utf-8", "backslashreplace"), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


class _CountingCursor(psycopg2.extensions.cursor):
    """Counts the statements sent (the per-batch cost the ingest path watches)."""

    statements = 0

    def execute(self, query, vars=None):
        self.statements += 1
        return super().execute(query, vars)

    def copy_expert(self, sql, file, size=8192):
        self.statements += 1
        return super().copy_expert(sql, file, size)


# Errors that mean "the database is unavailable / the transaction could not
# finish": retry the whole batch later. Everything else that happens while
# rows are inserted is blamed on the data and isolated.
_UNAVAILABLE = (psycopg2.OperationalError, psycopg2.InterfaceError, psycopg2.InternalError,
                psycopg2.ProgrammingError)


def _unavailable(exc: BaseException) -> bool:
    # a row beyond a size limit (e.g. of an index entry) is the data's fault
    return isinstance(exc, _UNAVAILABLE) and not isinstance(exc, psycopg2.errors.ProgramLimitExceeded)


class _NeedsIsolation(Exception):
    """The row insert failed for a reason that may be one message's fault."""


# --------------------------------------------------------------------------
# one attempt at one batch
# --------------------------------------------------------------------------
STORED, DUPLICATE = "stored", "duplicate"


class _Attempt:
    """One transaction's worth of work for one batch (state never outlives it)."""

    def __init__(self, writer: "BatchWriter", cur, batch: Sequence[ParsedMessage],
                 incarnations: Mapping[str, str], isolate: bool):
        self.w, self.cur, self.isolate = writer, cur, isolate
        self.batch = batch
        # (topic, incarnation, partition) of each message of the batch
        self.parts = [(m.raw.topic, m.raw.incarnation or incarnations.get(m.raw.topic, ""), m.raw.partition)
                      for m in batch]
        self.todo: list[ParsedMessage] = []
        self.todo_parts: list[tuple] = []
        self.skipped: list[ParsedMessage] = []
        self.covered: dict[tuple, list[tuple[int, int]]] = {}
        self.outcome: dict[int, str] = {}  # todo index -> STORED | DUPLICATE | dead-letter reason
        self.rows_inserted = {"products": 0, "events": 0, "transactions": 0, "orders": 0, "order_items": 0}
        self.new_dead: set[tuple] = set()
        self.ledger: list[tuple] = []
        self.temp_used = False  # the temp tables hold rows of an earlier insert

    # -- 1. ledger coverage ---------------------------------------------------
    def skip_covered(self) -> None:
        spans: dict[tuple, list[int]] = {}
        for part, m in zip(self.parts, self.batch):
            offset, span = m.raw.offset, spans.get(part)
            if span is None:
                spans[part] = [offset, offset]
            elif offset < span[0]:
                span[0] = offset
            elif offset > span[1]:
                span[1] = offset
        keys = sorted(spans)
        self.cur.execute(_LOCK_AND_COVERAGE, {
            "locks": sorted(_lock_key(self.w.group, *k) for k in keys), "group": self.w.group,
            "topics": [k[0] for k in keys], "incs": [k[1] for k in keys], "parts": [k[2] for k in keys],
            "los": [spans[k][0] for k in keys], "his": [spans[k][1] for k in keys]})
        for topic, inc, p, lo, hi in self.cur.fetchall():
            self.covered.setdefault((topic, inc, p), []).append((lo, hi))
        seen: set[tuple] = set()
        for part, m in zip(self.parts, self.batch):
            key, ranges = (part, m.raw.offset), self.covered.get(part)
            if key in seen or (ranges and any(lo <= m.raw.offset <= hi for lo, hi in ranges)):
                self.skipped.append(m)  # committed before (or the same offset twice in this batch)
            else:
                seen.add(key)
                self.todo.append(m)
                self.todo_parts.append(part)

    # -- 2. valid rows --------------------------------------------------------
    def store_valid(self) -> None:
        pending: list[_Row] = []
        for i, m in enumerate(self.todo):
            if not m.valid:
                self.outcome[i] = reason(m.error or "invalid")
                continue
            try:
                pending.append(build_row(i, m.model))
            except Exception as exc:
                self.outcome[i] = reason(f"cannot be stored: {_describe(exc)}")
        while pending:  # more than one round only if a first copy was dead-lettered
            pending = self._store_round(pending)

    def _store_round(self, pending: list[_Row]) -> list[_Row]:
        """Store the first copy of each id; settle the later copies against it.
        Returns the later copies still open: different from a first copy that
        was not stored (they get a round of their own)."""
        firsts: dict[tuple, _Row] = {}
        followers: list[tuple[_Row, _Row]] = []
        for row in pending:
            first = firsts.setdefault((row.kind, row.ident), row)
            if first is not row:
                followers.append((row, first))
        rows = list(firsts.values())
        inserted = self._insert_isolating(rows) if self.isolate else self._insert(rows)
        conflicts = self._conflicts([r for r in rows if (r.kind, r.ident) not in inserted
                                     and r.index not in self.outcome])
        for r in rows:
            if r.index not in self.outcome:
                key = (r.kind, r.ident)
                self.outcome[r.index] = STORED if key in inserted else CONFLICT if key in conflicts else DUPLICATE
        still_open = []
        for row, first in followers:
            fate, same = self.outcome[first.index], first.digest == row.digest
            if fate in (STORED, DUPLICATE):
                self.outcome[row.index] = DUPLICATE if same else CONFLICT
            elif same:
                self.outcome[row.index] = fate  # the same content fails the same way
            else:
                still_open.append(row)
        return still_open

    def _insert(self, rows: list[_Row]) -> set[tuple]:
        """COPY ``rows`` into the temp tables and move them; the keys inserted."""
        if self.temp_used:
            self.cur.execute(_TRUNCATE_TEMP)
        self.temp_used = True
        inserted: set[tuple] = set()
        events = [r.line for r in rows if r.kind == "e"]
        orders = [r for r in rows if r.kind == "o"]
        if events:
            _copy(self.cur, "tmp_events", events)
            self.cur.execute(_INSERT_EVENTS)
            products, transactions, ids = self.cur.fetchone()
            self._count(products=products, transactions=transactions, events=len(ids))
            inserted.update(("e", i) for i in ids)
        if orders:
            _copy(self.cur, "tmp_orders", [r.line for r in orders])
            _copy(self.cur, "tmp_order_items", [line for r in orders for line in r.items])
            self.cur.execute(_INSERT_ORDERS)
            items, ids = self.cur.fetchone()
            self._count(order_items=items, orders=len(ids))
            inserted.update(("o", i) for i in ids)
        return inserted

    def _count(self, **rows: int) -> None:
        for table, n in rows.items():
            self.rows_inserted[table] += n

    def _insert_isolating(self, rows: list[_Row]) -> set[tuple]:
        """Insert under a savepoint; on failure split in halves until the culprits
        are single messages, which become dead letters."""
        if not rows:
            return set()
        saved = dict(self.rows_inserted)
        self.cur.execute("SAVEPOINT isolate")
        try:
            inserted = self._insert(rows)
        except Exception as exc:
            if _unavailable(exc):
                raise
            self.cur.execute("ROLLBACK TO SAVEPOINT isolate")
            self.rows_inserted = saved
            if len(rows) == 1:
                by = "rejected by the database" if isinstance(exc, psycopg2.Error) else "cannot be stored"
                self.outcome[rows[0].index] = reason(f"{by}: {_describe(exc)}")
                return set()
            mid = len(rows) // 2
            return self._insert_isolating(rows[:mid]) | self._insert_isolating(rows[mid:])
        self.cur.execute("RELEASE SAVEPOINT isolate")
        return inserted

    def _conflicts(self, rows: list[_Row]) -> set[tuple]:
        if not rows:
            return set()
        ev = [r for r in rows if r.kind == "e"]
        od = [r for r in rows if r.kind == "o"]
        self.cur.execute(_CONFLICTS, {"eids": [r.ident for r in ev], "ehashes": [r.digest for r in ev],
                                      "oids": [r.ident for r in od], "ohashes": [r.digest for r in od]})
        return {(kind, ident) for kind, ident in self.cur.fetchall()}

    # -- 3. dead letters, 4. ledger ---------------------------------------------
    def store_dead_letters(self) -> None:
        chunk: list[tuple] = []
        size = 0
        for m, part, why in self._dead():
            chunk.append(dead_letter_row(m, part[1], why))
            size += len(m.raw.value or b"") + len(m.raw.key or b"")
            if size >= _DEAD_LETTER_CHUNK_BYTES:
                self._insert_dead_letters(chunk)
                chunk, size = [], 0
        self._insert_dead_letters(chunk)

    def _insert_dead_letters(self, rows: list[tuple]) -> None:
        if rows:
            for topic, inc, p, off, sha in execute_values(self.cur, _INSERT_DEAD_LETTERS, rows,
                                                           page_size=len(rows), fetch=True):
                self.new_dead.add((topic, inc, p, off, sha.strip()))

    def write_ledger(self) -> None:
        by_part: dict[tuple, list[tuple[int, str]]] = {}
        for i, (m, part) in enumerate(zip(self.todo, self.todo_parts)):
            by_part.setdefault(part, []).append((m.raw.offset, self.outcome[i]))
        for part, entries in sorted(by_part.items()):
            entries.sort()
            ranges = self.covered.get(part, ())
            run: list[tuple[int, str]] = []
            for entry in entries:
                if run and any(run[-1][0] < lo < entry[0] for lo, _ in ranges):
                    self.ledger.append(self._ledger_row(part, run))  # a covered range lies between
                    run = []
                run.append(entry)
            self.ledger.append(self._ledger_row(part, run))
        if self.ledger:
            try:
                execute_values(self.cur, _INSERT_LEDGER, self.ledger, page_size=len(self.ledger))
            except psycopg2.IntegrityError as exc:
                raise DatabaseUnavailable(f"another consumer recorded some of these offsets meanwhile: "
                                          f"{str(exc).strip()}") from exc

    def _ledger_row(self, part: tuple, run: list[tuple[int, str]]) -> tuple:
        stored = sum(1 for _, o in run if o == STORED)
        duplicates = sum(1 for _, o in run if o == DUPLICATE)
        return (self.w.group, *part, run[0][0], run[-1][0], len(run), stored, duplicates,
                len(run) - stored - duplicates)

    # -- result ---------------------------------------------------------------
    def result(self) -> WriteResult:
        """Call after the commit: marks the dead letters' ``error``."""
        result = WriteResult(rows=self.rows_inserted, ledger=self.ledger, isolated=self.isolate,
                             skipped=self.skipped, statements=self.cur.statements)
        for m in self.batch:
            result.counts(m.raw.topic).received += 1
        for m in self.skipped:
            result.counts(m.raw.topic).skipped += 1
        for i, m in enumerate(self.todo):
            fate = self.outcome[i]
            if fate == STORED:
                result.counts(m.raw.topic).stored += 1
            elif fate == DUPLICATE:
                result.counts(m.raw.topic).duplicates += 1
        for m, part, why in self._dead():
            result.counts(m.raw.topic).dead_letters += 1
            m.error = why
            if _dead_letter_key(m, part[1]) in self.new_dead:
                result.dead_letters.append(m)
        return result

    def _dead(self) -> Iterable[tuple[ParsedMessage, tuple, str]]:
        for i, (m, part) in enumerate(zip(self.todo, self.todo_parts)):
            if self.outcome[i] not in (STORED, DUPLICATE):
                yield m, part, self.outcome[i]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, psycopg2.Error):
        diag = getattr(exc, "diag", None)
        return (getattr(diag, "message_primary", None) or str(exc)).strip()
    if isinstance(exc, Unstorable):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------
# the writer
# --------------------------------------------------------------------------
class BatchWriter:
    """Writes parsed batches into PostgreSQL, one transaction per batch, recording
    each in ``ingest_ledger`` under consumer group ``group``."""

    def __init__(self, url: str, *, group: str = DEFAULT_GROUP, window: TimestampWindow | None = None,
                 application_name: str = "salespulse-consumer", connect_timeout: int = 5,
                 statement_timeout_ms: int = 60_000):
        self.url = url
        self.group = group
        self.window = window
        self.statement_timeout_ms = statement_timeout_ms
        self.application_name = application_name
        self.connect_timeout = connect_timeout
        self._conn: psycopg2.extensions.connection | None = None

    # -- connection -----------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    def _connection(self) -> psycopg2.extensions.connection:
        if not self.connected:
            conn = psycopg2.connect(
                self.url, application_name=self.application_name, connect_timeout=self.connect_timeout,
                keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3,
                # a hung statement becomes a retryable error instead of stalling the
                # consumer past max.poll.interval.ms
                options=f"-c statement_timeout={self.statement_timeout_ms}",
            )
            with conn.cursor() as cur:
                cur.execute("SET TIME ZONE 'UTC'")
                cur.execute(_TEMP_TABLES)
            conn.commit()
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None

    def ping(self) -> bool:
        try:
            conn = self._connection()
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
            conn.rollback()
            return True
        except psycopg2.Error:
            self.close()
            return False

    def _rollback(self) -> None:
        try:
            if self._conn is not None:
                self._conn.rollback()
        except Exception:
            self.close()

    # -- writing ---------------------------------------------------------------
    def write_raw(self, messages: Iterable[RawMessage], *,
                  incarnations: Mapping[str, str] | None = None) -> WriteResult:
        """Parse (with this writer's window) and write (for tests and tools)."""
        return self.write([parse(m, self.window) for m in messages], incarnations=incarnations)

    def write(self, batch: Sequence[ParsedMessage], *,
              incarnations: Mapping[str, str] | None = None) -> WriteResult:
        """Write one batch in one transaction (see the module docstring). A
        message's incarnation is ``raw.incarnation``, else ``incarnations[topic]``,
        else ''. Raises only :class:`DatabaseUnavailable` (nothing committed)."""
        started = time.perf_counter()
        if not batch:
            return WriteResult()
        incarnations = incarnations or {}
        try:
            try:
                result = self._write_once(batch, incarnations, isolate=False)
            except _NeedsIsolation as exc:
                log.warning("batch rejected, isolating the messages at fault", extra={
                    "event": "batch_isolation", "error": reason(_describe(exc.__cause__))[:500],
                    "batch_size": len(batch)})
                self._rollback()
                result = self._write_once(batch, incarnations, isolate=True)
        except DatabaseUnavailable:
            self._rollback()
            raise
        except _UNAVAILABLE as exc:
            self._rollback()  # closes a broken connection (the next call reconnects)
            raise DatabaseUnavailable(str(exc).strip() or type(exc).__name__) from exc
        except Exception as exc:  # a bug outside the row insert: hold the batch, never drop it
            log.exception("unexpected error writing a batch", extra={"event": "write_error"})
            self.close()
            raise DatabaseUnavailable(f"unexpected error: {_describe(exc)}") from exc
        result.db_seconds = time.perf_counter() - started
        return result

    def _write_once(self, batch: Sequence[ParsedMessage], incarnations: Mapping[str, str],
                    isolate: bool) -> WriteResult:
        conn = self._connection()
        with conn.cursor(cursor_factory=_CountingCursor) as cur:
            attempt = _Attempt(self, cur, batch, incarnations, isolate)
            attempt.skip_covered()
            try:
                attempt.store_valid()
            except Exception as exc:
                if isolate or _unavailable(exc):
                    raise
                raise _NeedsIsolation() from exc
            attempt.store_dead_letters()
            attempt.write_ledger()
        self._commit(conn)
        return attempt.result()

    def _commit(self, conn) -> None:
        conn.commit()
