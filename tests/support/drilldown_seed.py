"""Data behind the drill-down tests: raw events and orders stored by the
consumer's own writer (so they carry a Kafka partition and offset exactly as
the consumer stores them), minute report rows aggregated from them in SQL, and
the refresh (Dagster run) that "computed" those windows.

Everything is derived from the raw rows, so a test checks the API against
SQL over the same rows, never against figures written here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import psycopg2

from salespulse.contracts import ECOMMERCE_TOPIC, RESTAURANT_TOPIC
from services.consumer.messages import RawMessage
from services.consumer.store import BatchWriter
from tests.support.consumer import ecommerce_event, restaurant_order

RUN_ID = "0f5e7d1c-drilldown-run"
MINUTES = 3  # minute windows with raw rows, ending 2 minutes before now


@dataclass(frozen=True)
class Seeded:
    url: str
    first_minute: datetime
    minutes: int
    run_id: str


def _minute(ts: datetime) -> datetime:
    return ts.replace(second=0, microsecond=0)


def _messages(first: datetime, minutes: int) -> list[RawMessage]:
    out: list[RawMessage] = []
    offsets = {}

    def add(topic, partitions, key, doc):
        part = len(out) % partitions
        off = offsets[(topic, part)] = offsets.get((topic, part), 99) + 1
        out.append(RawMessage(topic, part, off, key.encode(), json.dumps(doc).encode()))

    for m in range(minutes):
        start = first + timedelta(minutes=m)
        for i in range(20 + 5 * m):  # every event type, several purchases per category
            ev = ecommerce_event(i, run="dd", timestamp=(start + timedelta(seconds=2 * i)).isoformat())
            add(ECOMMERCE_TOPIC.name, ECOMMERCE_TOPIC.partitions, ev["user_id"], ev)
        for i in range(6 + m):
            order = restaurant_order(i, timestamp=(start + timedelta(seconds=5 * i)).isoformat())
            add(RESTAURANT_TOPIC.name, RESTAURANT_TOPIC.partitions, order["order_id"], order)
    return out


REPORT_SQL = [
    """INSERT INTO report_ecommerce_overview_minute (window_start, events, page_views, searches, add_to_carts,
           remove_from_carts, purchases, active_users, active_sessions, sessions_viewed, sessions_carted,
           sessions_purchased, conversion_rate, revenue, units, avg_order_value, cart_abandonment_rate)
       SELECT date_trunc('minute', e."timestamp"), count(*), count(*) FILTER (WHERE event_type = 'page_view'),
              count(*) FILTER (WHERE event_type = 'search'), count(*) FILTER (WHERE event_type = 'add_to_cart'),
              count(*) FILTER (WHERE event_type = 'remove_from_cart'), count(*) FILTER (WHERE event_type = 'purchase'),
              count(DISTINCT user_id), count(DISTINCT session_id), 0, 0, 0, 0,
              COALESCE(sum(t.total_amount), 0), COALESCE(sum(t.quantity), 0), 0, 0
       FROM events e LEFT JOIN transactions t USING (event_id) GROUP BY 1""",
    """INSERT INTO report_ecommerce_category_minute (window_start, category, revenue, units, orders)
       SELECT date_trunc('minute', t."timestamp"), p.category, sum(t.total_amount), sum(t.quantity), count(*)
       FROM transactions t JOIN products p USING (product_id) GROUP BY 1, 2""",
    """INSERT INTO report_ecommerce_product_minute (window_start, product_id, product_name, category, revenue,
           units, orders)
       SELECT date_trunc('minute', t."timestamp"), p.product_id, p.product_name, p.category, sum(t.total_amount),
              sum(t.quantity), count(*)
       FROM transactions t JOIN products p USING (product_id) GROUP BY 1, 2, 3, 4""",
    """INSERT INTO report_restaurant_overview_minute (window_start, orders, items_sold, revenue, avg_ticket)
       SELECT date_trunc('minute', "timestamp"), count(*), sum(item_count), sum(total_amount), avg(total_amount)
       FROM orders GROUP BY 1""",
    """INSERT INTO report_restaurant_channel_minute (window_start, channel, orders, revenue, avg_ticket)
       SELECT date_trunc('minute', "timestamp"), channel, count(*), sum(total_amount), avg(total_amount)
       FROM orders GROUP BY 1, 2""",
    """INSERT INTO report_restaurant_category_minute (window_start, category, quantity, revenue, orders)
       SELECT date_trunc('minute', o."timestamp"), i.category, sum(i.quantity), sum(i.line_total),
              count(DISTINCT o.order_id)
       FROM orders o JOIN order_items i USING (order_id) GROUP BY 1, 2""",
    """INSERT INTO report_restaurant_item_minute (window_start, item_id, name, category, quantity, revenue, orders)
       SELECT date_trunc('minute', o."timestamp"), i.item_id, min(i.name), min(i.category), sum(i.quantity),
              sum(i.line_total), count(DISTINCT o.order_id)
       FROM orders o JOIN order_items i USING (order_id) GROUP BY 1, 2""",
]


def seed_drilldown(url: str, now: datetime | None = None, minutes: int = MINUTES) -> Seeded:
    """Raw rows (through the consumer's writer), report rows from them, and
    the refreshes: an older one without a run (superseded) and the run's."""
    now = now or datetime.now(timezone.utc)
    first = _minute(now) - timedelta(minutes=minutes + 1)
    writer = BatchWriter(url, group="drilldown-seed")
    try:
        result = writer.write_raw(_messages(first, minutes))
    finally:
        writer.close()
    assert not result.dead_letters, [m.error for m in result.dead_letters][:3]
    hour = first.replace(minute=0)
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SET TIME ZONE 'UTC'")
            for statement in REPORT_SQL:
                cur.execute(statement)
            cur.execute("INSERT INTO report_refreshes (domain, window_start, window_end, run_id) VALUES "
                        "('ecommerce', %(a)s, %(b)s, NULL), ('restaurant', %(a)s, %(b)s, NULL), "
                        "('ecommerce', %(a)s, %(c)s, %(run)s), ('restaurant', %(a)s, %(c)s, %(run)s)",
                        {"a": hour - timedelta(hours=1), "b": hour + timedelta(hours=1),
                         "c": _minute(now) + timedelta(minutes=1), "run": RUN_ID})
            cur.execute("INSERT INTO pipeline_runs (run_id, job_name, status, partition) "
                        "VALUES (%s, 'reports_job', 'SUCCESS', %s)", (RUN_ID, hour.strftime("%Y-%m-%d-%H:%M")))
    finally:
        conn.close()
    return Seeded(url, first, minutes, RUN_ID)
