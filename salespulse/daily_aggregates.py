"""Per-day aggregates behind the all-time views, maintained incrementally.

``sales_by_category``, ``top_products`` and ``daily_metrics`` used to re-read
every event and transaction ever stored at each refresh, so a minute's refresh
grew with history. They now read ``daily_event_totals`` and
``daily_product_sales`` (sql/090_daily_aggregates.sql): one row per UTC day
(and product). Past days are final unless new rows touch them, so a
maintenance recomputes only the days that received rows since the last one:
today's in the normal case, and a past day when late data arrives. Each such
day is recomputed from that day's raw rows, so the distinct user and session
counts stay exact (no sketch).

A maintenance, in one transaction:

1. locks the state row (concurrent runs queue, never interleave);
2. finds the days of the events ingested since ``maintained_until`` less
   ``MARGIN`` (a BRIN index on ``ingested_at`` reads only the newest blocks),
   and of the transactions of those events;
3. deletes and recomputes those days' aggregate rows (an index range scan of
   ``"timestamp"`` per day);
4. sets ``maintained_until`` to its own start.

Why the margin: ``ingested_at`` is a row's insert time inside the consumer's
batch transaction, and the row becomes visible only at that transaction's
COMMIT. A row inserted just before a maintenance began but committed after
it read was invisible to it; the next maintenance reads back ``MARGIN`` and
finds it, as long as no ingest transaction stays open that long (a batch
takes milliseconds to seconds). Reading a day twice costs a recompute, never
a wrong figure.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

MARGIN = timedelta(minutes=5)

_CHANGED_DAYS = """
SELECT DISTINCT day FROM (
    SELECT ("timestamp" AT TIME ZONE 'UTC')::DATE AS day FROM events WHERE ingested_at >= %(since)s
    UNION ALL
    SELECT (t."timestamp" AT TIME ZONE 'UTC')::DATE FROM events e
    JOIN transactions t ON t."timestamp" = e."timestamp" AND t.event_id = e.event_id
    WHERE e.ingested_at >= %(since)s AND e.event_type = 'purchase'
) changed ORDER BY day"""
# the timestamp in the join: a transaction carries its event's time (checked by
# raw_tables_consistent), and it lets each new purchase find its transaction
# through idx_transactions_timestamp in its month's partition instead of a
# scan of every transaction ever stored

_ALL_DAYS = """
SELECT ("timestamp" AT TIME ZONE 'UTC')::DATE AS day FROM events
UNION SELECT ("timestamp" AT TIME ZONE 'UTC')::DATE FROM transactions ORDER BY day"""

#: a rebuild starts again from the raw rows it has: the days whose raw rows
#: retention dropped (sql/100) keep their figures
_FORGET_RETAINED_DAYS = """
DELETE FROM daily_event_totals WHERE day >= (salespulse_raw_floor('events') AT TIME ZONE 'UTC')::DATE;
DELETE FROM daily_product_sales WHERE day >= (salespulse_raw_floor('transactions') AT TIME ZONE 'UTC')::DATE"""

#: the days' UTC bounds, so each day is an index range scan of "timestamp"
_DAYS = """unnest(%(days)s::DATE[]) AS d(day)"""
_IN_DAY = """{col} >= d.day::TIMESTAMP AT TIME ZONE 'UTC' AND {col} < (d.day + 1)::TIMESTAMP AT TIME ZONE 'UTC'"""

_RECOMPUTE_EVENTS = f"""
DELETE FROM daily_event_totals WHERE day = ANY(%(days)s::DATE[]);
INSERT INTO daily_event_totals (day, events, unique_users, sessions, purchases)
SELECT d.day, COUNT(*), COUNT(DISTINCT e.user_id), COUNT(DISTINCT e.session_id),
       COUNT(*) FILTER (WHERE e.event_type = 'purchase')
FROM {_DAYS} JOIN events e ON {_IN_DAY.format(col='e."timestamp"')}
GROUP BY d.day"""

_RECOMPUTE_SALES = f"""
DELETE FROM daily_product_sales WHERE day = ANY(%(days)s::DATE[]);
INSERT INTO daily_product_sales (day, product_id, units, revenue, orders, last_sale_at)
SELECT d.day, t.product_id, SUM(t.quantity), SUM(t.total_amount), COUNT(*), MAX(t."timestamp")
FROM {_DAYS} JOIN transactions t ON {_IN_DAY.format(col='t."timestamp"')}
GROUP BY d.day, t.product_id"""


@dataclass(frozen=True)
class Maintenance:
    """What one maintenance did."""

    days: list[date]  # the days recomputed
    event_rows: int  # daily_event_totals rows written
    sales_rows: int  # daily_product_sales rows written


def maintain(conn, rebuild: bool = False) -> Maintenance:
    """Recompute the days changed since the last maintenance (every day if
    ``rebuild``) and move the state forward; commits ``conn``'s transaction."""
    with conn, conn.cursor() as cur:
        cur.execute("SELECT maintained_until FROM daily_aggregates_state FOR UPDATE")
        row = cur.fetchone()
        if row is None or rebuild:
            cur.execute(_FORGET_RETAINED_DAYS)
            cur.execute(_ALL_DAYS)
        else:
            cur.execute(_CHANGED_DAYS, {"since": row[0] - MARGIN})
        days = [d for (d,) in cur.fetchall()]
        event_rows = sales_rows = 0
        if days:
            cur.execute(_RECOMPUTE_EVENTS, {"days": days})
            event_rows = cur.rowcount
            cur.execute(_RECOMPUTE_SALES, {"days": days})
            sales_rows = cur.rowcount
        cur.execute(
            """INSERT INTO daily_aggregates_state (singleton, maintained_until, days_recomputed, updated_at)
               VALUES (TRUE, now(), %s, clock_timestamp())
               ON CONFLICT (singleton) DO UPDATE SET maintained_until = EXCLUDED.maintained_until,
                   days_recomputed = EXCLUDED.days_recomputed, updated_at = EXCLUDED.updated_at""",
            (len(days),))
    return Maintenance(days, event_rows, sales_rows)


#: the materialized views that read the aggregates (each is an asset in orchestration/assets/views.py)
VIEWS = ("sales_by_category", "top_products", "daily_metrics")


def rebuild_views(conn) -> None:
    """Recompute every day, then refresh the views (not concurrently): for
    seeding scripts and tests that write raw rows directly."""
    maintain(conn, rebuild=True)
    with conn, conn.cursor() as cur:
        for view in VIEWS:
            cur.execute(f"REFRESH MATERIALIZED VIEW {view}")
