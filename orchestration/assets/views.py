"""Materialized-view assets: ``REFRESH MATERIALIZED VIEW CONCURRENTLY`` as the
analytics role (the views' owner), in autocommit mode (a concurrent refresh
cannot run inside a transaction block).

A concurrent refresh keeps the dashboard's reads unblocked while it runs.
"""


import time

from dagster import AssetExecutionContext, AssetsDefinition, MaterializeResult, MetadataValue, asset
from psycopg2 import sql

from orchestration.resources import PostgresResource

VIEWS = {
    "sales_by_category": (["transactions", "products"],
                          "Revenue, units and orders per product category (all time), with the last sale time."),
    "top_products": (["transactions", "products"],
                     "Units, revenue and orders per product (all time); the dashboard's top products."),
    "daily_metrics": (["events", "transactions"],
                      "Per UTC day: events, unique users, sessions, purchases, revenue, units, average order value."),
}


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


materialized_views = [_view_asset(name, deps, desc) for name, (deps, desc) in VIEWS.items()]
VIEW_KEYS = [view.key for view in materialized_views]
