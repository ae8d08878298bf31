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
five-minute health job runs it as well. The sensor also writes what it found
to ``pipeline_report_freshness`` / ``pipeline_run_queue`` (sql/050) in the app
database: the dashboard's pipeline page shows it from there, since the
dashboard's read-only role has no access to the Dagster database.
"""

import json

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

from orchestration.assets.reports import REPORT_ASSET_BY_DOMAIN
from orchestration.resources import PostgresResource
from salespulse.dagster_runs import QueueHealth, ReportLag, queue_health, report_lags

CHECK_NAME = "reports_current"
REPORT_KEYS = {domain: asset.key for domain, asset in REPORT_ASSET_BY_DOMAIN.items()}
#: stalled runs recorded for the dashboard (more would not fit a notice anyway)
MAX_STALLED_RECORDED = 20


def observe(instance: DagsterInstance, postgres: PostgresResource) -> tuple[list[ReportLag], QueueHealth]:
    with postgres.connection() as conn, conn.cursor() as cur:
        lags = report_lags(cur)
    return lags, queue_health(instance)


def evaluate(instance: DagsterInstance, postgres: PostgresResource,
             observed: tuple[list[ReportLag], QueueHealth] | None = None) -> dict[str, tuple[bool, str, dict]]:
    """domain -> (passed, description, metadata)."""
    lags, health = observed or observe(instance, postgres)
    out = {}
    for lag in lags:
        domain = lag.domain
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
    description=("Every minute, outside the run queue: records the reports_current check of both report assets, "
                 "and what it found in pipeline_report_freshness / pipeline_run_queue for the dashboard."),
)
def reports_current_sensor(context: SensorEvaluationContext, postgres: PostgresResource):
    observed = observe(context.instance, postgres)
    record(postgres, *observed)
    results = evaluate(context.instance, postgres, observed)
    events = [
        AssetCheckEvaluation(asset_key=REPORT_KEYS[domain], check_name=CHECK_NAME, passed=passed,
                             description=description, metadata=metadata)
        for domain, (passed, description, metadata) in results.items()
    ]
    failing = [f"{domain}: {description}" for domain, (passed, description, _m) in results.items() if not passed]
    return SensorResult(asset_events=events,
                        skip_reason=("NOT CURRENT: " + " | ".join(failing)) if failing else "reports current")


def record(postgres: PostgresResource, lags: list[ReportLag], health: QueueHealth) -> None:
    """Replace the dashboard's copy of this evaluation (one transaction, the
    database's clock for ``observed_at``, as the dashboard measures its age)."""
    stalled = [{"run_id": r.run_id, "job_name": r.job_name, "status": r.status, "partition": r.partition,
                "idle_seconds": round(r.idle_seconds, 1)} for r in health.stalled[:MAX_STALLED_RECORDED]]
    with postgres.connection() as conn, conn.cursor() as cur:
        for lag in lags:
            behind = lag.behind_minutes
            cur.execute(
                """INSERT INTO pipeline_report_freshness AS f (domain, observed_at, newest_raw_minute, newest_window,
                                                               minutes_behind, target_minutes, stale)
                   VALUES (%s, now(), %s, %s, %s, %s, %s)
                   ON CONFLICT (domain) DO UPDATE SET observed_at = EXCLUDED.observed_at,
                       newest_raw_minute = EXCLUDED.newest_raw_minute, newest_window = EXCLUDED.newest_window,
                       minutes_behind = EXCLUDED.minutes_behind, target_minutes = EXCLUDED.target_minutes,
                       stale = EXCLUDED.stale""",
                (lag.domain, lag.newest_raw_minute, lag.newest_window,
                 None if behind == float("inf") else round(behind, 2), lag.target_minutes, lag.stale))
        cur.execute(
            """INSERT INTO pipeline_run_queue (singleton, observed_at, in_flight, queued, oldest_queued_seconds,
                                               stalled, blocked)
               VALUES (TRUE, now(), %s, %s, %s, %s, %s)
               ON CONFLICT (singleton) DO UPDATE SET observed_at = EXCLUDED.observed_at,
                   in_flight = EXCLUDED.in_flight, queued = EXCLUDED.queued,
                   oldest_queued_seconds = EXCLUDED.oldest_queued_seconds, stalled = EXCLUDED.stalled,
                   blocked = EXCLUDED.blocked""",
            (len(health.in_flight), health.queued, health.oldest_queued_seconds, json.dumps(stalled),
             health.blocked))
