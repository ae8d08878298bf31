"""E-commerce reports per UTC minute window, computed with Spark (DataFrame API).

Sources (read over JDBC as the analytics role, the time range pushed down):

* ``events``  — ``event_type, "timestamp", user_id, session_id`` of the range;
* ``transactions`` joined with ``products`` (current catalogue name and
  category) — one row per purchase: quantity, total_amount, ``"timestamp"``.

A row belongs to the window ``[m, m + 1 min)`` that contains its
``"timestamp"`` (UTC). Metric definitions, per window:

report_ecommerce_overview_minute (one row per minute that has at least one
event or transaction; minutes with neither get NO row):

* ``events``: all events; ``page_views``, ``searches``, ``add_to_carts``,
  ``remove_from_carts``, ``purchases``: events of each type.
* ``active_users`` / ``active_sessions``: distinct ``user_id`` / ``session_id``
  with at least one event (of any type) in the window.
* Funnel (by session, within the window; presence, not order, of the events):
  ``sessions_viewed`` = sessions with >= 1 ``page_view``;
  ``sessions_carted`` = those that also have >= 1 ``add_to_cart``;
  ``sessions_purchased`` = those that also have >= 1 ``purchase``. The funnel
  is nested, so viewed >= carted >= purchased.
* ``conversion_rate`` = sessions_purchased / sessions_viewed (0 when none viewed).
* ``revenue`` = sum of ``transactions.total_amount``; ``units`` = sum of
  ``transactions.quantity``; ``avg_order_value`` = revenue / number of
  transactions, rounded half-up to cents (0 with no transaction).
* ``cart_abandonment_rate`` = (sessions_carted - sessions_purchased) /
  sessions_carted (0 when no session carted): funnel sessions that put
  something in the cart after viewing and did not buy within the minute.

report_ecommerce_category_minute / report_ecommerce_product_minute (one row per
window and category / product with at least one transaction): ``revenue`` = sum
of total_amount, ``units`` = sum of quantity, ``orders`` = number of
transactions. Name and category are the product's current catalogue entry.
"Top products" = these rows ranked by revenue (done by the dashboard).

Revenue identity (checked by the tests and the Dagster reconciliation check):
sum(overview.revenue) = sum(category.revenue) = sum(product.revenue) =
``sql_reference.sql_revenue(conn, "ecommerce", start, end)``.
"""

from __future__ import annotations

from datetime import datetime

from orchestration.reports.common import (
    ReportDomain,
    ReportResult,
    in_span,
    jdbc_for,
    minute_column,
    minute_of,
    money,
    ratio_money,
    read_query,
    refresh_domain,
    run_jobs,
)
from salespulse.catalog import ECOMMERCE
from salespulse.settings import Settings

OVERVIEW, CATEGORY, PRODUCT = ECOMMERCE.tables

EVENT_TYPES = ("page_view", "search", "add_to_cart", "remove_from_cart", "purchase")


def events_query(start: datetime, end: datetime, ranges=None) -> str:
    return (f'SELECT event_type, "timestamp", user_id, session_id FROM events '
            'WHERE ' + in_span('"timestamp"', start, end, ranges))


def transactions_query(start: datetime, end: datetime, ranges=None) -> str:
    return (f'SELECT t.product_id, p.product_name, p.category, t.quantity, t.total_amount, t."timestamp" '
            f'FROM transactions t JOIN products p ON p.product_id = t.product_id '
            'WHERE ' + in_span('t."timestamp"', start, end, ranges))


def event_overview_frame(spark, settings: Settings, start: datetime, end: datetime, ranges=None):
    """Per minute: event counts by type, active users/sessions and the session funnel.

    Two aggregation levels over ONE scan: (minute, session) -> flags and
    counts, then minute -> sums; distinct users are the union of each
    session's user set (exact even if a session carried several users).
    """
    from pyspark.sql import functions as F

    events = read_query(spark, jdbc_for(settings), events_query(start, end, ranges), start, end)
    events = events.withColumn("minute", minute_column(F))
    is_type = {t: F.when(F.col("event_type") == t, 1).otherwise(0) for t in EVENT_TYPES}
    per_session = events.groupBy("minute", "session_id").agg(
        F.count(F.lit(1)).alias("n"),
        *[F.sum(is_type[t]).alias(t) for t in EVENT_TYPES],
        F.collect_set("user_id").alias("users"),
    )
    viewed = F.col("page_view") > 0
    carted = viewed & (F.col("add_to_cart") > 0)
    purchased = carted & (F.col("purchase") > 0)
    return per_session.groupBy("minute").agg(
        F.sum("n").alias("events"),
        F.sum("page_view").alias("page_views"),
        F.sum("search").alias("searches"),
        F.sum("add_to_cart").alias("add_to_carts"),
        F.sum("remove_from_cart").alias("remove_from_carts"),
        F.sum("purchase").alias("purchases"),
        F.size(F.array_distinct(F.flatten(F.collect_list("users")))).alias("active_users"),
        F.count(F.lit(1)).alias("active_sessions"),
        F.sum(viewed.cast("long")).alias("sessions_viewed"),
        F.sum(carted.cast("long")).alias("sessions_carted"),
        F.sum(purchased.cast("long")).alias("sessions_purchased"),
    )


def sales_frame(spark, settings: Settings, start: datetime, end: datetime, ranges=None):
    """Per minute sales at three levels in ONE result (one JDBC scan; the
    product-level shuffle is reused by the category and total branches):
    ``level`` = 'product' | 'category' | 'total'."""
    from pyspark.sql import functions as F

    money_type = "decimal(38,2)"
    tx = read_query(spark, jdbc_for(settings), transactions_query(start, end, ranges), start, end)
    tx = tx.withColumn("minute", minute_column(F))
    product = tx.groupBy("minute", "product_id", "product_name", "category").agg(
        F.sum("total_amount").cast(money_type).alias("revenue"),
        F.sum("quantity").cast("long").alias("units"),
        F.count(F.lit(1)).alias("orders"),
    )
    category = product.groupBy("minute", "category").agg(
        F.sum("revenue").cast(money_type).alias("revenue"),
        F.sum("units").cast("long").alias("units"),
        F.sum("orders").cast("long").alias("orders"),
    )
    total = product.groupBy("minute").agg(
        F.sum("revenue").cast(money_type).alias("revenue"),
        F.sum("units").cast("long").alias("units"),
        F.sum("orders").cast("long").alias("orders"),
    )
    null = F.lit(None).cast("string")
    cols = ["level", "minute", "product_id", "product_name", "category", "revenue", "units", "orders"]
    return (
        product.select(F.lit("product").alias("level"), *cols[1:])
        .unionByName(category.select(F.lit("category").alias("level"), "minute", null.alias("product_id"),
                                     null.alias("product_name"), "category", "revenue", "units", "orders"))
        .unionByName(total.select(F.lit("total").alias("level"), "minute", null.alias("product_id"),
                                  null.alias("product_name"), null.alias("category"), "revenue", "units", "orders"))
    )


def compute_ecommerce_rows(spark, settings: Settings, start: datetime, end: datetime, ranges=None):
    """Run the Spark part; return ``(rows per table, source_rows)`` ready to insert."""
    event_rows, sales_rows = run_jobs(lambda: event_overview_frame(spark, settings, start, end, ranges).collect(),
                                      lambda: sales_frame(spark, settings, start, end, ranges).collect())

    totals = {r["minute"]: r for r in sales_rows if r["level"] == "total"}
    overview = []
    events_by_minute = {r["minute"]: r for r in event_rows}
    source_rows = 0
    for minute in sorted(set(events_by_minute) | set(totals)):
        e = events_by_minute.get(minute)
        t = totals.get(minute)
        ev = {k: int(e[k] or 0) if e else 0 for k in (
            "events", "page_views", "searches", "add_to_carts", "remove_from_carts", "purchases",
            "active_users", "active_sessions", "sessions_viewed", "sessions_carted", "sessions_purchased")}
        revenue = money(t["revenue"]) if t else money(0)
        units = int(t["units"]) if t else 0
        orders = int(t["orders"]) if t else 0
        source_rows += ev["events"] + orders
        viewed, carted, bought = ev["sessions_viewed"], ev["sessions_carted"], ev["sessions_purchased"]
        overview.append((
            minute_of(minute), ev["events"], ev["page_views"], ev["searches"], ev["add_to_carts"],
            ev["remove_from_carts"], ev["purchases"], ev["active_users"], ev["active_sessions"],
            viewed, carted, bought,
            bought / viewed if viewed else 0.0,
            revenue, units, ratio_money(revenue, orders),
            (carted - bought) / carted if carted else 0.0,
        ))
    category = [(minute_of(r["minute"]), r["category"], money(r["revenue"]), int(r["units"]), int(r["orders"]))
                for r in sales_rows if r["level"] == "category"]
    product = [(minute_of(r["minute"]), r["product_id"], r["product_name"], r["category"], money(r["revenue"]),
                int(r["units"]), int(r["orders"]))
               for r in sales_rows if r["level"] == "product"]
    return {OVERVIEW: overview, CATEGORY: category, PRODUCT: product}, source_rows


def refresh_ecommerce_reports(spark, settings: Settings, start: datetime, end: datetime,
                              windows=None) -> ReportResult:
    """:func:`~orchestration.reports.common.refresh_domain` of the e-commerce reports."""
    return refresh_domain(ECOMMERCE, compute_ecommerce_rows, spark, settings, start, end, windows)


REPORTS = ReportDomain(ECOMMERCE, refresh_ecommerce_reports)
