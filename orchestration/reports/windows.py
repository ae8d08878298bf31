"""Refreshing chosen minute windows, and recording restatements.

A refresh normally covers ``[start, end)`` (an hour partition, a backfill). The
new-data sensor asks for exactly the minute windows touched by late or
out-of-order rows (``orchestration/restatement.py``); ``ranges`` are then
those windows merged into contiguous ``(start, end)`` ranges: the JDBC reads
select only their rows (an OR of time ranges, one index range scan each) and
the write replaces only their report rows.

A **restatement** is a report window whose figures change after the window had
already been reported closed. It is recorded in ``report_restatements`` in the
refresh's own transaction (:func:`restatements`, called by
``common.replace_windows``), with ``rows_before``/``rows_after`` = the raw
rows the domain's overview counted for the window (``ReportDomain.counted``:
events / orders; 0 = no report row) before and after the refresh. "Already
reported closed" means: the previous report row was computed at or after the
window's end (a row computed while the minute was still running is expected to
grow: that is progress, not a restatement); for a window that had no report
row, that a row of the same UTC hour was computed after the window's end (a
refresh of that hour ran after the minute closed and found it empty).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Iterable, Sequence

MINUTE = timedelta(minutes=1)
Range = tuple[datetime, datetime]


def minute_floor(value: datetime) -> datetime:
    """The UTC minute holding ``value`` (naive = UTC)."""
    value = value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    return value.replace(second=0, microsecond=0)


def merge_windows(windows: Iterable[datetime]) -> list[Range]:
    """Minute windows -> sorted, contiguous ``[start, end)`` ranges (duplicates merged)."""
    ranges: list[list[datetime]] = []
    for w in sorted({minute_floor(w) for w in windows}):
        if ranges and ranges[-1][1] == w:
            ranges[-1][1] = w + MINUTE
        else:
            ranges.append([w, w + MINUTE])
    return [(a, b) for a, b in ranges]


def clip_ranges(ranges: Sequence[Range], start: datetime, end: datetime) -> list[Range]:
    """``ranges`` cut to ``[start, end)``; empty pieces dropped."""
    out = []
    for a, b in ranges:
        a, b = max(a, start), min(b, end)
        if a < b:
            out.append((a, b))
    return out


def ranges_sql(column: str, ranges: Sequence[Range], sql_ts) -> str:
    """``(column >= a1 AND column < b1 OR ...)``; ``sql_ts`` renders a literal."""
    if not ranges:
        raise ValueError("no ranges")
    return "(" + " OR ".join(f"{column} >= {sql_ts(a)} AND {column} < {sql_ts(b)}" for a, b in ranges) + ")"


def changed_windows(before: dict, after: dict) -> dict[datetime, tuple[int, int]]:
    """``{window: count}`` before and after -> ``{window: (before, after)}`` where they differ (missing = 0)."""
    out = {}
    for w in set(before) | set(after):
        b, a = int(before.get(w, 0)), int(after.get(w, 0))
        if a != b:
            out[w] = (b, a)
    return out


def restatements(cur, overview: str, counted: str, ranges: Sequence[Range],
                 new_counts: dict[datetime, int]) -> list[tuple[datetime, int, int]]:
    """Before the write, inside its transaction: the windows of ``ranges`` that
    the write is about to restate, as ``(window, rows_before, rows_after)``.

    ``new_counts``: window -> the ``counted`` column of the new overview rows."""
    where = " OR ".join("(window_start >= %s AND window_start < %s)" for _ in ranges)
    cur.execute(f"SELECT window_start, {counted}, computed_at >= window_start + interval '1 minute' "
                f"FROM {overview} WHERE {where}", [t for r in ranges for t in r])
    old = {row[0]: (int(row[1]), bool(row[2])) for row in cur.fetchall()}
    changed = changed_windows({w: c for w, (c, _) in old.items()}, new_counts)
    missing = sorted(w for w in changed if w not in old)
    empty_reported = set()
    if missing:
        cur.execute(
            f"""SELECT w FROM unnest(%s::timestamptz[]) AS w WHERE EXISTS (
                    SELECT 1 FROM {overview} r
                    WHERE r.window_start >= date_trunc('hour', w, 'UTC')
                      AND r.window_start < date_trunc('hour', w, 'UTC') + interval '1 hour'
                      AND r.computed_at >= w + interval '1 minute')""", (missing,))
        empty_reported = {row[0] for row in cur.fetchall()}
    return sorted((w, b, a) for w, (b, a) in changed.items()
                  if (w in old and old[w][1]) or w in empty_reported)


def record_restatements(cur, domain: str, rows: Sequence[tuple[datetime, int, int]], run_id: str | None) -> None:
    """Insert the :func:`restatements` found (same transaction as the write)."""
    if rows:
        cur.executemany(
            "INSERT INTO report_restatements (domain, window_start, rows_before, rows_after, run_id) "
            "VALUES (%s, %s, %s, %s, %s)", [(domain, w, b, a, run_id) for w, b, a in rows])
