"""Which minute windows a refresh run restates: the run tags (pure functions).

The new-data sensor requests a run of ``refresh_reports_job`` for an hourly
partition with one tag per domain, ``salespulse/restate-<domain>``, holding
the minutes of that hour to recompute (``"5,6,30"``: 09:05, 09:06, 09:30 of
the 09:00 partition). The report asset of a domain whose tag is present
refreshes exactly those windows; without the tag it refreshes the whole hour
(minute schedule, backfills, the UI). Minutes of the hour keep the tag short
(at most 60 numbers) whatever the date.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Iterable, Mapping

TAG_PREFIX = "salespulse/restate-"


def tag_name(domain: str) -> str:
    return f"{TAG_PREFIX}{domain}"


def encode_minutes(windows: Iterable[datetime], hour: datetime) -> str:
    """Windows of the hour starting at ``hour`` -> ``"5,6,30"`` (sorted, unique)."""
    minutes = set()
    for w in windows:
        offset = (w - hour) / timedelta(minutes=1)
        if offset != int(offset) or not 0 <= offset < 60:
            raise ValueError(f"{w} is not a minute window of the hour {hour}")
        minutes.add(int(offset))
    if not minutes:
        raise ValueError("no windows")
    return ",".join(str(m) for m in sorted(minutes))


def decode_minutes(value: str, hour: datetime) -> list[datetime]:
    """``"5,6,30"`` -> the minute windows of the hour starting at ``hour``."""
    try:
        minutes = sorted({int(part) for part in value.split(",")})
    except ValueError:
        raise ValueError(f"restate tag {value!r}: expected comma-separated minutes 0-59") from None
    if not minutes or minutes[0] < 0 or minutes[-1] > 59:
        raise ValueError(f"restate tag {value!r}: expected comma-separated minutes 0-59")
    return [hour + timedelta(minutes=m) for m in minutes]


def windows_from_tags(tags: Mapping[str, str], domain: str, hour: datetime) -> list[datetime] | None:
    """The windows a run restates for ``domain`` (``None``: the whole partition)."""
    value = tags.get(tag_name(domain))
    return None if value is None else decode_minutes(value, hour)
