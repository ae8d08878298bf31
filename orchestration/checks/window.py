"""Asset checks of a refresh run, for the run's hourly partition (or the last
hour when executed on their own):

* ``revenue_reconciles`` — the report's revenue equals plain-SQL revenue
  (``orchestration.reports.sql_reference.sql_revenue``) over the same window;
* ``windows_complete`` — every minute with raw events/orders has a report row.

Both stop at the report's cut-off: the minute boundary at least
``CUTOFF_GRACE`` before the rows were computed, so rows still arriving for the
open minute are never counted against it.
"""

from datetime import datetime, timedelta, timezone
from decimal import Decimal

from dagster import AssetCheckExecutionContext, AssetCheckResult, MetadataValue, asset_check

from orchestration.assets.reports import REPORT_ASSET_BY_DOMAIN
from orchestration.reports import REPORT_DOMAINS
from orchestration.resources import PostgresResource

CUTOFF_GRACE = timedelta(seconds=60)


def floor_minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def check_window(context: AssetCheckExecutionContext) -> tuple[datetime, datetime]:
    """The run's partition window, or the last full hour of minutes."""
    op_context = context.op_execution_context
    if op_context.has_partition_key or op_context.has_partition_key_range:
        window = op_context.partition_time_window
        return window.start, window.end
    end = floor_minute(datetime.now(timezone.utc))
    return end - timedelta(hours=1), end


def report_cutoff(cur, report_table: str, start: datetime, end: datetime) -> datetime:
    """End of the part of ``[start, end)`` the report can be held to."""
    cur.execute(
        f"SELECT min(computed_at) FROM {report_table} WHERE window_start >= %s AND window_start < %s",
        (start, end),
    )
    computed = cur.fetchone()[0] or datetime.now(timezone.utc)
    return max(start, min(end, floor_minute(computed - CUTOFF_GRACE)))


def reconcile_revenue(postgres: PostgresResource, domain: str, start: datetime, end: datetime) -> AssetCheckResult:
    from orchestration.reports.sql_reference import sql_revenue

    report_table = REPORT_DOMAINS[domain].overview
    with postgres.connection() as conn, conn.cursor() as cur:
        cutoff = report_cutoff(cur, report_table, start, end)
        cur.execute(
            f"SELECT COALESCE(sum(revenue), 0) FROM {report_table} WHERE window_start >= %s AND window_start < %s",
            (start, cutoff),
        )
        report = Decimal(cur.fetchone()[0])
        expected = Decimal(sql_revenue(conn, domain, start, cutoff))
    return AssetCheckResult(
        passed=report == expected,
        description=f"report revenue {report} vs SQL revenue {expected} over [{start}, {cutoff})",
        metadata={
            "report_revenue": MetadataValue.float(float(report)),
            "sql_revenue": MetadataValue.float(float(expected)),
            "difference": MetadataValue.float(float(report - expected)),
            "window_start": MetadataValue.text(start.isoformat()),
            "window_end": MetadataValue.text(cutoff.isoformat()),
        },
    )


def missing_windows(postgres: PostgresResource, domain: str, start: datetime, end: datetime) -> AssetCheckResult:
    reports = REPORT_DOMAINS[domain]
    raw_table, report_table = reports.raw_table, reports.overview
    with postgres.connection() as conn, conn.cursor() as cur:
        cutoff = report_cutoff(cur, report_table, start, end)
        cur.execute(
            f"""
            SELECT m.minute, m.n
            FROM (SELECT date_trunc('minute', "timestamp") AS minute, count(*) AS n
                  FROM {raw_table} WHERE "timestamp" >= %s AND "timestamp" < %s GROUP BY 1) m
            LEFT JOIN {report_table} r ON r.window_start = m.minute
            WHERE r.window_start IS NULL
            ORDER BY 1
            """,
            (start, cutoff),
        )
        missing = cur.fetchall()
        cur.execute(
            f"""SELECT count(DISTINCT date_trunc('minute', "timestamp")) FROM {raw_table}
                WHERE "timestamp" >= %s AND "timestamp" < %s""",
            (start, cutoff),
        )
        minutes_with_data = cur.fetchone()[0]
    return AssetCheckResult(
        passed=not missing,
        description=(
            f"{len(missing)} of {minutes_with_data} minutes with {raw_table} rows have no report row "
            f"in [{start}, {cutoff})"
        ),
        metadata={
            "minutes_with_data": MetadataValue.int(minutes_with_data),
            "missing_windows": MetadataValue.int(len(missing)),
            "first_missing": MetadataValue.text(", ".join(m.isoformat() for m, _ in missing[:10])),
        },
    )


def window_check(domain: str, name: str, description: str, evaluate):
    """The check ``name`` of ``domain``'s report asset: ``evaluate(postgres,
    domain, start, end)`` over the run's partition window (:func:`check_window`)."""

    @asset_check(asset=REPORT_ASSET_BY_DOMAIN[domain], name=name, description=description)
    def check(context: AssetCheckExecutionContext, postgres: PostgresResource) -> AssetCheckResult:
        return evaluate(postgres, domain, *check_window(context))

    return check


#: domain -> its check (one per catalogued domain)
REVENUE_RECONCILES = {
    domain: window_check(domain, "revenue_reconciles",
                         f"Report revenue equals plain-SQL revenue ({reports.domain.revenue_table}) over the "
                         "partition's window.", reconcile_revenue)
    for domain, reports in REPORT_DOMAINS.items()}
WINDOWS_COMPLETE = {
    domain: window_check(domain, "windows_complete",
                         f"Every minute of the window that has {reports.raw_table} has an overview report row.",
                         missing_windows)
    for domain, reports in REPORT_DOMAINS.items()}
ecommerce_revenue_reconciles, restaurant_revenue_reconciles = REVENUE_RECONCILES["ecommerce"], REVENUE_RECONCILES["restaurant"]
ecommerce_windows_complete, restaurant_windows_complete = WINDOWS_COMPLETE["ecommerce"], WINDOWS_COMPLETE["restaurant"]
window_checks = [*REVENUE_RECONCILES.values(), *WINDOWS_COMPLETE.values()]
