"""The batch writer: parse raw messages, write one batch in ONE transaction.

Usable without Kafka (unit tests, replay tools): give it :class:`RawMessage`
objects (or anything with ``topic/partition/offset/key/value/headers``).

* Every message is validated with :func:`salespulse.contracts.parse_message`
  (the single source of truth shared with the producer). Invalid ones become
  dead letters (``dead_letters`` row with the raw bytes, their SHA-256 and a
  readable reason) in the same transaction as the valid rows of the batch.
* Valid rows are COPYed into per-connection temp tables, then moved with
  ``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` on the natural keys
  (event_id, transaction_id, order_id, (order_id, line_number)), so a
  re-delivered message is a no-op. Products are upserted with their latest
  name/category/price (by event time, ``products.catalog_as_of``).
* If PostgreSQL rejects a row the contract let through (e.g. a value out of a
  column's range), the batch is re-run message by message under savepoints:
  the rejected messages become dead letters, the rest is stored.
* Connection-level failures raise :class:`DatabaseUnavailable` (the caller
  retries with backoff; the writer reconnects on the next call).
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2.extras import execute_values

from salespulse.contracts import (
    ECOMMERCE_TOPIC,
    RESTAURANT_TOPIC,
    ContractError,
    EcommerceEvent,
    RestaurantOrder,
    parse_message,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------
# messages
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class RawMessage:
    """A Kafka message as the writer needs it (no Kafka client required)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None = None

    @classmethod
    def from_kafka(cls, msg: Any) -> "RawMessage":
        return cls(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(), msg.headers())


@dataclass
class ParsedMessage:
    """A raw message plus its validated model, or the reason it is invalid."""

    raw: RawMessage
    model: EcommerceEvent | RestaurantOrder | None = None
    error: str | None = None

    @property
    def valid(self) -> bool:
        return self.error is None


def parse(raw: RawMessage) -> ParsedMessage:
    """Validate one message against its topic's contract (never raises)."""
    try:
        return ParsedMessage(raw, parse_message(raw.topic, raw.value))
    except ContractError as exc:
        return ParsedMessage(raw, error=exc.reason)
    except Exception as exc:  # a contract bug must not stop the pipeline either
        return ParsedMessage(raw, error=f"unexpected validation error: {type(exc).__name__}: {exc}")


def decode_key(key: bytes | str | None) -> str | None:
    if key is None:
        return None
    if isinstance(key, str):
        return key
    return key.decode("utf-8", errors="backslashreplace")


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
    duplicates: int = 0  # valid, but already stored (re-delivery)
    dead_letters: int = 0


@dataclass
class WriteResult:
    topics: dict[str, TopicCounts] = field(default_factory=dict)
    dead_letters: list[ParsedMessage] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)  # table -> rows inserted
    db_seconds: float = 0.0
    isolated: bool = False  # the message-by-message fallback ran

    def counts(self, topic: str) -> TopicCounts:
        return self.topics.setdefault(topic, TopicCounts())


# --------------------------------------------------------------------------
# COPY helpers (text format)
# --------------------------------------------------------------------------
_ESCAPE = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_NULL = "\\N"


def _t(value: str | None) -> str:
    return _NULL if value is None else value.translate(_ESCAPE)


def _n(value: Any) -> str:
    return _NULL if value is None else str(value)


_TEMP_TABLES = """
CREATE TEMP TABLE IF NOT EXISTS tmp_events (
    event_id UUID, event_type TEXT, ts TIMESTAMPTZ, user_id TEXT, session_id TEXT,
    product_id TEXT, product_name TEXT, category TEXT, price NUMERIC,
    quantity INTEGER, total_amount NUMERIC, payment_method TEXT, search_query TEXT
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS tmp_orders (
    order_id UUID, ts TIMESTAMPTZ, restaurant_id TEXT, table_number INTEGER, channel TEXT,
    total_amount NUMERIC, payment_method TEXT, item_count INTEGER
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS tmp_order_items (
    order_id UUID, line_number INTEGER, item_id TEXT, name TEXT, category TEXT,
    quantity INTEGER, unit_price NUMERIC, line_total NUMERIC
) ON COMMIT DELETE ROWS;
"""

_COPY_EVENTS = "COPY tmp_events FROM STDIN"
_COPY_ORDERS = "COPY tmp_orders FROM STDIN"
_COPY_ITEMS = "COPY tmp_order_items FROM STDIN"

# Latest catalogue data per product within the batch (ordered by product_id, so
# concurrent consumers lock product rows in the same order: no deadlocks), and
# only overwrite a stored product with newer (by event time), different data.
_UPSERT_PRODUCTS = """
INSERT INTO products AS p (product_id, product_name, category, price, catalog_as_of, updated_at)
SELECT DISTINCT ON (product_id) product_id, product_name, category, price, ts, now()
FROM tmp_events WHERE product_id IS NOT NULL
ORDER BY product_id, ts DESC
ON CONFLICT (product_id) DO UPDATE
SET product_name = EXCLUDED.product_name, category = EXCLUDED.category, price = EXCLUDED.price,
    catalog_as_of = EXCLUDED.catalog_as_of, updated_at = now()
WHERE (p.catalog_as_of IS NULL OR p.catalog_as_of <= EXCLUDED.catalog_as_of)
  AND (p.product_name, p.category, p.price) IS DISTINCT FROM
      (EXCLUDED.product_name, EXCLUDED.category, EXCLUDED.price)
"""

_INSERT_EVENTS = """
INSERT INTO events (event_id, event_type, "timestamp", user_id, session_id, product_id, search_query)
SELECT event_id, event_type, ts, user_id, session_id, product_id, search_query FROM tmp_events
ON CONFLICT (event_id) DO NOTHING
"""

_INSERT_TRANSACTIONS = """
INSERT INTO transactions (transaction_id, event_id, product_id, quantity, total_amount, payment_method, "timestamp")
SELECT event_id::text, event_id, product_id, quantity, total_amount, payment_method, ts
FROM tmp_events WHERE event_type = 'purchase'
ON CONFLICT (transaction_id) DO NOTHING
"""

_INSERT_ORDERS = """
INSERT INTO orders (order_id, "timestamp", restaurant_id, table_number, channel, total_amount, payment_method, item_count)
SELECT order_id, ts, restaurant_id, table_number, channel, total_amount, payment_method, item_count FROM tmp_orders
ON CONFLICT (order_id) DO NOTHING
"""

_INSERT_ITEMS = """
INSERT INTO order_items (order_id, line_number, item_id, name, category, quantity, unit_price, line_total)
SELECT order_id, line_number, item_id, name, category, quantity, unit_price, line_total FROM tmp_order_items
ON CONFLICT (order_id, line_number) DO NOTHING
"""

_INSERT_DEAD_LETTERS = """
INSERT INTO dead_letters (topic, "partition", "offset", key, payload, payload_sha256, error)
VALUES %s
ON CONFLICT (topic, "partition", "offset", payload_sha256) DO NOTHING
"""

_TRUNCATE_TEMP = "TRUNCATE tmp_events, tmp_orders, tmp_order_items"


def _event_line(e: EcommerceEvent) -> str:
    p = e.product
    return "\t".join((
        str(e.event_id), e.event_type, e.timestamp.isoformat(), _t(e.user_id), _t(e.session_id),
        _NULL if p is None else _t(p.id), _NULL if p is None else _t(p.name),
        _NULL if p is None else _t(p.category), _NULL if p is None else str(p.price),
        _n(e.quantity), _n(e.total_amount), _t(e.payment_method), _t(e.search_query),
    ))


def _order_lines(o: RestaurantOrder) -> tuple[str, list[str]]:
    oid = str(o.order_id)
    items = [
        "\t".join((oid, str(i), _t(it.item_id), _t(it.name), _t(it.category), str(it.quantity),
                   str(it.unit_price), str(it.line_total)))
        for i, it in enumerate(o.items)
    ]
    order = "\t".join((
        oid, o.timestamp.isoformat(), _t(o.restaurant_id), _n(o.table_number), o.channel,
        str(o.total_amount), _t(o.payment_method), str(sum(it.quantity for it in o.items)),
    ))
    return order, items


def _copy(cur, sql: str, lines: list[str]) -> None:
    if lines:
        lines.append("")
        cur.copy_expert(sql, io.StringIO("\n".join(lines)))


def dead_letter_row(m: ParsedMessage) -> tuple:
    payload = m.raw.value or b""
    return (
        m.raw.topic, m.raw.partition, m.raw.offset, decode_key(m.raw.key),
        psycopg2.Binary(m.raw.value) if m.raw.value is not None else None,
        hashlib.sha256(payload).hexdigest(), m.error or "invalid",
    )


# Errors that say "this data cannot be stored" (message-specific) rather than
# "the database is unavailable" (retry the whole batch later).
_DATA_ERRORS = (psycopg2.DataError, psycopg2.IntegrityError)
_TRANSIENT_ERRORS = (psycopg2.errors.DeadlockDetected, psycopg2.errors.SerializationFailure)


# --------------------------------------------------------------------------
# the writer
# --------------------------------------------------------------------------
class BatchWriter:
    """Writes parsed batches into PostgreSQL, one transaction per batch."""

    def __init__(self, url: str, *, application_name: str = "salespulse-consumer", connect_timeout: int = 5,
                 statement_timeout_ms: int = 60_000):
        self.url = url
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

    # -- writing ---------------------------------------------------------------
    def write_raw(self, messages: Iterable[RawMessage]) -> WriteResult:
        """Parse and write (convenience for tests and tools)."""
        return self.write([parse(m) for m in messages])

    def write(self, batch: Sequence[ParsedMessage]) -> WriteResult:
        """Write one batch in one transaction. Raises :class:`DatabaseUnavailable`
        if nothing could be committed (connection lost, DB down, deadlock)."""
        started = time.perf_counter()
        result = WriteResult()
        valid: list[ParsedMessage] = []
        for m in batch:
            counts = result.counts(m.raw.topic)
            counts.received += 1
            if m.valid:
                valid.append(m)
            else:
                result.dead_letters.append(m)
        try:
            conn = self._connection()
            try:
                with conn.cursor() as cur:
                    try:
                        rows = self._insert(cur, valid)
                    except _DATA_ERRORS as exc:
                        conn.rollback()
                        log.warning("batch rejected by the database, isolating messages",
                                    extra={"event": "batch_isolation", "error": str(exc).strip()[:500],
                                           "batch_size": len(batch)})
                        rows = self._insert_isolated(cur, valid, result)
                        result.isolated = True
                    if result.dead_letters:
                        execute_values(cur, _INSERT_DEAD_LETTERS,
                                       [dead_letter_row(m) for m in result.dead_letters], page_size=1000)
                conn.commit()
            except BaseException:
                try:
                    conn.rollback()
                except Exception:
                    pass
                raise
        except _TRANSIENT_ERRORS as exc:
            raise DatabaseUnavailable(f"transient database error: {str(exc).strip()}") from exc
        except (psycopg2.OperationalError, psycopg2.InterfaceError, psycopg2.ProgrammingError,
                psycopg2.InternalError) as exc:
            self.close()
            raise DatabaseUnavailable(str(exc).strip() or type(exc).__name__) from exc
        except psycopg2.Error as exc:  # anything else: still not committed, retry later
            self.close()
            raise DatabaseUnavailable(f"{type(exc).__name__}: {str(exc).strip()}") from exc

        result.rows = rows
        for m in result.dead_letters:
            result.counts(m.raw.topic).dead_letters += 1
        stored = {ECOMMERCE_TOPIC.name: rows.get("events", 0), RESTAURANT_TOPIC.name: rows.get("orders", 0)}
        valid_per_topic: dict[str, int] = {}
        for m in valid:
            valid_per_topic[m.raw.topic] = valid_per_topic.get(m.raw.topic, 0) + 1
        for topic, n_valid in valid_per_topic.items():
            c = result.counts(topic)
            c.stored = stored.get(topic, 0)
            c.duplicates = n_valid - c.stored
        result.db_seconds = time.perf_counter() - started
        return result

    def _insert(self, cur, valid: Sequence[ParsedMessage]) -> dict[str, int]:
        """COPY the valid rows into temp tables and move them with idempotent inserts."""
        event_lines: list[str] = []
        order_lines: list[str] = []
        item_lines: list[str] = []
        seen_orders: set = set()
        for m in valid:
            model = m.model
            if isinstance(model, EcommerceEvent):
                event_lines.append(_event_line(model))
            elif isinstance(model, RestaurantOrder):
                if model.order_id in seen_orders:  # the first copy of an order wins, items included
                    continue
                seen_orders.add(model.order_id)
                order, items = _order_lines(model)
                order_lines.append(order)
                item_lines.extend(items)
        rows = {"products": 0, "events": 0, "transactions": 0, "orders": 0, "order_items": 0}
        if event_lines:
            _copy(cur, _COPY_EVENTS, event_lines)
            cur.execute(_UPSERT_PRODUCTS)
            rows["products"] = cur.rowcount
            cur.execute(_INSERT_EVENTS)
            rows["events"] = cur.rowcount
            cur.execute(_INSERT_TRANSACTIONS)
            rows["transactions"] = cur.rowcount
        if order_lines:
            _copy(cur, _COPY_ORDERS, order_lines)
            _copy(cur, _COPY_ITEMS, item_lines)
            cur.execute(_INSERT_ORDERS)
            rows["orders"] = cur.rowcount
            cur.execute(_INSERT_ITEMS)
            rows["order_items"] = cur.rowcount
        return rows

    def _insert_isolated(self, cur, valid: Sequence[ParsedMessage], result: WriteResult) -> dict[str, int]:
        """Message by message under savepoints: the ones PostgreSQL rejects become
        dead letters (reason = the database's message), the others are stored."""
        totals: dict[str, int] = {}
        cur.execute(_TRUNCATE_TEMP)
        for m in valid:
            cur.execute("SAVEPOINT one_message")
            try:
                rows = self._insert(cur, [m])
            except _DATA_ERRORS as exc:
                cur.execute("ROLLBACK TO SAVEPOINT one_message")
                reason = (getattr(exc.diag, "message_primary", None) or str(exc)).strip()
                m.error = f"rejected by the database: {reason}"
                m.model = None
                result.dead_letters.append(m)
                continue
            cur.execute("RELEASE SAVEPOINT one_message")
            cur.execute(_TRUNCATE_TEMP)
            for table, n in rows.items():
                totals[table] = totals.get(table, 0) + n
        return totals
