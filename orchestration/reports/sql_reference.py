"""Plain-SQL versions of the report totals, for reconciliation (Dagster asset
checks) and for the benchmark's SQL baseline. They read the raw tables
directly and share no code with the Spark path.

* ``sql_revenue(conn, "ecommerce", start, end)`` = sum of
  ``transactions.total_amount`` with ``"timestamp"`` in ``[start, end)``;
* ``sql_revenue(conn, "restaurant", start, end)`` = sum of
  ``orders.total_amount`` with ``"timestamp"`` in ``[start, end)``.

Both equal the sum of ``revenue`` over the overview report rows with
``window_start`` in the same (minute-aligned) range.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from salespulse.catalog import DOMAINS

_REVENUE_SQL = {
    d.name: f'SELECT COALESCE(sum(total_amount), 0) FROM {d.revenue_table} WHERE "timestamp" >= %s AND "timestamp" < %s'
    for d in DOMAINS.values()}


def sql_revenue(conn, domain: str, start: datetime, end: datetime) -> Decimal:
    """Revenue of ``domain`` over ``[start, end)`` straight from the raw tables."""
    try:
        query = _REVENUE_SQL[domain]
    except KeyError:
        raise ValueError(f"unknown domain {domain!r}; expected one of {sorted(_REVENUE_SQL)}") from None
    with conn.cursor() as cur:
        cur.execute(query, (start, end))
        return Decimal(cur.fetchone()[0])


#: The e-commerce per-minute aggregation in one SQL statement: the SQL
#: baseline of ``bench/bench_reports.py`` and, through the columns it selects
#: (events, purchases, add_to_carts, remove_from_carts, revenue, units,
#: last_ingested), the reconciliation check (``orchestration/checks/reconcile.py``).
#: One row per minute with events or transactions; ``last_ingested``: the
#: newest ingestion of the minute's rows. Written so that a caller selecting
#: fewer columns pays for fewer: ``funnel`` is LEFT JOINed on its unique
#: ``minute`` (PostgreSQL drops the join when none of its columns is read),
#: ``ev`` is not materialized (so only what is read scans ``events``) and
#: unread aggregates of ``counts`` are not computed.
ECOMMERCE_MINUTE_SQL = """
WITH ev AS NOT MATERIALIZED (
    SELECT date_bin('1 minute', "timestamp", TIMESTAMPTZ '2000-01-01 00:00:00+00') AS minute,
           event_type, user_id, session_id, ingested_at
    FROM events WHERE "timestamp" >= %(start)s AND "timestamp" < %(end)s
), per_session AS (
    SELECT minute, session_id,
           bool_or(event_type = 'page_view') AS v,
           bool_or(event_type = 'add_to_cart') AS c,
           bool_or(event_type = 'purchase') AS p
    FROM ev GROUP BY 1, 2
), funnel AS (
    SELECT minute, count(*) FILTER (WHERE v) AS viewed, count(*) FILTER (WHERE v AND c) AS carted,
           count(*) FILTER (WHERE v AND c AND p) AS purchased
    FROM per_session GROUP BY 1
), counts AS (
    SELECT minute, count(*) AS events,
           count(*) FILTER (WHERE event_type = 'page_view') AS page_views,
           count(*) FILTER (WHERE event_type = 'search') AS searches,
           count(*) FILTER (WHERE event_type = 'add_to_cart') AS add_to_carts,
           count(*) FILTER (WHERE event_type = 'remove_from_cart') AS remove_from_carts,
           count(*) FILTER (WHERE event_type = 'purchase') AS purchases,
           count(DISTINCT user_id) AS active_users, count(DISTINCT session_id) AS active_sessions,
           max(ingested_at) AS last_ingested
    FROM ev GROUP BY 1
), sales AS (
    SELECT date_bin('1 minute', t."timestamp", TIMESTAMPTZ '2000-01-01 00:00:00+00') AS minute,
           sum(t.total_amount) AS revenue, sum(t.quantity) AS units, count(*) AS orders,
           max(e.ingested_at) AS last_ingested
    FROM transactions t LEFT JOIN events e ON e."timestamp" = t."timestamp" AND e.event_id = t.event_id
    WHERE t."timestamp" >= %(start)s AND t."timestamp" < %(end)s GROUP BY 1
)
SELECT minute, COALESCE(c.events, 0) AS events, COALESCE(c.page_views, 0) AS page_views,
       COALESCE(c.searches, 0) AS searches, COALESCE(c.add_to_carts, 0) AS add_to_carts,
       COALESCE(c.remove_from_carts, 0) AS remove_from_carts, COALESCE(c.purchases, 0) AS purchases,
       COALESCE(c.active_users, 0) AS active_users, COALESCE(c.active_sessions, 0) AS active_sessions,
       COALESCE(f.viewed, 0) AS viewed, COALESCE(f.carted, 0) AS carted, COALESCE(f.purchased, 0) AS purchased,
       COALESCE(s.revenue, 0) AS revenue, COALESCE(s.units, 0) AS units, COALESCE(s.orders, 0) AS orders,
       COALESCE(c.last_ingested, s.last_ingested) AS last_ingested
FROM counts c LEFT JOIN funnel f USING (minute) FULL JOIN sales s USING (minute)
ORDER BY minute
"""

ECOMMERCE_PRODUCT_MINUTE_SQL = """
SELECT date_bin('1 minute', t."timestamp", TIMESTAMPTZ '2000-01-01 00:00:00+00') AS minute,
       t.product_id, p.product_name, p.category,
       sum(t.total_amount) AS revenue, sum(t.quantity) AS units, count(*) AS orders
FROM transactions t JOIN products p ON p.product_id = t.product_id
WHERE t."timestamp" >= %(start)s AND t."timestamp" < %(end)s
GROUP BY 1, 2, 3, 4
"""

ECOMMERCE_CATEGORY_MINUTE_SQL = """
SELECT date_bin('1 minute', t."timestamp", TIMESTAMPTZ '2000-01-01 00:00:00+00') AS minute, p.category,
       sum(t.total_amount) AS revenue, sum(t.quantity) AS units, count(*) AS orders
FROM transactions t JOIN products p ON p.product_id = t.product_id
WHERE t."timestamp" >= %(start)s AND t."timestamp" < %(end)s
GROUP BY 1, 2
"""


def sql_ecommerce_aggregates(conn, start: datetime, end: datetime) -> dict[str, list[tuple]]:
    """The e-commerce per-minute aggregates in plain SQL (no write): the SQL
    baseline of ``bench/bench_reports.py``."""
    out = {}
    with conn.cursor() as cur:
        for name, query in (("overview", ECOMMERCE_MINUTE_SQL), ("product", ECOMMERCE_PRODUCT_MINUTE_SQL),
                            ("category", ECOMMERCE_CATEGORY_MINUTE_SQL)):
            cur.execute(query, {"start": start, "end": end})
            out[name] = cur.fetchall()
    return out
