"""Every job the schedules and sensors launch: three asset jobs (the refresh,
the health checks, the minute checks) and two op jobs (retention)."""

from __future__ import annotations

from dagster import AssetSelection, define_asset_job, job

from orchestration.assets.reports import REPORT_ASSETS
from orchestration.assets.views import materialized_views
from orchestration.checks import health_checks, minute_checks
from orchestration.retention import STORE_TRIMS, maintain_raw_partitions

#: both domains' reports for one hourly partition, then the materialized views;
#: the partition's window checks (reconciliation, complete windows) run with them
refresh_job = define_asset_job(
    "refresh_reports_job",
    selection=AssetSelection.assets(*REPORT_ASSETS, *materialized_views) - AssetSelection.checks(*health_checks, *minute_checks),
    description=(
        "Recompute both domains' Spark reports for one hourly partition and refresh the "
        "materialized views; the partition's reconciliation and completeness checks run with them."
    ),
    # run monitoring ends a run still going after 10 minutes (one hour's refresh takes seconds):
    # it would hold one of the two run slots. A run that failed as a whole (its worker gone,
    # found by `salespulse dagster-daemon`) is re-executed once, so the partition it covered
    # is refreshed again even after its hour has passed; a failing report step is not retried.
    tags={"salespulse/job": "refresh", "dagster/max_runtime": "600",
          "dagster/max_retries": "1", "dagster/retry_strategy": "ALL_STEPS",
          "dagster/retry_on_asset_or_op_failure": "false"},
)

#: checks that look at the pipeline as a whole rather than one partition
health_checks_job = define_asset_job(
    "pipeline_health_checks_job",
    selection=AssetSelection.checks(*health_checks),
    description=("Report freshness (both domains), the dead-letter rate of the last hour, ingest ledger "
                 "contiguity and raw-table consistency."),
    tags={"salespulse/job": "health"},
)

#: reconciliation (reports vs raw tables vs ingest ledger) and alerts, every minute
pipeline_checks_job = define_asset_job(
    "pipeline_checks_job",
    selection=AssetSelection.checks(*minute_checks),
    description=("Reconciliation of the last hour per minute (reports vs raw tables, raw tables vs the ingest "
                 "ledger) and the alerts (revenue drop, funnel break, dead-letter rate); outcomes are recorded "
                 "in pipeline_check_results for the dashboard and failing windows POSTed to ALERT_WEBHOOK_URL."),
    tags={"salespulse/job": "checks", "dagster/max_runtime": "300"},
)


@job(description="Raw table partitions: create the coming months', drop expired ones (RAW_RETENTION_DAYS).",
     tags={"salespulse/job": "partitions", "dagster/max_runtime": "1800"})
def raw_partitions_job():
    maintain_raw_partitions()


@job(description="Every store that grows with time stays bounded: old dead letters, pipeline records "
                 "(and the others listed in STORE_TRIMS), each trimmed in bounded batches.",
     tags={"salespulse/job": "retention", "dagster/max_runtime": "900"})
def store_retention_job():
    for trim in STORE_TRIMS:
        trim()


all_jobs = [refresh_job, health_checks_job, pipeline_checks_job, raw_partitions_job, store_retention_job]
