"""Time partitions of the report assets.

One partition per UTC hour; ``end_offset=1`` makes the *current* (still open)
hour a partition too, so the minute schedule can refresh it while data keeps
arriving. A partition's materialisation replaces the report rows of every
minute window in ``[hour, hour + 1h)``; a backfill of any range is one run per
hour, each idempotent.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from dagster import HourlyPartitionsDefinition

PARTITION_START = "2024-01-01-00:00"
PARTITION_FORMAT = "%Y-%m-%d-%H:%M"
FIRST_PARTITION = PARTITION_START  # keys sort as text in time order

HOURLY = HourlyPartitionsDefinition(start_date=PARTITION_START, timezone="UTC", end_offset=1)


def partition_key_for(moment: datetime) -> str:
    """The hourly partition key containing ``moment`` (naive means UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d-%H:00")


def partition_window(key: str) -> tuple[datetime, datetime]:
    start = datetime.strptime(key, PARTITION_FORMAT).replace(tzinfo=timezone.utc)
    return start, start + timedelta(hours=1)
