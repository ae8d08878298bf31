"""The freshness checks of each report asset, by the one freshness rule
(``salespulse.freshness``, targets ``FRESHNESS_*``):

* ``reports_fresh`` (health job, every five minutes) — rows visible, newest
  report window, consumer lag; ``late`` fails with severity WARN, ``stale``
  with ERROR;
* ``reports_current`` (``orchestration/checks/current.py``) — the reports and
  the run queue.

``freshness_sensor`` evaluates both every minute, outside the run queue.
"""

from datetime import datetime

from dagster import AssetCheckResult, AssetCheckSeverity, MetadataValue, asset_check

from orchestration.assets.reports import REPORT_ASSET_BY_DOMAIN
from orchestration.reports import REPORT_DOMAINS
from orchestration.resources import PostgresResource
from salespulse.freshness import Targets, cursor_query, measure_all


def report_freshness(postgres: PostgresResource, domain: str) -> AssetCheckResult:
    """The domain's freshness by the dashboard's own rule (``salespulse.freshness``,
    targets ``FRESHNESS_*``): ``late`` fails with severity WARN, ``stale`` with ERROR."""
    targets = Targets.from_settings(postgres.settings())
    with postgres.connection() as conn, conn.cursor() as cur:
        found = measure_all(cursor_query(cur), targets, [domain])["domains"][domain]
    return freshness_result(found)


def freshness_result(found: dict) -> AssetCheckResult:
    """An evaluation of ``reports_fresh`` from one domain's :func:`salespulse.freshness.measure`."""
    rows, reports, lag = found["rows"], found["reports"], found["lag"]

    def text(value) -> MetadataValue:
        return MetadataValue.text("none" if value is None else
                                  value.isoformat() if isinstance(value, datetime) else str(value))

    parts = [
        f"rows visible p95 {rows['p95_s']} s (target {rows['target_s']} s): {rows['state']}",
        f"reports {reports['behind_s']} s behind the newest event (target {reports['target_s']} s)"
        + ("" if reports["has_window"] else ", no report window") + f": {reports['state']}",
        f"consumer lag {lag['messages']} (target {lag['target_messages']}): {lag['state']}",
    ]
    state = found["state"]
    return AssetCheckResult(
        passed=state in ("ok", "unknown"),
        severity=AssetCheckSeverity.ERROR if state == "stale" else AssetCheckSeverity.WARN,
        description=f"{found['domain']} freshness {state.upper()}: " + "; ".join(parts),
        metadata={
            "state": MetadataValue.text(state),
            "rows_state": MetadataValue.text(rows["state"]),
            "rows_p50_s": text(rows["p50_s"]),
            "rows_p95_s": text(rows["p95_s"]),
            "rows_samples": MetadataValue.int(rows["samples"]),
            "rows_target_s": MetadataValue.float(rows["target_s"]),
            "reports_state": MetadataValue.text(reports["state"]),
            "newest_report_window": text(reports["newest_window_start"]),
            "reports_as_of": text(reports["as_of"]),
            "reports_behind_s": text(reports["behind_s"]),
            "reports_target_s": MetadataValue.float(reports["target_s"]),
            "lag_state": MetadataValue.text(lag["state"]),
            "lag_messages": text(lag["messages"]),
            "lag_observed_at": text(lag["observed_at"]),
            "lag_target_messages": MetadataValue.int(lag["target_messages"]),
            "reports_stale_after_s": MetadataValue.float(reports["stale_after_s"]),
        },
    )


def freshness_check(domain: str, description: str):
    """``reports_fresh`` of ``domain``'s report asset (:func:`report_freshness`)."""

    @asset_check(asset=REPORT_ASSET_BY_DOMAIN[domain], name="reports_fresh", description=description)
    def check(postgres: PostgresResource) -> AssetCheckResult:
        return report_freshness(postgres, domain)

    return check


#: domain -> its check (one per catalogued domain)
REPORTS_FRESH = {
    domain: freshness_check(domain, f"{reports.domain.title} freshness, by the rule and FRESHNESS_* targets of the "
                                    "dashboard's /api/pipeline/freshness: rows visible (p95, last minute), newest "
                                    "report window behind the newest event, consumer lag. Late: WARN; stale: ERROR.")
    for domain, reports in REPORT_DOMAINS.items()}
ecommerce_reports_fresh, restaurant_reports_fresh = REPORTS_FRESH["ecommerce"], REPORTS_FRESH["restaurant"]
