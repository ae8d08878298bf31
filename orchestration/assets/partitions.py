"""Time partitions of the report assets.

One partition per UTC hour; ``end_offset=1`` makes the *current* (still open)
hour a partition too, so the minute schedule can refresh it while data keeps
arriving. A partition's materialisation replaces the report rows of every
minute window in ``[hour, hour + 1h)``; the report assets' backfill policy is
single-run (``orchestration/assets/reports.py``), so a backfill of any range
is one idempotent run covering every hour of it.

**Where the partitions begin** (:func:`partitions_start`): at
``REPORT_PARTITIONS_START`` when it is set, else at the hour of the first
data the stack holds — the earliest raw row or report window (report rows
outlive raw months dropped by ``RAW_RETENTION_DAYS``, so a materialized hour
never falls outside the partitions) — read once when the code location loads
(the webserver's and daemon's code servers, and each run's process). With
no data yet, or the database unreachable, they begin an hour before the
current one; the start is never later than that hour (the minute schedule
closes out the previous hour, and a run's process may load later than its
code server). A fresh stack with an hour of data shows two or three
partitions, not every hour since a fixed date.

A time-window definition with its start read at load keeps everything the
hourly one gives (time windows for the Spark refresh, single-run backfills of
a range, "backfill missing" from the UI over exactly the hours that can have
data); a ``DynamicPartitionsDefinition`` would lose the time windows and need
every hour added before a schedule could request it. The price: data older
than the start that arrives later (a history loaded into a running stack) is
outside the partitions until the code location is reloaded (UI: Deployment >
Reload, or a restart); the new-data sensor logs such hours.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

from dagster import HourlyPartitionsDefinition

from salespulse.catalog import DOMAINS
from salespulse.settings import ROLE_ANALYTICS, SecretError, Settings, get_settings

PARTITION_FORMAT = "%Y-%m-%d-%H:%M"
log = logging.getLogger(__name__)


def _hour(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)


def first_data(settings: Settings) -> datetime | None:
    """The earliest raw row or report window in the database (None: none, or
    unreachable, or no password for the analytics role: the code location must
    load without its database)."""
    import psycopg2

    parts = [f'(SELECT min("timestamp") FROM {d.raw_table})' for d in DOMAINS.values()]
    parts += [f"(SELECT min(window_start) FROM {d.overview})" for d in DOMAINS.values()]
    try:
        with psycopg2.connect(settings.role_url(ROLE_ANALYTICS), connect_timeout=3,
                              options="-c statement_timeout=10000") as conn, conn.cursor() as cur:
            cur.execute(f"SELECT least({', '.join(parts)})")
            found = cur.fetchone()[0]
        conn.close()
    except (psycopg2.Error, SecretError) as exc:
        log.warning(f"report partitions: first data not read ({str(exc).strip()}); starting an hour ago")
        return None
    return found


def partitions_start(settings: Settings | None = None, now: datetime | None = None) -> datetime:
    """The first hourly partition: ``REPORT_PARTITIONS_START``, else the hour of the
    first data, else (no data, or no database) the hour before the current one."""
    settings = settings or get_settings()
    if settings.report_partitions_start is not None:
        return _hour(settings.report_partitions_start)
    found = first_data(settings)
    fallback = _hour(now or datetime.now(timezone.utc)) - timedelta(hours=1)
    return min(_hour(found), fallback) if found is not None else fallback


PARTITION_START = partitions_start().strftime(PARTITION_FORMAT)
FIRST_PARTITION = PARTITION_START  # keys sort as text in time order

HOURLY = HourlyPartitionsDefinition(start_date=PARTITION_START, timezone="UTC", end_offset=1)


def partition_key_for(moment: datetime) -> str:
    """The hourly partition key containing ``moment`` (naive means UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d-%H:00")


def partition_hour(key: str) -> datetime:
    """The UTC hour a partition key names (the inverse of :func:`partition_key_for`)."""
    return datetime.strptime(key, PARTITION_FORMAT).replace(tzinfo=timezone.utc)
