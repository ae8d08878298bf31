"""Database-level proofs that ingestion lost nothing and wrote nothing twice.

Two questions, each one SQL query that the tests, ``salespulse audit`` and the
Dagster asset checks all run:

* ``LEDGER_GAPS_SQL`` — is ``ingest_ledger`` contiguous? Per (consumer group,
  topic, topic incarnation, partition), ordered by first offset, every range
  must start right after the previous one ends. A gap means offsets that were
  committed but never written (or dead-lettered); an overlap means offsets
  written twice. The table's exclusion constraint already refuses overlaps, so
  in practice this finds gaps.
* ``CONSISTENCY_SQL`` — do the parent and child tables agree? ``events`` vs
  ``transactions`` (every purchase has its transaction and nothing else has
  one, with the same timestamp) and ``orders`` vs ``order_items`` (every order
  has items, ``item_count`` and ``total_amount`` match their sums). The writer
  only adds child rows for parents it inserted in the same transaction, so any
  row here is a bug (or a hand edit).
"""

from __future__ import annotations

from datetime import datetime

_GAPS = """
SELECT consumer_group, topic, topic_incarnation, "partition", expected_first, found_first
FROM (
    SELECT consumer_group, topic, topic_incarnation, "partition", first_offset AS found_first,
           lag(last_offset) OVER w + 1 AS expected_first
    FROM ingest_ledger
    WINDOW w AS (PARTITION BY consumer_group, topic, topic_incarnation, "partition"
                 ORDER BY first_offset, last_offset)
) ranges
WHERE expected_first IS NOT NULL AND found_first <> expected_first
"""
LEDGER_GAPS_SQL = _GAPS + 'ORDER BY consumer_group, topic, topic_incarnation, "partition", found_first\n'

# Time window on the parent's (or the child's) timestamp: NULL = unbounded.
_IN_WINDOW = "(%(since)s::timestamptz IS NULL OR {ts} >= %(since)s) AND (%(until)s::timestamptz IS NULL OR {ts} < %(until)s)"


def _window(ts: str) -> str:
    return _IN_WINDOW.format(ts=ts)


CONSISTENCY_SQL = f"""
SELECT 'purchase_without_transaction', 'events', e.event_id::text,
       'purchase event ' || e.event_id || ' has no transaction'
FROM events e
WHERE e.event_type = 'purchase' AND {_window('e."timestamp"')}
  AND NOT EXISTS (SELECT 1 FROM transactions t WHERE t.event_id = e.event_id)
UNION ALL
SELECT CASE WHEN e.event_id IS NULL THEN 'transaction_without_event'
            WHEN e.event_type <> 'purchase' THEN 'transaction_event_not_purchase'
            ELSE 'transaction_timestamp_mismatch' END,
       'transactions', t.transaction_id,
       CASE WHEN e.event_id IS NULL THEN 'transaction ' || t.transaction_id || ': event ' || t.event_id || ' missing'
            WHEN e.event_type <> 'purchase' THEN 'transaction ' || t.transaction_id || ': event is a ' || e.event_type
            ELSE 'transaction ' || t.transaction_id || ' at ' || t."timestamp" || ', its event at ' || e."timestamp"
       END
FROM transactions t LEFT JOIN events e ON e.event_id = t.event_id
WHERE {_window('t."timestamp"')}
  AND (e.event_id IS NULL OR e.event_type <> 'purchase' OR e."timestamp" <> t."timestamp")
UNION ALL
SELECT CASE WHEN i.order_id IS NULL THEN 'order_without_items'
            WHEN o.item_count <> i.quantity THEN 'order_item_count_mismatch'
            ELSE 'order_total_mismatch' END,
       'orders', o.order_id::text,
       CASE WHEN i.order_id IS NULL THEN 'order ' || o.order_id || ' has no items'
            WHEN o.item_count <> i.quantity
                THEN 'item_count ' || o.item_count || ' != sum of item quantities ' || i.quantity
            ELSE 'total_amount ' || o.total_amount || ' != sum of line totals ' || i.line_total
       END
FROM orders o
LEFT JOIN (SELECT order_id, sum(quantity) AS quantity, sum(line_total) AS line_total
           FROM order_items GROUP BY order_id) i ON i.order_id = o.order_id
WHERE {_window('o."timestamp"')}
  AND (i.order_id IS NULL OR o.item_count <> i.quantity OR o.total_amount <> i.line_total)
ORDER BY 1, 2, 3
"""

_SUMMARY_SQL = f"""
WITH gaps AS ({_GAPS})
SELECT l.consumer_group, l.topic, l.topic_incarnation, l."partition",
       min(l.first_offset), max(l.last_offset), sum(l.messages), sum(l.stored), sum(l.duplicates),
       sum(l.dead_lettered), count(*),
       (SELECT count(*) FROM gaps g WHERE (g.consumer_group, g.topic, g.topic_incarnation, g."partition")
                                          = (l.consumer_group, l.topic, l.topic_incarnation, l."partition"))
FROM ingest_ledger l
WHERE %(group)s::text IS NULL OR l.consumer_group = %(group)s
GROUP BY 1, 2, 3, 4
ORDER BY 1, 2, 3, 4
"""
_SUMMARY_KEYS = ("consumer_group", "topic", "topic_incarnation", "partition", "first_offset", "last_offset",
                 "messages", "stored", "duplicates", "dead_lettered", "batches", "gaps")


def ledger_gaps(cursor) -> list[tuple]:
    """(consumer_group, topic, topic_incarnation, partition, expected_first, found_first)
    for every gap (found > expected) or overlap (found < expected) in the ledger."""
    cursor.execute(LEDGER_GAPS_SQL)
    return cursor.fetchall()


def consistency_violations(cursor, since: datetime | None = None, until: datetime | None = None) -> list[tuple]:
    """(check_name, table_name, key, detail) for every disagreement between
    events/transactions and orders/order_items, optionally in [since, until)."""
    cursor.execute(CONSISTENCY_SQL, {"since": since, "until": until})
    return cursor.fetchall()


def ledger_summary(cursor, group: str | None = None) -> list[dict]:
    """Per group/topic/incarnation/partition: offsets covered, where the messages
    went, number of ledger rows (batches) and of gaps/overlaps."""
    cursor.execute(_SUMMARY_SQL, {"group": group})
    return [{k: (int(v) if k not in ("consumer_group", "topic", "topic_incarnation") else v)
             for k, v in zip(_SUMMARY_KEYS, row)} for row in cursor.fetchall()]
