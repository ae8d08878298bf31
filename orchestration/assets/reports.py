"""Spark report assets, one per domain, partitioned by UTC hour.

Materialising a partition calls ``refresh_*_reports`` for the partition's
window on the Spark Connect server; it replaces the report rows of every
minute window in that hour in one transaction, so re-runs and backfills never
duplicate rows.
"""


import warnings

from dagster import AssetExecutionContext, BackfillPolicy, MaterializeResult, MetadataValue, asset
from dagster_shared.utils.warnings import BetaWarning

from orchestration.assets.partitions import HOURLY
from orchestration.resources import PostgresResource, SparkResource

ECOMMERCE_TABLES = (
    "report_ecommerce_overview_minute",
    "report_ecommerce_category_minute",
    "report_ecommerce_product_minute",
)
RESTAURANT_TABLES = (
    "report_restaurant_overview_minute",
    "report_restaurant_item_minute",
    "report_restaurant_category_minute",
    "report_restaurant_channel_minute",
)


def report_asset(**kwargs):
    """``@asset`` for a report: hourly partitions, and a backfill of any range
    runs as ONE run whose window spans the whole range (one Spark job instead of
    one run per hour; also what ``dagster asset materialize --partition-range``
    requires). ``backfill_policy`` is marked beta in Dagster 1.13: that one
    warning is silenced here on purpose; every other warning still surfaces."""

    def decorate(fn):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BetaWarning)
            return asset(partitions_def=HOURLY, backfill_policy=BackfillPolicy.single_run(), **kwargs)(fn)

    return decorate


def report_metadata(result) -> dict:
    """Materialisation metadata from a ``ReportResult``."""
    rows = {table: int(n) for table, n in result.rows.items()}
    metadata = {
        "window_start": MetadataValue.text(result.window_start.isoformat()),
        "window_end": MetadataValue.text(result.window_end.isoformat()),
        "rows_written": MetadataValue.int(sum(rows.values())),
        "source_rows": MetadataValue.int(int(result.source_rows)),
        "spark_seconds": MetadataValue.float(round(float(result.spark_seconds), 3)),
    }
    for table, n in rows.items():
        metadata[f"rows/{table}"] = MetadataValue.int(n)
    return metadata


@report_asset(
    group_name="ecommerce",
    deps=["events", "products", "transactions"],
    kinds={"spark", "postgres"},
    description=(
        "Per-minute e-commerce reports computed by Spark for the partition's hour: overview "
        "(events by type, active users/sessions, funnel, conversion, revenue, units, average "
        "order value, cart abandonment), sales by category and by product. Tables: "
        + ", ".join(ECOMMERCE_TABLES) + "."
    ),
    metadata={"tables": MetadataValue.text(", ".join(ECOMMERCE_TABLES))},
)
def ecommerce_reports(
    context: AssetExecutionContext, spark: SparkResource, postgres: PostgresResource
) -> MaterializeResult:
    from orchestration.reports import refresh_ecommerce_reports

    window = context.partition_time_window
    result = refresh_ecommerce_reports(spark.session(), postgres.settings(), window.start, window.end)
    context.log.info(f"ecommerce reports {window.start}..{window.end}: {result.rows}")
    return MaterializeResult(metadata=report_metadata(result))


@report_asset(
    group_name="restaurant",
    deps=["orders", "order_items"],
    kinds={"spark", "postgres"},
    description=(
        "Per-minute restaurant reports (relatórios) computed by Spark for the partition's hour: "
        "orders, items sold, revenue and average ticket, and revenue by item, category and "
        "channel. Tables: " + ", ".join(RESTAURANT_TABLES) + "."
    ),
    metadata={"tables": MetadataValue.text(", ".join(RESTAURANT_TABLES))},
)
def restaurant_reports(
    context: AssetExecutionContext, spark: SparkResource, postgres: PostgresResource
) -> MaterializeResult:
    from orchestration.reports import refresh_restaurant_reports

    window = context.partition_time_window
    result = refresh_restaurant_reports(spark.session(), postgres.settings(), window.start, window.end)
    context.log.info(f"restaurant reports {window.start}..{window.end}: {result.rows}")
    return MaterializeResult(metadata=report_metadata(result))
