"""SQL for every dashboard endpoint. Parameters are always bound (psycopg2 %(name)s).

Every query reads either a materialized view (small, all-time aggregates) or a
bounded ``window_start`` range of a minute report table (primary-key prefix),
or the last minute of a raw table through its ``"timestamp"`` index. None
scans a raw table without a time bound.
"""

from __future__ import annotations

from datetime import datetime, timezone

from dashboard.db import Database
from dashboard.params import (
    ItemParams, LimitParams, PeakHoursParams, PipelineParams, RangeAllParams, TimeRange, TimelineParams,
)
from salespulse.catalog import DOMAINS, ECOMMERCE, RESTAURANT
from salespulse.freshness import RECORD_MAX_AGE_S
from salespulse.report_queries import PEAK_HOURS_SQL

E_OVERVIEW, E_CATEGORY, E_PRODUCT = ECOMMERCE.tables
R_OVERVIEW, R_ITEM, R_CATEGORY, R_CHANNEL = RESTAURANT.tables

ORIGIN = datetime(2000, 1, 1, tzinfo=timezone.utc)


def _window(p: TimeRange) -> dict:
    start, end = p.window()
    return {"start": start, "end": end}


def _meta(p: TimeRange) -> dict:
    if getattr(p, "is_all", False):
        return {"range": "all", "from": None, "to": None}
    start, end = p.window()
    return {"range": None if p.from_ else p.range, "from": start, "to": end}


def _div(a, b):
    return float(a) / float(b) if b else 0.0


# ---------------------------------------------------------------- e-commerce
def ecommerce_summary(db: Database, p: RangeAllParams) -> dict:
    if p.is_all:
        row = db.query(
            """SELECT COALESCE(SUM(events), 0)::BIGINT AS events,
                      COALESCE(SUM(revenue), 0)::NUMERIC(14, 2) AS revenue,
                      COALESCE(SUM(purchases), 0)::BIGINT AS orders,
                      COALESCE(SUM(units), 0)::BIGINT AS units,
                      COALESCE(MAX(unique_users), 0)::BIGINT AS active_users_peak,
                      COUNT(*) AS days, MAX(day) AS last_day
               FROM daily_metrics""")[0]
        return {**_meta(p), "source": "daily_metrics", **row,
                "avg_order_value": round(_div(row["revenue"], row["orders"]), 2),
                "conversion_rate": None, "cart_abandonment_rate": None}
    row = db.query(
        f"""SELECT COALESCE(SUM(events), 0)::BIGINT AS events,
                  COALESCE(SUM(revenue), 0)::NUMERIC(14, 2) AS revenue,
                  COALESCE(SUM(purchases), 0)::BIGINT AS orders,
                  COALESCE(SUM(units), 0)::BIGINT AS units,
                  COALESCE(SUM(sessions_viewed), 0)::BIGINT AS sessions_viewed,
                  COALESCE(SUM(sessions_carted), 0)::BIGINT AS sessions_carted,
                  COALESCE(SUM(sessions_purchased), 0)::BIGINT AS sessions_purchased,
                  COALESCE(MAX(active_users), 0)::BIGINT AS active_users_peak,
                  COALESCE(ROUND(AVG(active_users), 1), 0)::FLOAT AS active_users_avg,
                  COUNT(*) AS windows, MAX(window_start) AS last_window_start
           FROM {E_OVERVIEW}
           WHERE window_start >= %(start)s AND window_start < %(end)s""", _window(p))[0]
    carted = row["sessions_carted"]
    return {**_meta(p), "source": E_OVERVIEW, **row,
            "avg_order_value": round(_div(row["revenue"], row["orders"]), 2),
            "conversion_rate": round(_div(row["sessions_purchased"], row["sessions_viewed"]), 4),
            "cart_abandonment_rate": round(_div(carted - min(carted, row["sessions_purchased"]), carted), 4)}


def ecommerce_timeline(db: Database, p: TimelineParams) -> dict:
    if p.is_all:
        rows = db.query(
            """SELECT day::TIMESTAMP AT TIME ZONE 'UTC' AS t, events, purchases, revenue, units,
                      unique_users AS active_users
               FROM daily_metrics ORDER BY day DESC LIMIT 400""")
        return {**_meta(p), "bucket": "1d", "bucket_seconds": 86400, "source": "daily_metrics",
                "points": rows[::-1]}
    width = p.bucket_width()
    rows = db.query(
        f"""WITH b AS (
               SELECT t FROM generate_series(date_bin(%(bucket)s, %(start)s::TIMESTAMPTZ, %(origin)s),
                                             %(end)s::TIMESTAMPTZ, %(bucket)s) AS t
               WHERE t < %(end)s),
           r AS (
               SELECT date_bin(%(bucket)s, window_start, %(origin)s) AS t,
                      SUM(events) AS events, SUM(page_views) AS page_views, SUM(searches) AS searches,
                      SUM(add_to_carts) AS add_to_carts, SUM(remove_from_carts) AS remove_from_carts,
                      SUM(purchases) AS purchases, SUM(revenue) AS revenue, SUM(units) AS units,
                      MAX(active_users) AS active_users
               FROM {E_OVERVIEW}
               WHERE window_start >= %(start)s AND window_start < %(end)s
               GROUP BY 1)
           SELECT b.t, COALESCE(events, 0)::BIGINT AS events, COALESCE(page_views, 0)::BIGINT AS page_views,
                  COALESCE(searches, 0)::BIGINT AS searches, COALESCE(add_to_carts, 0)::BIGINT AS add_to_carts,
                  COALESCE(remove_from_carts, 0)::BIGINT AS remove_from_carts,
                  COALESCE(purchases, 0)::BIGINT AS purchases, COALESCE(revenue, 0)::NUMERIC(14, 2) AS revenue,
                  COALESCE(units, 0)::BIGINT AS units, COALESCE(active_users, 0)::BIGINT AS active_users
           FROM b LEFT JOIN r USING (t) ORDER BY b.t""",
        {**_window(p), "bucket": width, "origin": ORIGIN})
    return {**_meta(p), "bucket_seconds": int(width.total_seconds()),
            "source": E_OVERVIEW, "points": rows}


def ecommerce_top_products(db: Database, p: LimitParams) -> dict:
    if p.is_all:
        rows = db.query(
            """SELECT product_id, product_name, category, revenue, units, orders
               FROM top_products ORDER BY revenue DESC, product_id LIMIT %(limit)s""", {"limit": p.limit})
        return {**_meta(p), "source": "top_products", "products": rows}
    rows = db.query(
        f"""SELECT product_id, MAX(product_name) AS product_name, MAX(category) AS category,
                  SUM(revenue)::NUMERIC(14, 2) AS revenue, SUM(units)::BIGINT AS units, SUM(orders)::BIGINT AS orders
           FROM {E_PRODUCT}
           WHERE window_start >= %(start)s AND window_start < %(end)s
           GROUP BY product_id ORDER BY revenue DESC, product_id LIMIT %(limit)s""",
        {**_window(p), "limit": p.limit})
    return {**_meta(p), "source": E_PRODUCT, "products": rows}


def ecommerce_by_category(db: Database, p: RangeAllParams) -> dict:
    if p.is_all:
        rows = db.query(
            """SELECT category, revenue, units, orders FROM sales_by_category
               ORDER BY revenue DESC, category LIMIT 200""")
        return {**_meta(p), "source": "sales_by_category", "categories": rows}
    rows = db.query(
        f"""SELECT category, SUM(revenue)::NUMERIC(14, 2) AS revenue, SUM(units)::BIGINT AS units,
                  SUM(orders)::BIGINT AS orders
           FROM {E_CATEGORY}
           WHERE window_start >= %(start)s AND window_start < %(end)s
           GROUP BY category ORDER BY revenue DESC, category LIMIT 200""", _window(p))
    return {**_meta(p), "source": E_CATEGORY, "categories": rows}


EVENT_TYPES = ("page_view", "search", "add_to_cart", "remove_from_cart", "purchase")


def ecommerce_event_types(db: Database, p: TimeRange) -> dict:
    row = db.query(
        f"""SELECT COALESCE(SUM(page_views), 0)::BIGINT AS page_view, COALESCE(SUM(searches), 0)::BIGINT AS search,
                  COALESCE(SUM(add_to_carts), 0)::BIGINT AS add_to_cart,
                  COALESCE(SUM(remove_from_carts), 0)::BIGINT AS remove_from_cart,
                  COALESCE(SUM(purchases), 0)::BIGINT AS purchase
           FROM {E_OVERVIEW}
           WHERE window_start >= %(start)s AND window_start < %(end)s""", _window(p))[0]
    return {**_meta(p), "source": E_OVERVIEW,
            "event_types": [{"event_type": t, "count": row[t]} for t in EVENT_TYPES]}


def ecommerce_realtime(db: Database, p=None) -> dict:
    """Last minute from the raw tables (indexed "timestamp" ranges): reports lag up to a minute."""
    ev = db.query(
        """SELECT now() AS as_of, COUNT(*)::BIGINT AS events,
                  COUNT(DISTINCT user_id)::BIGINT AS active_users,
                  COUNT(DISTINCT session_id)::BIGINT AS active_sessions,
                  COUNT(*) FILTER (WHERE event_type = 'page_view')::BIGINT AS page_view,
                  COUNT(*) FILTER (WHERE event_type = 'search')::BIGINT AS search,
                  COUNT(*) FILTER (WHERE event_type = 'add_to_cart')::BIGINT AS add_to_cart,
                  COUNT(*) FILTER (WHERE event_type = 'remove_from_cart')::BIGINT AS remove_from_cart,
                  COUNT(*) FILTER (WHERE event_type = 'purchase')::BIGINT AS purchase
           FROM events WHERE "timestamp" >= now() - INTERVAL '1 minute'""")[0]
    tx = db.query(
        """SELECT COUNT(*)::BIGINT AS orders, COALESCE(SUM(total_amount), 0)::NUMERIC(14, 2) AS revenue,
                  COALESCE(SUM(quantity), 0)::BIGINT AS units
           FROM transactions WHERE "timestamp" >= now() - INTERVAL '1 minute'""")[0]
    return {"window_seconds": 60, "as_of": ev["as_of"], "source": "events,transactions",
            "events": ev["events"], "events_per_second": round(ev["events"] / 60.0, 2),
            "active_users": ev["active_users"], "active_sessions": ev["active_sessions"],
            "orders": tx["orders"], "revenue": tx["revenue"], "units": tx["units"],
            "event_types": {t: ev[t] for t in EVENT_TYPES}}


# ---------------------------------------------------------------- restaurant
def restaurant_summary(db: Database, p: TimeRange) -> dict:
    row = db.query(
        f"""SELECT COALESCE(SUM(orders), 0)::BIGINT AS orders, COALESCE(SUM(items_sold), 0)::BIGINT AS items_sold,
                  COALESCE(SUM(revenue), 0)::NUMERIC(14, 2) AS revenue,
                  COUNT(*) AS windows, MAX(window_start) AS last_window_start
           FROM {R_OVERVIEW}
           WHERE window_start >= %(start)s AND window_start < %(end)s""", _window(p))[0]
    return {**_meta(p), "source": R_OVERVIEW, **row,
            "avg_ticket": round(_div(row["revenue"], row["orders"]), 2),
            "items_per_order": round(_div(row["items_sold"], row["orders"]), 2)}


def restaurant_timeline(db: Database, p: TimelineParams) -> dict:
    width = p.bucket_width()
    rows = db.query(
        f"""WITH b AS (
               SELECT t FROM generate_series(date_bin(%(bucket)s, %(start)s::TIMESTAMPTZ, %(origin)s),
                                             %(end)s::TIMESTAMPTZ, %(bucket)s) AS t
               WHERE t < %(end)s),
           r AS (
               SELECT date_bin(%(bucket)s, window_start, %(origin)s) AS t, SUM(orders) AS orders,
                      SUM(items_sold) AS items_sold, SUM(revenue) AS revenue
               FROM {R_OVERVIEW}
               WHERE window_start >= %(start)s AND window_start < %(end)s
               GROUP BY 1)
           SELECT b.t, COALESCE(orders, 0)::BIGINT AS orders, COALESCE(items_sold, 0)::BIGINT AS items_sold,
                  COALESCE(revenue, 0)::NUMERIC(14, 2) AS revenue,
                  CASE WHEN COALESCE(orders, 0) = 0 THEN 0 ELSE ROUND(revenue / orders, 2) END::NUMERIC(14, 2) AS avg_ticket
           FROM b LEFT JOIN r USING (t) ORDER BY b.t""",
        {**_window(p), "bucket": width, "origin": ORIGIN})
    return {**_meta(p), "bucket_seconds": int(width.total_seconds()),
            "source": R_OVERVIEW, "points": rows}


def restaurant_top_items(db: Database, p: ItemParams) -> dict:
    order = {"revenue": "revenue DESC", "quantity": "quantity DESC"}[p.sort]  # fixed whitelist, never user text
    rows = db.query(
        f"""SELECT item_id, MAX(name) AS name, MAX(category) AS category, SUM(quantity)::BIGINT AS quantity,
                   SUM(revenue)::NUMERIC(14, 2) AS revenue, SUM(orders)::BIGINT AS orders
            FROM {R_ITEM}
            WHERE window_start >= %(start)s AND window_start < %(end)s
            GROUP BY item_id ORDER BY {order}, item_id LIMIT %(limit)s""",
        {**_window(p), "limit": p.limit})
    return {**_meta(p), "sort": p.sort, "source": R_ITEM, "items": rows}


def restaurant_by_category(db: Database, p: TimeRange) -> dict:
    rows = db.query(
        f"""SELECT category, SUM(quantity)::BIGINT AS quantity, SUM(revenue)::NUMERIC(14, 2) AS revenue,
                  SUM(orders)::BIGINT AS orders
           FROM {R_CATEGORY}
           WHERE window_start >= %(start)s AND window_start < %(end)s
           GROUP BY category ORDER BY revenue DESC, category LIMIT 200""", _window(p))
    return {**_meta(p), "source": R_CATEGORY, "categories": rows}


def restaurant_channels(db: Database, p: TimeRange) -> dict:
    rows = db.query(
        f"""SELECT channel, SUM(orders)::BIGINT AS orders, SUM(revenue)::NUMERIC(14, 2) AS revenue,
                  CASE WHEN SUM(orders) = 0 THEN 0 ELSE ROUND(SUM(revenue) / SUM(orders), 2) END::NUMERIC(14, 2) AS avg_ticket
           FROM {R_CHANNEL}
           WHERE window_start >= %(start)s AND window_start < %(end)s
           GROUP BY channel ORDER BY channel""", _window(p))
    return {**_meta(p), "source": R_CHANNEL, "channels": rows}


def restaurant_peak_hours(db: Database, p: PeakHoursParams) -> dict:
    rows = db.query(PEAK_HOURS_SQL, {**_window(p), "tz": p.tz})
    peak = max(rows, key=lambda r: (r["orders"], -r["hour"])) if rows else None
    return {**_meta(p), "tz": p.tz, "source": R_OVERVIEW, "hours": rows,
            "peak_hour": peak["hour"] if peak and peak["orders"] else None}


CHANNELS = ("dine_in", "takeaway", "delivery")


def restaurant_realtime(db: Database, p=None) -> dict:
    row = db.query(
        """SELECT now() AS as_of, COUNT(*)::BIGINT AS orders,
                  COALESCE(SUM(total_amount), 0)::NUMERIC(14, 2) AS revenue,
                  COALESCE(SUM(item_count), 0)::BIGINT AS items,
                  COUNT(*) FILTER (WHERE channel = 'dine_in')::BIGINT AS dine_in,
                  COUNT(*) FILTER (WHERE channel = 'takeaway')::BIGINT AS takeaway,
                  COUNT(*) FILTER (WHERE channel = 'delivery')::BIGINT AS delivery
           FROM orders WHERE "timestamp" >= now() - INTERVAL '1 minute'""")[0]
    return {"window_seconds": 60, "as_of": row["as_of"], "source": "orders",
            "orders": row["orders"], "revenue": row["revenue"], "items": row["items"],
            "avg_ticket": round(_div(row["revenue"], row["orders"]), 2),
            "orders_per_minute": row["orders"], "channels": {c: row[c] for c in CHANNELS}}


# ---------------------------------------------------------------- pipeline
def pipeline_status(db: Database, p: PipelineParams, dagster_ui_url: str) -> dict:
    w = _window(p)
    topics = db.query(
        """SELECT DISTINCT ON (topic) topic, observed_at, high_watermark, committed, lag, messages_per_s
           FROM pipeline_observations
           WHERE observed_at >= %(start)s AND observed_at < %(end)s
           ORDER BY topic, observed_at DESC""", w)
    span = (w["end"] - w["start"]).total_seconds()
    bucket_s = next(s for s in (60, 300, 900, 3600, 86400) if span / s <= 360 or s == 86400)
    series = db.query(
        """SELECT topic, to_timestamp(floor(extract(epoch FROM observed_at) / %(b)s) * %(b)s) AS t,
                  MAX(lag)::BIGINT AS lag, ROUND(AVG(messages_per_s)::NUMERIC, 2)::FLOAT AS messages_per_s
           FROM pipeline_observations
           WHERE observed_at >= %(start)s AND observed_at < %(end)s
           GROUP BY 1, 2 ORDER BY 1, 2""", {**w, "b": bucket_s})
    dl = db.query(
        """SELECT topic, COUNT(*)::BIGINT AS count FROM dead_letters
           WHERE received_at >= %(start)s AND received_at < %(end)s GROUP BY topic ORDER BY topic""", w)
    reasons = db.query(
        """SELECT left(error, 300) AS reason, topic, COUNT(*)::BIGINT AS count, MAX(received_at) AS last_seen
           FROM dead_letters WHERE received_at >= %(start)s AND received_at < %(end)s
           GROUP BY 1, 2 ORDER BY count DESC, last_seen DESC LIMIT %(limit)s""", {**w, "limit": p.limit})
    recent = db.query(
        """SELECT id, topic, "partition", "offset", key, left(error, 300) AS reason, received_at,
                  encode(substring(payload FROM 1 FOR 120), 'escape') AS payload_preview
           FROM dead_letters WHERE received_at >= %(start)s AND received_at < %(end)s
           ORDER BY received_at DESC, id DESC LIMIT %(limit)s""", {**w, "limit": p.limit})
    # computed_at is indexed (sql/030): the newest write, even a backfill of old windows
    reports = db.query(" UNION ALL ".join(
        f"""SELECT '{d.name}' AS domain, (SELECT max(window_start) FROM {d.overview}) AS window_start,
                   (SELECT max(computed_at) FROM {d.overview}) AS computed_at""" for d in DOMAINS.values()))
    runs = db.query(
        """SELECT run_id, job_name, status, partition, left(message, 500) AS message, recorded_at
           FROM pipeline_runs ORDER BY recorded_at DESC LIMIT %(limit)s""", {"limit": p.limit})
    # what reached the raw tables in the last minute (indexed "timestamp" ranges):
    # a throughput figure that does not depend on the Dagster lag sensor running
    ingest = db.query("SELECT now() AS now, " + ", ".join(
        f"""(SELECT count(*) FROM {d.raw_table} WHERE "timestamp" >= now() - INTERVAL '1 minute')::BIGINT
            AS {d.raw_table}""" for d in DOMAINS.values()))[0]
    now = ingest["now"]
    last_report = max((r["computed_at"] for r in reports if r["computed_at"]), default=None)
    last_window = max((r["window_start"] for r in reports if r["window_start"]), default=None)
    return {
        **_meta(p), "as_of": now,
        "topics": topics,
        "lag_total": sum(int(t["lag"]) for t in topics),
        "throughput_messages_per_s": round(sum(float(t["messages_per_s"] or 0) for t in topics), 2),
        "ingest_last_minute": {**{d.raw_table: ingest[d.raw_table] for d in DOMAINS.values()},
                               "messages_per_s": round(sum(ingest[d.raw_table] for d in DOMAINS.values()) / 60.0,
                                                       2)},
        "series_bucket_seconds": bucket_s, "series": series,
        "dead_letters": {"total": sum(int(d["count"]) for d in dl), "by_topic": dl,
                         "reasons": reasons, "recent": recent},
        "reports": {r["domain"]: {"last_window_start": r["window_start"], "computed_at": r["computed_at"]}
                    for r in reports},
        "last_report_at": last_report,
        "last_report_window_start": last_window,
        "report_age_seconds": round((now - last_report).total_seconds(), 1) if last_report else None,
        "runs": runs,
        "dagster_ui_url": dagster_ui_url,
        "freshness": freshness(db, now),
    }


def freshness(db: Database, now: datetime) -> dict:
    """What ``freshness_sensor`` last recorded (sql/050, sql/150): each domain's
    newest report window and its state by the freshness rule
    (``salespulse.freshness``; ``stale`` is state = stale), whether runs are queued
    behind runs making no progress; plus how old that record is, since a
    record nobody refreshes says nothing about now. Both tables hold one row
    per domain / one row, so the LIMITs only guard against surprises."""
    reports = db.query(
        """SELECT domain, observed_at, newest_raw_minute, newest_window, minutes_behind, target_minutes, stale, state
           FROM pipeline_report_freshness ORDER BY domain LIMIT 20""")
    queue = db.query(
        """SELECT observed_at, in_flight, queued, oldest_queued_seconds, stalled, blocked
           FROM pipeline_run_queue LIMIT 1""")
    queue = queue[0] if queue else None
    observed = [r["observed_at"] for r in reports] + ([queue["observed_at"]] if queue else [])
    checked_at = min(observed, default=None)  # the oldest part: every part must be recent
    age = round(max((now - checked_at).total_seconds(), 0.0), 1) if checked_at else None
    return {
        "checked_at": checked_at,
        "check_age_seconds": age,
        "check_max_age_seconds": RECORD_MAX_AGE_S,
        "check_current": age is not None and age <= RECORD_MAX_AGE_S,
        "reports": reports,
        "queue": queue,
        "stale": any(r["stale"] for r in reports) or bool(queue and queue["blocked"]),
    }
