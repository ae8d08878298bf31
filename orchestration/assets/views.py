"""Materialized-view assets: ``REFRESH MATERIALIZED VIEW CONCURRENTLY`` as the
analytics role (the views' owner), in autocommit mode (a concurrent refresh
cannot run inside a transaction block).

A concurrent refresh keeps the dashboard's reads unblocked while it runs. The
views read the per-day aggregates of ``daily_aggregates`` (an asset upstream
of them: ``salespulse.daily_aggregates`` recomputes only the days that
changed), so a refresh costs in days x products, not in events stored.
"""


import time

from dagster import AssetExecutionContext, AssetsDefinition, MaterializeResult, MetadataValue, asset
from psycopg2 import sql

from orchestration.resources import PostgresResource
from salespulse.daily_aggregates import maintain

VIEWS = {
    "sales_by_category": (["daily_aggregates", "products"],
                          "Revenue, units and orders per product category (all time), with the last sale time."),
    "top_products": (["daily_aggregates", "products"],
                     "Units, revenue and orders per product (all time); the dashboard's top products."),
    "daily_metrics": (["daily_aggregates"],
                      "Per UTC day: events, unique users, sessions, purchases, revenue, units, average order value."),
}


@asset(
    name="daily_aggregates",
    group_name="ecommerce",
    deps=["events", "transactions"],
    kinds={"postgres"},
    description=("Per UTC day (and product): events, exact unique users and sessions, purchases, units, revenue "
                 "(`daily_event_totals`, `daily_product_sales`). Only the days that received rows since the "
                 "last run are recomputed, from that day's raw rows."),
)
def daily_aggregates(context: AssetExecutionContext, postgres: PostgresResource) -> MaterializeResult:
    started = time.perf_counter()
    with postgres.connection() as conn:
        done = maintain(conn)
    context.log.info(f"recomputed {len(done.days)} day(s): {[d.isoformat() for d in done.days][:10]}")
    return MaterializeResult(metadata={
        "days_recomputed": MetadataValue.int(len(done.days)),
        "days": MetadataValue.text(", ".join(d.isoformat() for d in done.days[:31])),
        "event_rows": MetadataValue.int(done.event_rows),
        "sales_rows": MetadataValue.int(done.sales_rows),
        "seconds": MetadataValue.float(round(time.perf_counter() - started, 4)),
    })


def refresh_view(postgres: PostgresResource, view: str) -> dict:
    """Refresh one view concurrently; return its metadata (rows, seconds)."""
    with postgres.connection(autocommit=True) as conn, conn.cursor() as cur:
        started = time.perf_counter()
        cur.execute(sql.SQL("REFRESH MATERIALIZED VIEW CONCURRENTLY {}").format(sql.Identifier(view)))
        seconds = time.perf_counter() - started
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(view)))
        rows = cur.fetchone()[0]
    return {
        "dagster/row_count": MetadataValue.int(rows),
        "refresh_seconds": MetadataValue.float(round(seconds, 4)),
    }


def _view_asset(view: str, deps: list[str], description: str) -> AssetsDefinition:
    @asset(
        name=view,
        group_name="ecommerce",
        deps=deps,
        kinds={"postgres"},
        description=f"Materialized view `{view}`: {description} Refreshed concurrently.",
    )
    def _refresh(context: AssetExecutionContext, postgres: PostgresResource) -> MaterializeResult:
        metadata = refresh_view(postgres, view)
        context.log.info(f"refreshed {view}: {metadata['dagster/row_count'].value} rows")
        return MaterializeResult(metadata=metadata)

    return _refresh


#: the views and the per-day aggregates they read (refreshed together)
materialized_views = [daily_aggregates, *(_view_asset(name, deps, desc) for name, (deps, desc) in VIEWS.items())]
VIEW_KEYS = [view.key for view in materialized_views]
