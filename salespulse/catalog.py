"""The domains, declared once: each one's Kafka topic, raw tables, report
tables (with the columns a refresh writes, the dimension a drill-down selects
and the columns that add up over windows) and its Dagster asset.

Everything that needs one of these facts reads it here: the report code and
its Dagster assets, sensors and checks (``orchestration/``), freshness and
``salespulse status`` (``salespulse/freshness.py``,
``salespulse/dagster_runs.py``), raw-table retention
(``salespulse/partitions.py``) and the dashboard's queries and drill-down
(``dashboard/``). It lives in the base package because ``orchestration/`` and
``dashboard/`` may not import each other. The tables themselves are created
by the migrations in ``sql/``; docs/architecture.md has the recipe for a new
domain.
"""

from __future__ import annotations

from dataclasses import dataclass

from salespulse.contracts import ECOMMERCE_TOPIC, RESTAURANT_TOPIC


@dataclass(frozen=True)
class Report:
    """One report table of a domain, one row per minute window (and dimension value)."""

    name: str
    table: str
    #: the columns a refresh writes, ``window_start`` first
    columns: tuple[str, ...]
    #: the column a drill-down figure's ``value`` selects (None: the overview, one row per window)
    dimension: str | None
    #: the columns that add up over windows (a drill-down's totals)
    additive: tuple[str, ...]


@dataclass(frozen=True)
class Domain:
    name: str
    #: how the dashboard and Dagster's descriptions name it
    title: str
    #: the Kafka topic whose messages are stored in :attr:`raw_table`
    topic: str
    #: the raw table of the topic's messages: its rows' latency, newest event
    #: and per-minute count (freshness, completeness, restatements)
    raw_table: str
    #: every raw table the reports are computed from
    raw_tables: tuple[str, ...]
    #: the raw table whose ``total_amount`` adds up to the domain's revenue (reconciliation)
    revenue_table: str
    #: the raw columns a drill-down lists (and its CSV)
    raw_columns: tuple[str, ...]
    #: the report tables, the overview first
    reports: tuple[Report, ...]
    #: the overview column counting :attr:`raw_table`'s rows per window
    counted: str
    #: what the reports hold, in a sentence or two (the Dagster asset's description)
    summary: str

    @property
    def overview(self) -> str:
        return self.reports[0].table

    @property
    def tables(self) -> tuple[str, ...]:
        return tuple(r.table for r in self.reports)

    @property
    def asset(self) -> str:
        """The name of the Dagster asset that refreshes the reports (its group is the domain's name)."""
        return f"{self.name}_reports"

    def report(self, name: str) -> Report:
        return next(r for r in self.reports if r.name == name)


ECOMMERCE = Domain(
    name="ecommerce",
    title="E-commerce",
    topic=ECOMMERCE_TOPIC.name,
    raw_table="events",
    raw_tables=("events", "products", "transactions"),
    revenue_table="transactions",
    raw_columns=("event_id", "event_type", "timestamp", "user_id", "session_id", "product_id", "category",
                 "quantity", "total_amount"),
    reports=(
        Report("overview", "report_ecommerce_overview_minute", (
            "window_start", "events", "page_views", "searches", "add_to_carts", "remove_from_carts", "purchases",
            "active_users", "active_sessions", "sessions_viewed", "sessions_carted", "sessions_purchased",
            "conversion_rate", "revenue", "units", "avg_order_value", "cart_abandonment_rate"),
            None, ("events", "page_views", "searches", "add_to_carts", "remove_from_carts", "purchases",
                   "revenue", "units")),
        Report("category", "report_ecommerce_category_minute",
               ("window_start", "category", "revenue", "units", "orders"),
               "category", ("revenue", "units", "orders")),
        Report("product", "report_ecommerce_product_minute",
               ("window_start", "product_id", "product_name", "category", "revenue", "units", "orders"),
               "product_id", ("revenue", "units", "orders")),
    ),
    counted="events",
    summary=(
        "Per-minute e-commerce reports computed by Spark for the partition's hour: overview "
        "(events by type, active users/sessions, funnel, conversion, revenue, units, average "
        "order value, cart abandonment), sales by category and by product."
    ),
)

RESTAURANT = Domain(
    name="restaurant",
    title="Restaurant",
    topic=RESTAURANT_TOPIC.name,
    raw_table="orders",
    raw_tables=("orders", "order_items"),
    revenue_table="orders",
    raw_columns=("order_id", "timestamp", "restaurant_id", "channel", "table_number", "item_count",
                 "total_amount", "payment_method"),
    reports=(
        Report("overview", "report_restaurant_overview_minute",
               ("window_start", "orders", "items_sold", "revenue", "avg_ticket"),
               None, ("orders", "items_sold", "revenue")),
        Report("item", "report_restaurant_item_minute",
               ("window_start", "item_id", "name", "category", "quantity", "revenue", "orders"),
               "item_id", ("quantity", "revenue", "orders")),
        Report("category", "report_restaurant_category_minute",
               ("window_start", "category", "quantity", "revenue", "orders"),
               "category", ("quantity", "revenue", "orders")),
        Report("channel", "report_restaurant_channel_minute",
               ("window_start", "channel", "orders", "revenue", "avg_ticket"),
               "channel", ("orders", "revenue")),
    ),
    counted="orders",
    summary=(
        "Per-minute restaurant reports computed by Spark for the partition's hour: "
        "orders, items sold, revenue and average ticket, and revenue by item, category and "
        "channel."
    ),
)

#: domain name -> domain
DOMAINS: dict[str, Domain] = {d.name: d for d in (ECOMMERCE, RESTAURANT)}
