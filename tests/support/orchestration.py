"""Helpers for the orchestration tests (no tests here): seeding raw rows with
plain SQL, and independent SQL for expected report values."""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import psycopg2

from tests.support.db import query

#: a closed past hour well inside the partitions (2024-01-01 onwards)
BASE_HOUR = datetime(2026, 3, 10, 9, 0, tzinfo=timezone.utc)

PRODUCTS = [
    ("p-1", "Kettle", "kitchen", Decimal("25.50")),
    ("p-2", "Pan", "kitchen", Decimal("40.00")),
    ("p-3", "Lamp", "home", Decimal("19.99")),
    ("p-4", "Novel", "books", Decimal("12.35")),
]
ITEMS = [("m-1", "Feijoada", "mains", Decimal("42.90")), ("m-2", "Suco", "drinks", Decimal("8.50")),
         ("m-3", "Pudim", "desserts", Decimal("12.00"))]




def materializations(result) -> dict:
    """(asset key, partition) -> materialisation metadata of an in-process result."""
    return {
        (ev.asset_key.to_user_string(), ev.partition): ev.step_materialization_data.materialization.metadata
        for ev in result.get_asset_materialization_events()
    }


def execute(url: str, sql: str, params=None) -> None:
    query(url, sql, params)


def seed_ecommerce(url: str, hour: datetime, minutes=(0, 1, 5, 30, 59), per_minute: int = 12, seed: int = 1) -> int:
    """Insert events (every type), products and transactions in ``hour``'s minutes.
    Returns the number of events."""
    rng = random.Random(seed + int(hour.timestamp()))
    conn = psycopg2.connect(url)
    count = 0
    with conn, conn.cursor() as cur:
        for pid, name, cat, price in PRODUCTS:
            cur.execute(
                """INSERT INTO products (product_id, product_name, category, price) VALUES (%s,%s,%s,%s)
                   ON CONFLICT (product_id) DO NOTHING""", (pid, name, cat, price))
        for minute in minutes:
            for i in range(per_minute):
                ts = hour + timedelta(minutes=minute, seconds=rng.randint(0, 59), microseconds=rng.randint(0, 999999))
                user = f"u-{rng.randint(1, 6)}"
                session = f"s-{user}-{hour:%H}"
                etype = rng.choice(["page_view", "page_view", "add_to_cart", "remove_from_cart", "purchase", "search"])
                pid, _name, _cat, price = rng.choice(PRODUCTS)
                event_id = str(uuid.UUID(int=rng.getrandbits(128)))
                cur.execute(
                    """INSERT INTO events (event_id, event_type, "timestamp", user_id, session_id, product_id, search_query)
                       VALUES (%s,%s,%s,%s,%s,%s,%s)""",
                    (event_id, etype, ts, user, session, None if etype == "search" else pid,
                     "kettle" if etype == "search" else None))
                if etype == "purchase":
                    qty = rng.randint(1, 3)
                    cur.execute(
                        """INSERT INTO transactions (transaction_id, event_id, product_id, quantity, total_amount,
                                                     payment_method, "timestamp") VALUES (%s,%s,%s,%s,%s,%s,%s)""",
                        (event_id, event_id, pid, qty, price * qty, "card", ts))
                count += 1
    conn.close()
    return count


def seed_restaurant(url: str, hour: datetime, minutes=(2, 3, 30, 58), per_minute: int = 4, seed: int = 2) -> int:
    """Insert orders with line items in ``hour``'s minutes. Returns the number of orders."""
    rng = random.Random(seed + int(hour.timestamp()))
    conn = psycopg2.connect(url)
    count = 0
    with conn, conn.cursor() as cur:
        for minute in minutes:
            for _ in range(per_minute):
                ts = hour + timedelta(minutes=minute, seconds=rng.randint(0, 59))
                order_id = str(uuid.UUID(int=rng.getrandbits(128)))
                lines = [(rng.choice(ITEMS), rng.randint(1, 3)) for _ in range(rng.randint(1, 3))]
                total = sum(price * qty for (_i, _n, _c, price), qty in lines)
                channel = rng.choice(["dine_in", "takeaway", "delivery"])
                cur.execute(
                    """INSERT INTO orders (order_id, "timestamp", restaurant_id, table_number, channel, total_amount,
                                           payment_method, item_count) VALUES (%s,%s,%s,%s,%s,%s,%s,%s)""",
                    (order_id, ts, "r-1", 4 if channel == "dine_in" else None, channel, total, "pix",
                     sum(q for _l, q in lines)))
                for n, ((item_id, name, cat, price), qty) in enumerate(lines):
                    cur.execute(
                        """INSERT INTO order_items (order_id, line_number, item_id, name, category, quantity,
                                                    unit_price, line_total, "timestamp")
                           VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)""",
                        (order_id, n, item_id, name, cat, qty, price, price * qty, ts))
                count += 1
    conn.close()
    return count


# --- independent expectations (plain SQL over the raw tables) ----------------

def expected_ecommerce_minutes(url: str, start: datetime, end: datetime) -> dict:
    """window_start -> (events, purchases, revenue, units)."""
    rows = query(url, """
        SELECT e.minute, e.events, e.purchases, COALESCE(t.revenue, 0), COALESCE(t.units, 0)
        FROM (SELECT date_trunc('minute', "timestamp") AS minute, count(*) AS events,
                     count(*) FILTER (WHERE event_type = 'purchase') AS purchases
              FROM events WHERE "timestamp" >= %(s)s AND "timestamp" < %(e)s GROUP BY 1) e
        LEFT JOIN (SELECT date_trunc('minute', "timestamp") AS minute, sum(total_amount) AS revenue,
                          sum(quantity) AS units
                   FROM transactions WHERE "timestamp" >= %(s)s AND "timestamp" < %(e)s GROUP BY 1) t
          ON t.minute = e.minute""", {"s": start, "e": end})
    return {r[0]: (r[1], r[2], Decimal(r[3]), r[4]) for r in rows}


def actual_ecommerce_minutes(url: str, start: datetime, end: datetime) -> dict:
    rows = query(url, """SELECT window_start, events, purchases, revenue, units FROM report_ecommerce_overview_minute
                         WHERE window_start >= %s AND window_start < %s""", (start, end))
    return {r[0]: (r[1], r[2], Decimal(r[3]), r[4]) for r in rows}


def expected_restaurant_minutes(url: str, start: datetime, end: datetime) -> dict:
    """window_start -> (orders, items_sold, revenue)."""
    rows = query(url, """
        SELECT o.minute, o.orders, COALESCE(i.items, 0), o.revenue
        FROM (SELECT date_trunc('minute', "timestamp") AS minute, count(*) AS orders, sum(total_amount) AS revenue
              FROM orders WHERE "timestamp" >= %(s)s AND "timestamp" < %(e)s GROUP BY 1) o
        LEFT JOIN (SELECT date_trunc('minute', o."timestamp") AS minute, sum(i.quantity) AS items
                   FROM order_items i JOIN orders o USING (order_id)
                   WHERE o."timestamp" >= %(s)s AND o."timestamp" < %(e)s GROUP BY 1) i ON i.minute = o.minute""",
                 {"s": start, "e": end})
    return {r[0]: (r[1], r[2], Decimal(r[3])) for r in rows}


def actual_restaurant_minutes(url: str, start: datetime, end: datetime) -> dict:
    rows = query(url, """SELECT window_start, orders, items_sold, revenue FROM report_restaurant_overview_minute
                         WHERE window_start >= %s AND window_start < %s""", (start, end))
    return {r[0]: (r[1], r[2], Decimal(r[3])) for r in rows}


# --- Spark Connect server (from the session-scoped plugin tests/support/spark_fixtures.py) --

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def spark_remote(request) -> str:
    """``sc://`` URL of the session's Spark Connect server."""
    server = request.getfixturevalue("spark_server")
    return getattr(server, "remote", server)


@pytest.fixture
def instance(postgres, tmp_path):
    """A Dagster instance on a database of its own in the session's PostgreSQL."""
    from dagster import DagsterInstance

    from salespulse.settings import Settings
    from salespulse.stack.dagster_home import prepare_dagster_home

    admin_url = postgres.create_database(f"dagster_{uuid.uuid4().hex[:8]}")
    home = prepare_dagster_home(Settings(database_url=admin_url), database=admin_url.rsplit("/", 1)[1],
                                home=tmp_path / "dagster_home")
    inst = DagsterInstance.from_config(str(home))
    yield inst
    inst.dispose()
