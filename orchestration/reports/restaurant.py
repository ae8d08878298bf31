"""Restaurant reports per UTC minute window, computed with Spark.

Sources (read over JDBC as the analytics role, the time range pushed down):

* ``orders`` of the range: ``"timestamp"``, channel, total_amount;
* ``order_items`` of those orders (joined in PostgreSQL to ``orders`` for the
  order's ``"timestamp"``, which is what windows a line): item_id, name,
  category, quantity, line_total, order_id.

An order and all its lines belong to the window ``[m, m + 1 min)`` containing
the order's ``"timestamp"`` (UTC). Metric definitions, per window:

* report_restaurant_overview_minute (one row per minute with >= 1 order;
  minutes without orders get NO row): ``orders`` = number of orders,
  ``items_sold`` = sum of line quantities, ``revenue`` = sum of
  ``orders.total_amount`` (the contract makes it equal to the sum of the
  lines), ``avg_ticket`` = revenue / orders rounded half-up to cents.
* report_restaurant_item_minute (per menu item with >= 1 line): ``quantity`` =
  sum of line quantities, ``revenue`` = sum of ``line_total``, ``orders`` =
  distinct orders containing the item; ``name``/``category`` = the most
  frequent spelling in the window (ties: the greatest), since they travel with
  each order.
* report_restaurant_category_minute: the same per category (``orders`` =
  distinct orders with >= 1 line of the category).
* report_restaurant_channel_minute (per channel with >= 1 order): ``orders``,
  ``revenue`` = sum of total_amount, ``avg_ticket`` = revenue / orders.

Peak hours: ``salespulse.report_queries.peak_hours`` sums the overview table by hour of day.
Revenue identity: sum(overview.revenue) = sum(channel.revenue) =
``sql_reference.sql_revenue(conn, "restaurant", start, end)``.
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
from salespulse.catalog import RESTAURANT
from salespulse.settings import Settings

OVERVIEW, ITEM, CATEGORY, CHANNEL = RESTAURANT.tables

MONEY = "decimal(38,2)"


def orders_query(start: datetime, end: datetime, ranges=None) -> str:
    return (f'SELECT order_id::text AS order_id, "timestamp", channel, total_amount FROM orders '
            'WHERE ' + in_span('"timestamp"', start, end, ranges))


def items_query(start: datetime, end: datetime, ranges=None) -> str:
    return (f'SELECT i.order_id::text AS order_id, o."timestamp", i.item_id, i.name, i.category, i.quantity, '
            f'i.line_total FROM order_items i JOIN orders o ON o.order_id = i.order_id '
            'WHERE ' + in_span('o."timestamp"', start, end, ranges) + ' AND ' + in_span('i."timestamp"', start, end, ranges))


def orders_frame(spark, settings: Settings, start: datetime, end: datetime, ranges=None):
    """Per minute and channel (``channel`` null = all channels) in one result."""
    from pyspark.sql import functions as F

    orders = read_query(spark, jdbc_for(settings), orders_query(start, end, ranges), start, end)
    orders = orders.withColumn("minute", minute_column(F))
    by_channel = orders.groupBy("minute", "channel").agg(
        F.count(F.lit(1)).alias("orders"),
        F.sum("total_amount").cast(MONEY).alias("revenue"),
    )
    total = by_channel.groupBy("minute").agg(
        F.sum("orders").cast("long").alias("orders"),
        F.sum("revenue").cast(MONEY).alias("revenue"),
    ).select("minute", F.lit(None).cast("string").alias("channel"), "orders", "revenue")
    return by_channel.unionByName(total)


def items_frame(spark, settings: Settings, start: datetime, end: datetime, ranges=None):
    """Per minute: item level, category level and the minute's items sold, in one
    result (``level`` = 'item' | 'category' | 'total')."""
    from pyspark.sql import functions as F
    from pyspark.sql.window import Window

    items = read_query(spark, jdbc_for(settings), items_query(start, end, ranges), start, end)
    items = items.withColumn("minute", minute_column(F))
    # one shuffle over the scanned lines; every level below is derived from it
    # (Spark reuses that exchange, so PostgreSQL is scanned once per refresh)
    base = items.groupBy("minute", "order_id", "item_id", "name", "category").agg(
        F.sum("quantity").cast("long").alias("quantity"),
        F.sum("line_total").cast(MONEY).alias("revenue"),
        F.count(F.lit(1)).alias("lines"),
    )

    def level(*keys):
        return base.groupBy("minute", *keys).agg(
            F.sum("quantity").cast("long").alias("quantity"),
            F.sum("revenue").cast(MONEY).alias("revenue"),
            F.countDistinct("order_id").alias("orders"),
            F.sum("lines").cast("long").alias("lines"),
        )

    # the most frequent (name, category) per item in the window, ties -> greatest
    spelled = base.groupBy("minute", "item_id", "name", "category").agg(F.sum("lines").alias("k"))
    rank = Window.partitionBy("minute", "item_id").orderBy(F.desc("k"), F.desc("name"), F.desc("category"))
    names = (spelled.withColumn("r", F.row_number().over(rank)).where(F.col("r") == 1)
             .select("minute", "item_id", "name", "category"))
    item = level("item_id").join(names, ["minute", "item_id"])
    category = level("category")
    total = level()
    null = F.lit(None).cast("string")
    cols = ["quantity", "revenue", "orders", "lines"]
    return (
        item.select(F.lit("item").alias("level"), "minute", "item_id", "name", "category", *cols)
        .unionByName(category.select(F.lit("category").alias("level"), "minute", null.alias("item_id"),
                                     null.alias("name"), "category", *cols))
        .unionByName(total.select(F.lit("total").alias("level"), "minute", null.alias("item_id"),
                                  null.alias("name"), null.alias("category"), *cols))
    )


def compute_restaurant_rows(spark, settings: Settings, start: datetime, end: datetime, ranges=None):
    order_rows, item_rows = run_jobs(lambda: orders_frame(spark, settings, start, end, ranges).collect(),
                                     lambda: items_frame(spark, settings, start, end, ranges).collect())

    totals = {r["minute"]: r for r in order_rows if r["channel"] is None}
    items_total = {r["minute"]: r for r in item_rows if r["level"] == "total"}
    overview = []
    source_rows = 0
    for minute in sorted(totals):
        t = totals[minute]
        revenue, orders = money(t["revenue"]), int(t["orders"])
        it = items_total.get(minute)
        source_rows += orders + (int(it["lines"]) if it else 0)
        overview.append((minute_of(minute), orders, int(it["quantity"]) if it else 0, revenue,
                         ratio_money(revenue, orders)))
    channel = [(minute_of(r["minute"]), r["channel"], int(r["orders"]), money(r["revenue"]),
                ratio_money(money(r["revenue"]), int(r["orders"])))
               for r in order_rows if r["channel"] is not None]
    item = [(minute_of(r["minute"]), r["item_id"], r["name"], r["category"], int(r["quantity"]), money(r["revenue"]),
             int(r["orders"])) for r in item_rows if r["level"] == "item"]
    category = [(minute_of(r["minute"]), r["category"], int(r["quantity"]), money(r["revenue"]), int(r["orders"]))
                for r in item_rows if r["level"] == "category"]
    return {OVERVIEW: overview, ITEM: item, CATEGORY: category, CHANNEL: channel}, source_rows


def refresh_restaurant_reports(spark, settings: Settings, start: datetime, end: datetime,
                               windows=None) -> ReportResult:
    """:func:`~orchestration.reports.common.refresh_domain` of the restaurant reports."""
    return refresh_domain(RESTAURANT, compute_restaurant_rows, spark, settings, start, end, windows)


REPORTS = ReportDomain(RESTAURANT, refresh_restaurant_reports)
