"""``GET /api/pipeline/checks``: the reconciliation and alert checks as they
last ran (``pipeline_check_results``, sql/080, written by the checks of
``pipeline_checks_job`` every minute), with their offending windows.

* ``checks``: the latest evaluation of each (check, asset) of the last day,
  failing ones first, each with at most ``MAX_WINDOWS`` offending windows
  (``windows_total`` says how many there were);
* ``failures``: the failing evaluations of the time range, newest first
  (``limit``), so a failure that has since passed can still be found;
* ``notifications``: what was POSTed to the alert webhook in the range.

Bounded: the latest evaluations come from the last day only (the index on
(check_name, asset, evaluated_at)), the rest from the range with a LIMIT.
"""

from __future__ import annotations

from dashboard.db import Database
from dashboard.params import PipelineParams
from salespulse.freshness import RECORD_MAX_AGE_S  # the job runs every minute

MAX_WINDOWS = 10

_WINDOWS = f"""jsonb_path_query_array(windows, '$[0 to {MAX_WINDOWS - 1}]') AS windows,
               jsonb_array_length(windows) AS windows_total"""


def pipeline_checks(db: Database, p: PipelineParams) -> dict:
    start, end = p.window()
    bounds = {"start": start, "end": end, "limit": p.limit}
    latest = db.query(
        f"""SELECT check_name, asset, passed, severity, description, {_WINDOWS}, run_id, evaluated_at,
                   extract(epoch FROM now() - evaluated_at)::float AS age_seconds
            FROM (SELECT DISTINCT ON (check_name, asset) *
                  FROM pipeline_check_results WHERE evaluated_at >= now() - INTERVAL '1 day'
                  ORDER BY check_name, asset, evaluated_at DESC) latest
            ORDER BY passed, severity, check_name, asset
            LIMIT 200""")
    failures = db.query(
        f"""SELECT check_name, asset, severity, description, {_WINDOWS}, run_id, evaluated_at
            FROM pipeline_check_results
            WHERE NOT passed AND evaluated_at >= %(start)s AND evaluated_at < %(end)s
            ORDER BY evaluated_at DESC LIMIT %(limit)s""", bounds)
    notifications = db.query(
        """SELECT check_name, asset, window_key, status, attempts, http_status, left(error, 300) AS error,
                  first_at, sent_at
           FROM pipeline_alert_notifications WHERE first_at >= %(start)s AND first_at < %(end)s
           ORDER BY first_at DESC LIMIT %(limit)s""", bounds)
    for row in latest:
        row["current"] = row["age_seconds"] <= RECORD_MAX_AGE_S
    return {
        "range": None if p.from_ else p.range, "from": start, "to": end,
        "checks": latest,
        "failing": sum(1 for r in latest if not r["passed"]),
        "failures": failures,
        "notifications": notifications,
        "current_seconds": RECORD_MAX_AGE_S,
    }
