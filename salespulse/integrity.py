"""Database-level proofs that ingestion lost nothing and wrote nothing twice.

Two questions, each one SQL query that the tests, ``salespulse audit`` and the
Dagster asset checks all run:

* ``LEDGER_GAPS_SQL`` — is ``ingest_ledger`` contiguous? Per (consumer group,
  topic, topic incarnation, partition), ordered by first offset, every range
  must start right after the previous one ends, the first one right after the
  stream's trimmed range (retention, sql/130). A gap means offsets that were
  committed but never written (or dead-lettered); an overlap means offsets
  written twice (the consumer's per-stream lock and coverage read prevent
  them, the primary key refuses two ranges from one offset; this finds any
  other).
* ``CONSISTENCY_SQL`` — do the parent and child tables agree? ``events`` vs
  ``transactions`` (every purchase has its transaction and nothing else has
  one, with the same timestamp) and ``orders`` vs ``order_items`` (every order
  has items, ``item_count`` and ``total_amount`` match their sums). The writer
  only adds child rows for parents it inserted in the same transaction, so any
  row here is a bug (or a hand edit).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Iterable

MINUTE = timedelta(minutes=1)

def _gaps(source: str, slice_column: str = "", key: str = 'consumer_group, topic, topic_incarnation, "partition"') -> str:
    """Gaps/overlaps between consecutive ranges of ``source`` (columns ``key``,
    first_offset, last_offset), per stream (and per ``slice_column`` if given)."""
    by_slice = f"{slice_column}, " if slice_column else ""
    return f"""
SELECT {key}, expected_first, found_first
FROM (
    SELECT {key}, first_offset AS found_first,
           lag(last_offset) OVER w + 1 AS expected_first
    FROM {source}
    WINDOW w AS (PARTITION BY {by_slice}{key}
                 ORDER BY first_offset, last_offset)
) ranges
WHERE expected_first IS NOT NULL AND found_first <> expected_first
"""


# The ledger (sql/130_compact_ledger.sql): per stream, its ranges and its
# trimmed range (the prefix retention deleted after finding it contiguous),
# so a range that does not continue the trimmed one is a gap or an overlap.
_GAPS = _gaps("ingest_ledger")
_GAPS_ORDER = 'ORDER BY consumer_group, topic, topic_incarnation, "partition", found_first\n'
LEDGER_GAPS_SQL = _GAPS + _GAPS_ORDER

# A ledger slice: one stream's ranges whose first offset is in [lo, hi], plus
# the range just before and the one just after (primary key of
# ingest_ledger_ranges; the trimmed range is a stream's first span): consecutive
# in the stream's order, so every gap between two of them is a real gap.
_SLICE_ROWS = """(
    SELECT s.slice, l.* FROM slices s JOIN ingest_ledger_spans l
        ON l.stream = s.stream AND l.first_offset BETWEEN s.lo AND s.hi
    UNION
    SELECT s.slice, b.* FROM slices s CROSS JOIN LATERAL (
        SELECT l.* FROM ingest_ledger_spans l WHERE l.stream = s.stream AND l.first_offset < s.lo
        ORDER BY l.first_offset DESC LIMIT 1) b
    UNION
    SELECT s.slice, a.* FROM slices s CROSS JOIN LATERAL (
        SELECT l.* FROM ingest_ledger_spans l WHERE l.stream = s.stream AND l.first_offset > s.hi
        ORDER BY l.first_offset LIMIT 1) a
) sliced"""
# Slices: per stream, the ranges recorded after %(since)s (their lowest and
# highest first offset), and the given ones (%(keep_*)s arrays: gaps found
# before, looked at again until they are filled).
LEDGER_INCREMENT_GAPS_SQL = f"""
WITH recent AS (
    SELECT stream, min(first_offset) AS lo, max(first_offset) AS hi
    FROM ingest_ledger_ranges WHERE recorded_at > %(since)s GROUP BY 1
), slices AS (
    SELECT row_number() OVER () AS slice, * FROM (
        SELECT stream, lo, hi FROM recent
        UNION ALL
        SELECT st.id, k.first, k.first
        FROM unnest(%(keep_group)s::text[], %(keep_topic)s::text[], %(keep_incarnation)s::text[],
                    %(keep_partition)s::int[], %(keep_first)s::bigint[]) AS k(g, t, i, p, first)
        JOIN ingest_streams st ON st.consumer_group = k.g AND st.topic = k.t AND st.topic_incarnation = k.i
                              AND st."partition" = k.p
    ) k
)
SELECT DISTINCT st.consumer_group, st.topic, st.topic_incarnation, st."partition", g.expected_first, g.found_first
FROM ({_gaps(_SLICE_ROWS, "slice", "stream")}) g JOIN ingest_streams st ON st.id = g.stream
{_GAPS_ORDER}"""
LEDGER_INCREMENT_COUNT_SQL = """
SELECT s.topic, count(*), COALESCE(sum(r.stored + r.duplicates + r.dead_lettered), 0)
FROM ingest_ledger_ranges r JOIN ingest_streams s ON s.id = r.stream
WHERE r.recorded_at > %(since)s GROUP BY s.topic
"""

# Time window on the parent's (or the child's) timestamp: NULL = unbounded.
_IN_WINDOW = "(%(since)s::timestamptz IS NULL OR {ts} >= %(since)s) AND (%(until)s::timestamptz IS NULL OR {ts} < %(until)s)"


def _window(ts: str) -> str:
    return _IN_WINDOW.format(ts=ts)


def _in_ranges(table: str, ranges: str) -> str:
    """``table``'s rows whose event time is in one of the ``ranges`` (a
    relation of disjoint ``[lo, hi)``): an index (or partition) range each."""
    return f"""(SELECT x.* FROM {ranges} AS r(lo, hi) JOIN {table} x ON x."timestamp" >= r.lo AND x."timestamp" < r.hi)"""


# One body, two row sources: the whole tables (or one event-time window of
# them) for `salespulse audit`, or event-time ranges for the incremental check.
# The last column is the offending row's event time.
_CONSISTENCY = """
WITH checked_events AS ({events}), checked_transactions AS ({transactions}), checked_orders AS ({orders})
SELECT 'purchase_without_transaction', 'events', e.event_id::text,
       'purchase event ' || e.event_id || ' has no transaction', e."timestamp"
FROM checked_events e
WHERE e.event_type = 'purchase'
  AND NOT EXISTS (SELECT 1 FROM {transaction_of_event} t WHERE t.event_id = e.event_id)
UNION ALL
SELECT CASE WHEN e.event_id IS NULL THEN 'transaction_without_event'
            WHEN e.event_type <> 'purchase' THEN 'transaction_event_not_purchase'
            ELSE 'transaction_timestamp_mismatch' END,
       'transactions', t.transaction_id,
       CASE WHEN e.event_id IS NULL THEN 'transaction ' || t.transaction_id || ': event ' || t.event_id || ' missing'
            WHEN e.event_type <> 'purchase' THEN 'transaction ' || t.transaction_id || ': event is a ' || e.event_type
            ELSE 'transaction ' || t.transaction_id || ' at ' || t."timestamp" || ', its event at ' || e."timestamp"
       END,
       t."timestamp"
FROM checked_transactions t {event_of_transaction}
WHERE e.event_id IS NULL OR e.event_type <> 'purchase' OR e."timestamp" <> t."timestamp"
UNION ALL
SELECT CASE WHEN i.order_id IS NULL THEN 'order_without_items'
            WHEN o.item_count <> i.quantity THEN 'order_item_count_mismatch'
            ELSE 'order_total_mismatch' END,
       'orders', o.order_id::text,
       CASE WHEN i.order_id IS NULL THEN 'order ' || o.order_id || ' has no items'
            WHEN o.item_count <> i.quantity
                THEN 'item_count ' || o.item_count || ' != sum of item quantities ' || i.quantity
            ELSE 'total_amount ' || o.total_amount || ' != sum of line totals ' || i.line_total
       END,
       o."timestamp"
FROM checked_orders o
LEFT JOIN (SELECT order_id, sum(quantity) AS quantity, sum(line_total) AS line_total
           FROM order_items {items_of_orders} GROUP BY order_id) i ON i.order_id = o.order_id
WHERE i.order_id IS NULL OR o.item_count <> i.quantity OR o.total_amount <> i.line_total
ORDER BY 1, 2, 3
"""

CONSISTENCY_SQL = _CONSISTENCY.format(
    events=f"""SELECT * FROM events e WHERE {_window('e."timestamp"')}""",
    transactions=f"""SELECT * FROM transactions t WHERE {_window('t."timestamp"')}""",
    orders=f"""SELECT * FROM orders o WHERE {_window('o."timestamp"')}""",
    transaction_of_event="transactions",
    event_of_transaction="LEFT JOIN events e ON e.event_id = t.event_id",
    items_of_orders="",
)

# The incremental form: rows whose event time is in %(ev_lo)s/%(ev_hi)s
# (events, transactions) or %(or_lo)s/%(or_hi)s (orders and their items).
# A purchase's transaction is looked for in the same ranges (transactions has
# no index on event_id): one whose time is elsewhere shows as
# purchase_without_transaction (`salespulse audit` names it a mismatch).
# A transaction's event: among the checked events (same ranges: pruned, hashed),
# else (a violation: missing, or at another time) found through event_keys (its
# partition key, sql/100) in its own partition. LIMIT keeps that lookup a
# subquery (not flattened into a join), so "near.event_id IS NULL" is a
# one-time filter: it runs for the transactions whose event is elsewhere only.
_EVENT_NEAR_OR_FAR = """
LEFT JOIN checked_events near ON near.event_id = t.event_id
LEFT JOIN LATERAL (SELECT x.event_id, x.event_type, x."timestamp"
                   FROM event_keys k JOIN events x ON x."timestamp" = k."timestamp" AND x.event_id = k.event_id
                   WHERE near.event_id IS NULL AND k.event_id = t.event_id LIMIT 1) far ON true
CROSS JOIN LATERAL (SELECT COALESCE(near.event_id, far.event_id) AS event_id,
                           COALESCE(near.event_type, far.event_type) AS event_type,
                           COALESCE(near."timestamp", far."timestamp") AS "timestamp") e"""
_EVENT_RANGES = "unnest(%(ev_lo)s::timestamptz[], %(ev_hi)s::timestamptz[])"
_ORDER_RANGES = "unnest(%(or_lo)s::timestamptz[], %(or_hi)s::timestamptz[])"
CONSISTENCY_IN_RANGES_SQL = _CONSISTENCY.format(
    events=f"SELECT * FROM {_in_ranges('events', _EVENT_RANGES)} e",
    transactions=f"SELECT * FROM {_in_ranges('transactions', _EVENT_RANGES)} t",
    orders=f"SELECT * FROM {_in_ranges('orders', _ORDER_RANGES)} o",
    transaction_of_event="checked_transactions",
    event_of_transaction=_EVENT_NEAR_OR_FAR,
    items_of_orders="""WHERE (order_id, "timestamp") IN (SELECT order_id, "timestamp" FROM checked_orders)""",
)

_SUMMARY_SQL = f"""
WITH gaps AS ({_GAPS})
SELECT l.consumer_group, l.topic, l.topic_incarnation, l."partition",
       min(l.first_offset), max(l.last_offset), sum(l.messages), sum(l.stored), sum(l.duplicates),
       sum(l.dead_lettered), sum(l.ranges), COALESCE(max(l.last_offset) FILTER (WHERE l.trimmed), -1),
       (SELECT count(*) FROM gaps g WHERE (g.consumer_group, g.topic, g.topic_incarnation, g."partition")
                                          = (l.consumer_group, l.topic, l.topic_incarnation, l."partition"))
FROM ingest_ledger l
WHERE %(group)s::text IS NULL OR l.consumer_group = %(group)s
GROUP BY 1, 2, 3, 4
ORDER BY 1, 2, 3, 4
"""
_SUMMARY_KEYS = ("consumer_group", "topic", "topic_incarnation", "partition", "first_offset", "last_offset",
                 "messages", "stored", "duplicates", "dead_lettered", "batches", "trimmed_through", "gaps")


def ledger_gaps(cursor) -> list[tuple]:
    """(consumer_group, topic, topic_incarnation, partition, expected_first, found_first)
    for every gap (found > expected) or overlap (found < expected) in the ledger."""
    cursor.execute(LEDGER_GAPS_SQL)
    return cursor.fetchall()


def consistency_violations(cursor, since: datetime | None = None, until: datetime | None = None) -> list[tuple]:
    """(check_name, table_name, key, detail) for every disagreement between
    events/transactions and orders/order_items, optionally in [since, until)."""
    cursor.execute(CONSISTENCY_SQL, {"since": since, "until": until})
    return [row[:4] for row in cursor.fetchall()]


def minute_ranges(minutes: Iterable[datetime]) -> list[tuple[datetime, datetime]]:
    """Minute windows -> the fewest disjoint ``[lo, hi)`` ranges covering them."""
    ranges: list[list[datetime]] = []
    for minute in sorted(set(minutes)):
        if ranges and ranges[-1][1] == minute:
            ranges[-1][1] = minute + MINUTE
        else:
            ranges.append([minute, minute + MINUTE])
    return [(lo, hi) for lo, hi in ranges]


def ingested_minutes(cursor, table: str, since: datetime) -> dict[datetime, int]:
    """Event-time minute -> rows of ``table`` (``events`` or ``orders``) ingested
    after ``since`` (``ingested_at``, BRIN-indexed: sql/060)."""
    if table not in ("events", "orders"):
        raise ValueError(f"{table} has no ingested_at")
    cursor.execute(f"""SELECT date_trunc('minute', "timestamp", 'UTC'), count(*) FROM {table}
                       WHERE ingested_at > %s GROUP BY 1""", (since,))
    return {minute: n for minute, n in cursor.fetchall()}


def consistency_violations_in(cursor, event_minutes: Iterable[datetime],
                              order_minutes: Iterable[datetime]) -> list[tuple]:
    """(check_name, table_name, key, detail, event time) for every disagreement
    among the rows of the given event-time minutes: ``event_minutes`` for
    events/transactions, ``order_minutes`` for orders/order_items
    (``CONSISTENCY_IN_RANGES_SQL``: index ranges, never a whole table)."""
    ev, orders = minute_ranges(event_minutes), minute_ranges(order_minutes)
    cursor.execute(CONSISTENCY_IN_RANGES_SQL, {
        "ev_lo": [lo for lo, _ in ev], "ev_hi": [hi for _, hi in ev],
        "or_lo": [lo for lo, _ in orders], "or_hi": [hi for _, hi in orders],
    })
    return cursor.fetchall()


def ledger_gaps_since(cursor, since: datetime, keep: Iterable[tuple] = ()) -> list[tuple]:
    """:func:`ledger_gaps` restricted to the ranges recorded after ``since``
    and the range before and after them in each partition, plus, for each
    ``keep`` item ``(consumer_group, topic, topic_incarnation, partition,
    found_first)`` (a gap found earlier), the range starting there and its
    neighbours (``LEDGER_INCREMENT_GAPS_SQL``)."""
    keep = list(keep)
    cursor.execute(LEDGER_INCREMENT_GAPS_SQL, {
        "since": since,
        **{f"keep_{name}": [k[i] for k in keep]
           for i, name in enumerate(("group", "topic", "incarnation", "partition", "first"))},
    })
    return cursor.fetchall()


def ledger_rows_since(cursor, since: datetime) -> dict[str, tuple[int, int]]:
    """topic -> (ledger rows, messages) recorded after ``since``."""
    cursor.execute(LEDGER_INCREMENT_COUNT_SQL, {"since": since})
    return {topic: (n, int(messages)) for topic, n, messages in cursor.fetchall()}


def ledger_summary(cursor, group: str | None = None) -> list[dict]:
    """Per group/topic/incarnation/partition: offsets covered, where the messages
    went, number of ledger ranges (``batches``: one per batch until rolled up
    per hour, sql/130), the last offset of the trimmed range (-1: none) and
    the number of gaps/overlaps."""
    cursor.execute(_SUMMARY_SQL, {"group": group})
    return [{k: (int(v) if k not in ("consumer_group", "topic", "topic_incarnation") else v)
             for k, v in zip(_SUMMARY_KEYS, row)} for row in cursor.fetchall()]
