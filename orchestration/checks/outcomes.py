"""What the minute checks (``reconcile.py``, ``alerts.py``) found, kept
where the dashboard can read it, and sent to a webhook when one is set.

:func:`conclude` turns a check's verdict into its ``AssetCheckResult`` and, on
the way,

* records it in ``pipeline_check_results`` (sql/080): the dashboard's pipeline
  page shows the latest outcome of every check with its offending windows (the
  dashboard reads the app database only, never Dagster's);
* when the check fails and ``ALERT_WEBHOOK_URL`` is set, POSTs the failing
  windows not notified before (``orchestration.webhook``). Each (check, asset,
  window) is claimed in ``pipeline_alert_notifications`` before the POST, so
  the same window is never sent twice, even by two runs at once; a window whose
  POST failed (or whose sender died mid-POST, 10 minutes on) is tried again
  at the next evaluation. A failure to notify is
  logged, never fatal.

A window is a dict with ``key`` (what identifies it for de-duplication, e.g.
its start), ``start``, ``end`` and the figures that make it offending.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone

from dagster import AssetCheckResult, AssetCheckSeverity, AssetKey, MetadataValue

from orchestration.resources import PostgresResource
from orchestration.webhook import post_json

log = logging.getLogger(__name__)

#: windows kept per recorded outcome / listed in metadata / sent in one POST
MAX_WINDOWS = 50
#: recorded outcomes older than this are dropped when a new one is written
KEEP_DAYS = 7


@dataclass
class Verdict:
    passed: bool
    description: str
    windows: list[dict] = field(default_factory=list)  # offending windows (empty when passed)
    details: dict = field(default_factory=dict)  # figures of the whole evaluation
    metadata: dict = field(default_factory=dict)  # extra Dagster metadata


def _jsonable(value):
    return json.loads(json.dumps(value, default=lambda v: v.isoformat() if isinstance(v, datetime) else str(v)))


def conclude(context, postgres: PostgresResource, asset_key: AssetKey, check_name: str, verdict: Verdict,
             severity: AssetCheckSeverity = AssetCheckSeverity.ERROR) -> AssetCheckResult:
    windows = _jsonable(verdict.windows[:MAX_WINDOWS])
    details = _jsonable(verdict.details)
    asset = asset_key.to_user_string()
    run = getattr(context, "run", None)
    run_id = run.run_id if run is not None else None
    with postgres.connection() as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM pipeline_check_results WHERE evaluated_at < now() - make_interval(days => %s)",
                    (KEEP_DAYS,))
        cur.execute(
            """INSERT INTO pipeline_check_results (check_name, asset, passed, severity, description, windows,
                                                   details, run_id)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s)""",
            (check_name, asset, verdict.passed, severity.value, verdict.description, json.dumps(windows),
             json.dumps(details), run_id))
    if not verdict.passed and windows:
        notify(postgres, check_name, asset, severity.value, verdict.description, windows, run_id)
    metadata = {
        "offending_windows": MetadataValue.int(len(verdict.windows)),
        "first_offending": MetadataValue.text(", ".join(str(w.get("start")) for w in windows[:10]) or "none"),
        **({"windows": MetadataValue.json(windows)} if windows else {}),
        **{k: MetadataValue.json(v) if isinstance(v, (dict, list)) else v for k, v in details.items()
           if isinstance(v, (int, float, str, bool, dict, list))},
        **verdict.metadata,
    }
    return AssetCheckResult(asset_key=asset_key, check_name=check_name, passed=verdict.passed,
                            severity=severity, description=verdict.description, metadata=metadata)


def notify(postgres: PostgresResource, check_name: str, asset: str, severity: str, description: str,
           windows: list[dict], run_id: str | None) -> int:
    """POST the windows of a failing check not notified yet; the number sent."""
    settings = postgres.settings()
    url = settings.alert_webhook_url
    if not url:
        return 0
    payload_base = {"source": "salespulse", "check": check_name, "asset": asset, "severity": severity,
                    "description": description, "run_id": run_id}
    with postgres.connection() as conn, conn.cursor() as cur:
        claimed = []
        for window in windows:
            cur.execute(
                """INSERT INTO pipeline_alert_notifications (check_name, asset, window_key, status, payload)
                   VALUES (%s, %s, %s, 'sending', %s)
                   ON CONFLICT (check_name, asset, window_key) DO UPDATE SET status = 'sending'
                   WHERE pipeline_alert_notifications.status = 'failed'
                      OR (pipeline_alert_notifications.status = 'sending'  -- its sender died mid-POST
                          AND pipeline_alert_notifications.first_at < now() - INTERVAL '10 minutes')
                   RETURNING window_key""",
                (check_name, asset, str(window["key"]), json.dumps(window)))
            if cur.fetchone():
                claimed.append(window)
    if not claimed:
        return 0
    payload = {**payload_base, "windows": claimed, "sent_at": datetime.now(timezone.utc).isoformat()}
    delivery = post_json(url, payload, timeout_s=settings.alert_webhook_timeout_s,
                         attempts=settings.alert_webhook_attempts)
    if not delivery.ok:
        log.warning("alert webhook: %s on %s not delivered after %d attempt(s): %s",
                    check_name, asset, delivery.attempts, delivery.error)
    with postgres.connection() as conn, conn.cursor() as cur:
        cur.execute(
            """UPDATE pipeline_alert_notifications
               SET status = %s, attempts = attempts + %s, http_status = %s, error = %s,
                   sent_at = CASE WHEN %s THEN clock_timestamp() END
               WHERE check_name = %s AND asset = %s AND window_key = ANY(%s)""",
            ("sent" if delivery.ok else "failed", delivery.attempts, delivery.http_status, delivery.error,
             delivery.ok, check_name, asset, [str(w["key"]) for w in claimed]))
    return len(claimed) if delivery.ok else 0
