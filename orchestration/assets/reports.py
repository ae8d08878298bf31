"""Spark report assets, one per domain, partitioned by UTC hour.

Materialising a partition calls ``refresh_*_reports`` for the partition's
window on the Spark Connect server; it replaces the report rows of every
minute window in that hour in one transaction, so re-runs and backfills never
duplicate rows. A run tagged ``salespulse/restate-<domain>`` (the new-data
sensor's restatements, ``orchestration/restatement.py``) recomputes only the
tagged minute windows of the hour.

Each asset is derived from its domain's ``ReportDomain``
(``orchestration.reports.REPORT_DOMAINS``): name ``<domain>_reports``, group,
upstream raw tables, description and the tables it writes.
"""


import warnings
from datetime import timedelta

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    BackfillPolicy,
    Failure,
    FreshnessPolicy,
    MaterializeResult,
    MetadataValue,
    asset,
)
from dagster_shared.utils.warnings import BetaWarning

from orchestration.assets.partitions import HOURLY
from orchestration.reports import REPORT_DOMAINS, ReportDomain
from orchestration.reports.common import computed_by
from orchestration.resources import PostgresResource, SparkResource
from orchestration.restatement import windows_from_tags
from salespulse.partitions import RawHistoryDropped, check_retained


def report_asset(reports: ReportDomain):
    """The ``@asset`` that refreshes ``reports``: hourly partitions, and a
    backfill of any range runs as ONE run whose window spans the whole range
    (one Spark job instead of one run per hour; also what ``dagster asset
    materialize --partition-range`` requires). ``backfill_policy`` is marked
    beta in Dagster 1.13: that one warning is silenced here on purpose; every
    other warning still surfaces."""
    tables = ", ".join(reports.tables)

    def refresh(context: AssetExecutionContext, spark: SparkResource, postgres: PostgresResource) -> MaterializeResult:
        window = context.partition_time_window
        refuse_dropped_history(postgres, reports, window.start)
        windows = windows_from_tags(context.run.tags, reports.name, window.start)  # None: the whole hour
        with computed_by(context.run_id):  # recorded with the windows (report_refreshes)
            result = reports.refresh(spark.session(), postgres.settings(), window.start, window.end, windows=windows)
        context.log.info(f"{reports.name} reports {window.start}..{window.end}: {result.rows}")
        metadata = report_metadata(result)
        if windows is not None:
            metadata["restated_windows"] = MetadataValue.text(", ".join(f"{w:%H:%M}" for w in windows))
        return MaterializeResult(metadata=metadata)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BetaWarning)
        return asset(
            name=reports.domain.asset,
            group_name=reports.name,
            deps=list(reports.sources),
            kinds={"spark", "postgres"},
            description=f"{reports.summary} Tables: {tables}.",
            metadata={"tables": MetadataValue.text(tables)},
            partitions_def=HOURLY,
            backfill_policy=BackfillPolicy.single_run(),
        )(refresh)


def refuse_dropped_history(postgres: PostgresResource, reports: ReportDomain, start) -> None:
    """Fail a run (a backfill, usually) whose window starts before raw rows
    that retention dropped: recomputing it would replace complete reports with
    figures from nothing."""
    with postgres.connection() as conn, conn.cursor() as cur:
        try:
            check_retained(cur, reports.sources, start, postgres.settings().raw_retention_days)
        except RawHistoryDropped as exc:
            raise Failure(description=f"{reports.name} reports: {exc}") from None


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


#: domain -> the asset that refreshes its reports
REPORT_ASSET_BY_DOMAIN = {name: report_asset(reports) for name, reports in REPORT_DOMAINS.items()}
REPORT_ASSETS = list(REPORT_ASSET_BY_DOMAIN.values())
ecommerce_reports = REPORT_ASSET_BY_DOMAIN["ecommerce"]
restaurant_reports = REPORT_ASSET_BY_DOMAIN["restaurant"]


def freshness_policy(settings) -> FreshnessPolicy:
    """Dagster's own freshness policy for the report assets (the UI's freshness
    badge; Dagster 1.13 evaluates it in the daemon), driven by the settings of
    the freshness rule (``salespulse.freshness``): warn once the asset has not
    been materialized for ``FRESHNESS_REPORTS_TARGET_S``, fail after the target
    times ``FRESHNESS_STALE_FACTOR``. Dagster judges the time since the last
    materialization, the rule how far the newest report data trails the newest
    event: with the minute schedule refreshing every minute they fail
    together, except that Dagster also fails an idle stream's reports (nothing
    new to report) when the schedule stops."""
    target = timedelta(seconds=settings.freshness_reports_target_s)
    fail = target * settings.freshness_stale_factor
    return FreshnessPolicy.time_window(fail_window=fail, warn_window=target if fail > target else None)


def with_freshness_policy(assets: list, settings) -> list:
    """``assets`` with :func:`freshness_policy` on the report assets (the others as they are)."""
    policy = freshness_policy(settings)
    return [a.map_asset_specs(lambda spec: spec.replace_attributes(freshness_policy=policy))
            if isinstance(a, AssetsDefinition) and a in REPORT_ASSETS else a for a in assets]
