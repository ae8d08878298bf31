"""Deterministic sample data for the dashboard's tests (kept out of the app package).

Writes straight into the raw tables, the minute report tables, the pipeline
tables, then refreshes the materialized views -- with the ADMIN url (the
dashboard role itself is read-only). Used by tests/test_dashboard*.py and
tests/test_browser*.py; the benchmark seeds its own bulk data with SQL.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import psycopg2
import psycopg2.extras

from salespulse.daily_aggregates import rebuild_views

CATEGORIES = ["Electronics", "Books", "Clothing", "Home", "Sports"]
MENU = [("burger", "Burger", "Mains", Decimal("12.50")), ("pizza", "Pizza", "Mains", Decimal("14.00")),
        ("salad", "Salad", "Starters", Decimal("8.00")), ("soda", "Soda", "Drinks", Decimal("3.00")),
        ("cake", "Cake", "Desserts", Decimal("6.50"))]
CHANNELS = ["dine_in", "takeaway", "delivery"]


def minute(ts: datetime) -> datetime:
    return ts.replace(second=0, microsecond=0)


def insert_rows(cur, table: str, rows: list[dict]) -> None:
    if not rows:
        return
    cols = list(rows[0])
    quoted = ", ".join(f'"{c}"' for c in cols)
    psycopg2.extras.execute_values(
        cur, f"INSERT INTO {table} ({quoted}) VALUES %s", [tuple(r[c] for c in cols) for r in rows])


def ecommerce_minute(ws: datetime, k: int) -> dict:
    """One overview row whose numbers depend on k (so each minute differs)."""
    pv, se, ac, rc, pu = 40 + k, 10 + k % 5, 8 + k % 3, 2, 3 + k % 4
    viewed, carted, purchased = 20 + k % 7, 8 + k % 3, 3 + k % 4
    revenue = Decimal(pu) * Decimal("49.90")
    return {"window_start": ws, "events": pv + se + ac + rc + pu, "page_views": pv, "searches": se,
            "add_to_carts": ac, "remove_from_carts": rc, "purchases": pu, "active_users": 15 + k % 9,
            "active_sessions": 18 + k % 9, "sessions_viewed": viewed, "sessions_carted": carted,
            "sessions_purchased": purchased, "conversion_rate": purchased / viewed, "revenue": revenue,
            "units": pu, "avg_order_value": Decimal("49.90"),
            "cart_abandonment_rate": (carted - min(carted, purchased)) / carted}


def seed_reports(cur, now: datetime, minutes: int = 30, offset: int = 1) -> None:
    """Minute report rows for both domains for windows now-minutes..now-offset."""
    eco, cat, prod, rest, item, rcat, chan = [], [], [], [], [], [], []
    for k in range(offset, minutes + 1):
        ws = minute(now) - timedelta(minutes=k)
        eco.append(ecommerce_minute(ws, k))
        for i, c in enumerate(CATEGORIES):
            cat.append({"window_start": ws, "category": c, "revenue": Decimal(10 * (i + 1) + k), "units": i + 1, "orders": 1})
        for i in range(12):
            prod.append({"window_start": ws, "product_id": f"P{i:03d}", "product_name": f"Product {i}",
                         "category": CATEGORIES[i % 5], "revenue": Decimal(5 * (i + 1) + k % 3), "units": i % 4 + 1,
                         "orders": 1})
        orders = 4 + k % 5
        rev = Decimal(orders) * Decimal("23.75")
        rest.append({"window_start": ws, "orders": orders, "items_sold": orders * 3, "revenue": rev,
                     "avg_ticket": Decimal("23.75")})
        for i, (iid, name, c, price) in enumerate(MENU):
            item.append({"window_start": ws, "item_id": iid, "name": name, "category": c, "quantity": i + 1 + k % 2,
                         "revenue": price * (i + 1), "orders": i + 1})
        for c in sorted({m[2] for m in MENU}):
            rcat.append({"window_start": ws, "category": c, "quantity": 3, "revenue": Decimal("20.00") + k, "orders": 2})
        for i, ch in enumerate(CHANNELS):
            chan.append({"window_start": ws, "channel": ch, "orders": i + 1, "revenue": Decimal(10 * (i + 1)),
                         "avg_ticket": Decimal("10.00")})
    insert_rows(cur, "report_ecommerce_overview_minute", eco)
    insert_rows(cur, "report_ecommerce_category_minute", cat)
    insert_rows(cur, "report_ecommerce_product_minute", prod)
    insert_rows(cur, "report_restaurant_overview_minute", rest)
    insert_rows(cur, "report_restaurant_item_minute", item)
    insert_rows(cur, "report_restaurant_category_minute", rcat)
    insert_rows(cur, "report_restaurant_channel_minute", chan)


def seed_raw(cur, now: datetime, events: int = 60, orders: int = 6, age_s: float = 20.0) -> None:
    """Raw events/transactions/orders a few seconds old (for the realtime cards),
    plus older raw rows for the all-time materialized views."""
    products = [{"product_id": f"P{i:03d}", "product_name": f"Product {i}", "category": CATEGORIES[i % 5],
                 "price": Decimal("10.00") + i} for i in range(12)]
    cur.execute("SELECT product_id FROM products")
    known = {r[0] for r in cur.fetchall()}
    insert_rows(cur, "products", [p for p in products if p["product_id"] not in known])
    ev, tx = [], []
    types = ["page_view", "search", "add_to_cart", "remove_from_cart", "purchase"]
    for i in range(events):
        ts = now - timedelta(seconds=age_s) - timedelta(milliseconds=10 * i)
        et = types[i % 5]
        eid = uuid.uuid4()
        pid = products[i % 12]["product_id"] if et != "search" else None
        ev.append({"event_id": str(eid), "event_type": et, "timestamp": ts, "user_id": f"U{i % 17}",
                   "session_id": f"S{i % 23}", "product_id": pid, "search_query": "q" if et == "search" else None})
        if et == "purchase":
            tx.append({"transaction_id": f"T{eid.hex}", "event_id": str(eid), "product_id": pid, "quantity": 1 + i % 3,
                       "total_amount": Decimal("10.00") * (1 + i % 3), "payment_method": "card", "timestamp": ts})
    insert_rows(cur, "events", ev)
    insert_rows(cur, "transactions", tx)
    od = []
    for i in range(orders):
        od.append({"order_id": str(uuid.uuid4()), "timestamp": now - timedelta(seconds=age_s + i),
                   "restaurant_id": "R1", "table_number": (i + 1) if CHANNELS[i % 3] == "dine_in" else None,
                   "channel": CHANNELS[i % 3], "total_amount": Decimal("20.00") + i, "payment_method": "cash",
                   "item_count": 2 + i % 2})
    insert_rows(cur, "orders", od)


def seed_pipeline(cur, now: datetime) -> None:
    obs = []
    for k in range(1, 21):
        for j, topic in enumerate(["ecommerce.events", "restaurant.orders"]):
            obs.append({"observed_at": now - timedelta(minutes=k), "topic": topic, "high_watermark": 10000 - k * 100,
                        "committed": 10000 - k * 100 - (5 + k + j), "lag": 5 + k + j, "messages_per_s": 50.0 + k + 10 * j})
    insert_rows(cur, "pipeline_observations", obs)
    dl = []
    for i in range(7):
        payload = b'{"event_type": "bogus"}' if i % 2 else b"\xff\xfe<script>alert(1)</script>"
        dl.append({"topic": "ecommerce.events" if i < 5 else "restaurant.orders", "partition": i % 3, "offset": i,
                   "key": f"k{i}", "payload": payload,
                   "payload_sha256": hashlib.sha256(payload + bytes([i])).hexdigest(),
                   "error": "invalid event_type" if i % 2 else "payload is not valid UTF-8 JSON",
                   "received_at": now - timedelta(minutes=i + 1)})
    insert_rows(cur, "dead_letters", dl)
    runs = [{"run_id": f"run-{i:04d}-{uuid.uuid4().hex[:8]}", "job_name": "minute_reports", "status": "SUCCESS" if i else "FAILURE",
             "partition": (minute(now) - timedelta(minutes=i + 1)).strftime("%Y-%m-%d-%H:%M"), "message": None,
             "recorded_at": now - timedelta(minutes=i)} for i in range(5)]
    insert_rows(cur, "pipeline_runs", runs)
    # freshness_sensor's record: current reports, a queue that moves
    insert_rows(cur, "pipeline_report_freshness", [
        {"domain": domain, "observed_at": now, "newest_raw_minute": minute(now),
         "newest_window": minute(now) - timedelta(minutes=1), "minutes_behind": 1.0, "target_minutes": 3,
         "stale": False} for domain in ("ecommerce", "restaurant")])
    insert_rows(cur, "pipeline_run_queue", [{"observed_at": now, "in_flight": 1, "queued": 0,
                                              "oldest_queued_seconds": None, "stalled": "[]", "blocked": False}])


def seed_all(admin_url: str, now: datetime | None = None) -> datetime:
    now = now or datetime.now(timezone.utc)
    conn = psycopg2.connect(admin_url)
    try:
        with conn, conn.cursor() as cur:
            seed_reports(cur, now)
            seed_raw(cur, now)
            seed_pipeline(cur, now)
        rebuild_views(conn)
    finally:
        conn.close()
    return now
