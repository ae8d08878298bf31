"""``reports_current``: the reports keep up, and the run queue is not blocked.

One check per report asset. It fails when

* the newest report window trails the newest raw minute by more than
  ``salespulse.dagster_runs.REPORT_TARGET_MINUTES`` (the minute refresh has
  stopped landing), or
* runs are queued behind runs in flight that have logged nothing for
  ``STALL_SECONDS`` (what orphaned runs used to do: two of them hold both
  run slots and nothing ever starts again).

A check that only ran inside a run could not say the second thing — its run
would wait in the blocked queue — so ``reports_current_sensor`` (evaluated by
the daemon, outside the queue) records the same evaluation every minute; the
five-minute health job runs it as well.
"""

from dagster import (
    AssetCheckEvaluation,
    AssetCheckExecutionContext,
    AssetCheckResult,
    DagsterInstance,
    DefaultSensorStatus,
    MetadataValue,
    SensorEvaluationContext,
    SensorResult,
    asset_check,
    sensor,
)

from orchestration.assets.reports import ecommerce_reports, restaurant_reports
from orchestration.resources import PostgresResource
from salespulse.dagster_runs import report_lags, queue_health

CHECK_NAME = "reports_current"
REPORT_KEYS = {"ecommerce": ecommerce_reports.key, "restaurant": restaurant_reports.key}


def evaluate(instance: DagsterInstance, postgres: PostgresResource) -> dict[str, tuple[bool, str, dict]]:
    """domain -> (passed, description, metadata)."""
    with postgres.connection() as conn, conn.cursor() as cur:
        lags = {lag.domain: lag for lag in report_lags(cur)}
    health = queue_health(instance)
    out = {}
    for domain, lag in lags.items():
        problems = [p for p, bad in ((lag.summary(), lag.stale), (health.summary(), health.blocked)) if bad]
        metadata = {
            "newest_report_window": MetadataValue.text(lag.newest_window.isoformat() if lag.newest_window else "none"),
            "minutes_behind": MetadataValue.float(min(lag.behind_minutes, 1e9)),
            "target_minutes": MetadataValue.int(lag.target_minutes),
            "runs_in_flight": MetadataValue.int(len(health.in_flight)),
            "runs_queued": MetadataValue.int(health.queued),
            "runs_stalled": MetadataValue.int(len(health.stalled)),
            "queue_blocked": MetadataValue.bool(health.blocked),
        }
        description = "; ".join(problems) if problems else f"{lag.summary()}; {health.summary()}"
        out[domain] = (not problems, description, metadata)
    return out


def _check(domain: str):
    @asset_check(asset=REPORT_KEYS[domain], name=CHECK_NAME, description=(
        "The newest report window is within its target of the newest raw minute, and no run waits "
        "behind runs in flight that make no progress (also evaluated every minute by reports_current_sensor)."))
    def reports_current(context: AssetCheckExecutionContext, postgres: PostgresResource) -> AssetCheckResult:
        passed, description, metadata = evaluate(context.instance, postgres)[domain]
        return AssetCheckResult(passed=passed, description=description, metadata=metadata)

    reports_current.__name__ = f"{domain}_reports_current"
    return reports_current


run_checks = [_check(domain) for domain in REPORT_KEYS]


@sensor(
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    description="Every minute, outside the run queue: records the reports_current check of both report assets.",
)
def reports_current_sensor(context: SensorEvaluationContext, postgres: PostgresResource):
    results = evaluate(context.instance, postgres)
    events = [
        AssetCheckEvaluation(asset_key=REPORT_KEYS[domain], check_name=CHECK_NAME, passed=passed,
                             description=description, metadata=metadata)
        for domain, (passed, description, metadata) in results.items()
    ]
    failing = [f"{domain}: {description}" for domain, (passed, description, _m) in results.items() if not passed]
    return SensorResult(asset_events=events,
                        skip_reason=("NOT CURRENT: " + " | ".join(failing)) if failing else "reports current")
