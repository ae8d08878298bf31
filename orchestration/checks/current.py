"""``reports_current``: the reports keep up, and the run queue is not blocked.

One check per report asset. It fails when

* the domain's reports are ``late`` (severity WARN) or ``stale`` (ERROR) by
  the freshness rule (``salespulse.freshness``: the newest report data behind
  the newest raw event, against ``FRESHNESS_REPORTS_TARGET_S`` and
  ``FRESHNESS_STALE_FACTOR``), or
* runs are queued behind runs in flight that have logged nothing for
  ``STALL_SECONDS`` (what orphaned runs used to do: two of them hold both
  run slots and nothing ever starts again; ERROR).

A check that only ran inside a run could not say the second thing — its run
would wait in the blocked queue — so ``freshness_sensor`` (evaluated by the
daemon, outside the queue) records the same evaluation every minute; the
five-minute health job runs it as well. The sensor also writes what it found
(:func:`record`) to ``pipeline_report_freshness`` / ``pipeline_run_queue``
(sql/050, sql/150) in the app database: the dashboard's pipeline page shows
it from there, since the dashboard's read-only role has no access to the
Dagster database.
"""

import json
from dataclasses import dataclass

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    DagsterInstance,
    MetadataValue,
    asset_check,
)

from orchestration.assets.reports import REPORT_ASSET_BY_DOMAIN
from orchestration.resources import PostgresResource
from salespulse.dagster_runs import QueueHealth, queue_health
from salespulse.freshness import Targets, cursor_query, measure_all, reports_verdict

CHECK_NAME = "reports_current"
REPORT_KEYS = {domain: asset.key for domain, asset in REPORT_ASSET_BY_DOMAIN.items()}
#: stalled runs recorded for the dashboard (more would not fit a notice anyway)
MAX_STALLED_RECORDED = 20


@dataclass
class Observed:
    """One look at the reports (``salespulse.freshness.measure_all``) and the run queue."""

    freshness: dict
    health: QueueHealth


def observe(instance: DagsterInstance, postgres: PostgresResource) -> Observed:
    with postgres.connection() as conn, conn.cursor() as cur:
        found = measure_all(cursor_query(cur), Targets.from_settings(postgres.settings()), list(REPORT_KEYS))
    return Observed(found, queue_health(instance))


def evaluate(instance: DagsterInstance, postgres: PostgresResource,
             observed: Observed | None = None) -> dict[str, tuple[bool, str, dict]]:
    """domain -> (passed, description, metadata); :func:`severity` from the metadata."""
    observed = observed or observe(instance, postgres)
    health = observed.health
    out = {}
    for domain, measured in observed.freshness["domains"].items():
        reports = measured["reports"]
        state, sentence = reports_verdict(measured)
        late = state in ("late", "stale")
        if late:
            sentence = sentence.replace(f"reports {state}:", f"reports {state.upper()}:", 1)
        problems = [p for p, bad in ((sentence, late), (health.summary(), health.blocked)) if bad]
        behind = reports["behind_s"]
        metadata = {
            "reports_state": MetadataValue.text(state),
            "newest_report_window": MetadataValue.text(reports["newest_window_start"].isoformat()
                                                       if reports["newest_window_start"] else "none"),
            "minutes_behind": MetadataValue.float(1e9 if behind is None and state == "stale"
                                                  else round((behind or 0.0) / 60, 2)),
            "target_minutes": MetadataValue.float(reports["target_s"] / 60),
            "stale_after_minutes": MetadataValue.float(reports["stale_after_s"] / 60),
            "runs_in_flight": MetadataValue.int(len(health.in_flight)),
            "runs_queued": MetadataValue.int(health.queued),
            "runs_stalled": MetadataValue.int(len(health.stalled)),
            "queue_blocked": MetadataValue.bool(health.blocked),
        }
        description = "; ".join(problems) if problems else f"{sentence}; {health.summary()}"
        out[domain] = (not problems, description, metadata)
    return out


def severity(metadata: dict) -> AssetCheckSeverity:
    """Late reports warn; stale reports or a blocked queue are errors."""
    blocked = metadata["queue_blocked"].value
    return AssetCheckSeverity.WARN if metadata["reports_state"].value == "late" and not blocked \
        else AssetCheckSeverity.ERROR


def _check(domain: str):
    @asset_check(asset=REPORT_KEYS[domain], name=CHECK_NAME, description=(
        "The newest report data is within FRESHNESS_REPORTS_TARGET_S of the newest raw event (late: WARN, beyond "
        "FRESHNESS_STALE_FACTOR times it: ERROR), and no run waits behind runs in flight that make no progress "
        "(also evaluated every minute by freshness_sensor)."))
    def reports_current(context: AssetCheckExecutionContext, postgres: PostgresResource) -> AssetCheckResult:
        passed, description, metadata = evaluate(context.instance, postgres)[domain]
        return AssetCheckResult(passed=passed, severity=severity(metadata), description=description,
                                metadata=metadata)

    reports_current.__name__ = f"{domain}_reports_current"
    return reports_current


#: domain -> its check
REPORTS_CURRENT = {domain: _check(domain) for domain in REPORT_KEYS}


def record(postgres: PostgresResource, observed: Observed) -> None:
    """Replace the dashboard's copy of this evaluation (one transaction, the
    database's clock for ``observed_at``, as the dashboard measures its age)."""
    health = observed.health
    stalled = [{"run_id": r.run_id, "job_name": r.job_name, "status": r.status, "partition": r.partition,
                "idle_seconds": round(r.idle_seconds, 1)} for r in health.stalled[:MAX_STALLED_RECORDED]]
    with postgres.connection() as conn, conn.cursor() as cur:
        for domain, measured in observed.freshness["domains"].items():
            reports, newest_event = measured["reports"], measured["rows"]["newest_event_at"]
            behind = reports["behind_s"]
            cur.execute(
                """INSERT INTO pipeline_report_freshness AS f (domain, observed_at, newest_raw_minute, newest_window,
                                                               minutes_behind, target_minutes, stale, state)
                   VALUES (%s, now(), date_trunc('minute', %s::timestamptz), %s, %s, %s, %s, %s)
                   ON CONFLICT (domain) DO UPDATE SET observed_at = EXCLUDED.observed_at,
                       newest_raw_minute = EXCLUDED.newest_raw_minute, newest_window = EXCLUDED.newest_window,
                       minutes_behind = EXCLUDED.minutes_behind, target_minutes = EXCLUDED.target_minutes,
                       stale = EXCLUDED.stale, state = EXCLUDED.state""",
                (domain, newest_event, reports["newest_window_start"],
                 # NULL: raw rows but no report window at all; 0: nothing behind (or no raw rows)
                 None if behind is None and newest_event is not None else round((behind or 0.0) / 60, 2),
                 round(reports["target_s"] / 60), reports["state"] == "stale", reports["state"]))
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
