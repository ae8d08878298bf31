"""The ingest ledger's bound: roll-ups and retention (sql/130_compact_ledger.sql).

The consumer writes one compact range per (batch, partition) in the batch's
transaction. Two steps keep the ledger at a steady state, each one
transaction of a SECURITY DEFINER function, bounded per call:

1. **Roll-up** (``salespulse_rollup_ingest_ledger``): ranges recorded more
   than ``LEDGER_ROLLUP_MINUTES`` ago (default 120: ``ledger_reconciles``
   matches raw rows to their batch's range by transaction for its last
   ``RECONCILE_MINUTES`` (60) plus ``BATCH_SPAN`` (10)) that meet exactly are
   merged per stream and hour of ``recorded_at``: one row per stream and hour.
2. **Trim** (``salespulse_trim_ingest_ledger``): per stream, the ranges
   recorded more than ``LEDGER_RETENTION_DAYS`` ago (default 30), or before
   the raw history dropped by ``RAW_RETENTION_DAYS`` (whichever is later),
   that continue the stream's trimmed range without a gap or an overlap are
   deleted and added to it (offsets and counts): the "audited up to"
   watermark the audit and the contiguity checks start the stream from. A
   discontinuity stops its stream's trim, so it stays visible.

Neither step changes what the audit proves, and a crash between them (or
inside one: each is one transaction) leaves the ledger consistent. Run every
ten minutes by ``store_retention_job`` (orchestration/retention.py), and
after a raw partition drop (salespulse/partitions.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

#: rows one call of either function handles (one transaction each)
MAX_ROWS_PER_CALL = 50_000
#: seconds one maintenance pass may keep calling (the job runs every 10 min)
BUDGET_SECONDS = 60.0


@dataclass
class LedgerTrim:
    rolled_up: int = 0  # ranges merged into another (deleted)
    trimmed: int = 0  # ranges deleted into their stream's trimmed range
    streams_forgotten: int = 0  # idle streams with nothing but a trimmed range
    calls: int = 0
    complete: bool = True  # False: the budget ran out (the next run goes on)


def rollup_horizon(rollup_minutes: float, now: datetime | None = None) -> datetime:
    return (now or datetime.now(timezone.utc)) - timedelta(minutes=rollup_minutes)


def retention_horizon(retention_days: float, now: datetime | None = None) -> datetime:
    return (now or datetime.now(timezone.utc)) - timedelta(days=retention_days)


def detail_since(settings, now: datetime | None = None) -> datetime:
    """Ranges recorded after this are still one per batch (not rolled up nor
    trimmed): what ``ledger_reconciles`` may match raw rows against."""
    return max(rollup_horizon(settings.ledger_rollup_minutes, now),
               retention_horizon(settings.ledger_retention_days, now))


def rollup(cur, before: datetime, max_rows: int = MAX_ROWS_PER_CALL) -> tuple[int, int]:
    """One bounded roll-up call (the caller commits): (ranges merged away,
    ranges examined: fewer than ``max_rows`` = nothing left before ``before``)."""
    cur.execute("SELECT merged, examined FROM salespulse_rollup_ingest_ledger(%s, %s)", (before, max_rows))
    merged, examined = cur.fetchone()
    return int(merged), int(examined)


def trim(cur, before: datetime, max_rows: int = MAX_ROWS_PER_CALL) -> tuple[int, int]:
    """One bounded trim call (the caller commits): (ranges trimmed, streams
    forgotten). ``before`` is raised to the raw history dropped, if later."""
    cur.execute("SELECT ranges, streams FROM salespulse_trim_ingest_ledger(%s, %s)", (before, max_rows))
    ranges, streams = cur.fetchone()
    return int(ranges), int(streams)


def maintain(conn, rollup_minutes: float, retention_days: float, *, now: datetime | None = None,
             max_rows: int = MAX_ROWS_PER_CALL, budget_s: float = BUDGET_SECONDS) -> LedgerTrim:
    """Roll up, then trim, each in bounded calls committed one by one, until
    nothing is left or ``budget_s`` is spent."""
    done = LedgerTrim()
    deadline = time.monotonic() + budget_s
    with conn.cursor() as cur:
        for step in ("rollup", "trim"):
            while True:
                if step == "rollup":
                    merged, n = rollup(cur, rollup_horizon(rollup_minutes, now), max_rows)
                    done.rolled_up += merged
                    if not merged:  # a full call that merged nothing (ranges that never meet): no progress
                        n = 0
                else:
                    n, forgotten = trim(cur, retention_horizon(retention_days, now), max_rows)
                    done.trimmed += n
                    done.streams_forgotten += forgotten
                conn.commit()
                done.calls += 1
                if n < max_rows:  # nothing left for this step
                    break
                if time.monotonic() > deadline:
                    done.complete = False
                    return done
    return done


def trim_dropped(conn, max_rows: int = MAX_ROWS_PER_CALL, budget_s: float = BUDGET_SECONDS) -> int:
    """After a raw partition drop: trim the ranges recorded before the dropped
    raw history (the function raises its horizon to it), bounded calls."""
    total, deadline = 0, time.monotonic() + budget_s
    with conn.cursor() as cur:
        while True:
            n, _ = trim(cur, datetime(1970, 1, 1, tzinfo=timezone.utc), max_rows)
            conn.commit()
            total += n
            if n < max_rows or time.monotonic() > deadline:
                return total


def sizes(cur) -> dict:
    """Bytes (tables and indexes) and rows of the ledger, for status and the soak."""
    cur.execute("""SELECT pg_total_relation_size('ingest_ledger_ranges'), pg_total_relation_size('ingest_streams'),
                          (SELECT count(*) FROM ingest_ledger_ranges), (SELECT count(*) FROM ingest_streams),
                          (SELECT COALESCE(sum(stored + duplicates + dead_lettered), 0) FROM ingest_ledger_ranges)
                          + (SELECT COALESCE(sum(trimmed_stored + trimmed_duplicates + trimmed_dead_lettered), 0)
                             FROM ingest_streams)""")
    ranges_bytes, streams_bytes, ranges, streams, messages = cur.fetchone()
    return {"bytes": int(ranges_bytes + streams_bytes), "ranges": int(ranges), "streams": int(streams),
            "messages": int(messages)}


def summary(cur, rollup_minutes: float, retention_days: float) -> str:
    """One line for ``salespulse status``."""
    s = sizes(cur)
    per = f", {s['bytes'] / s['messages']:.1f} B/message" if s["messages"] else ""
    return (f"{s['bytes'] / 1e6:.1f} MB, {s['ranges']} ranges over {s['streams']} streams{per}; "
            f"rolled up per hour after {rollup_minutes:g} min, trimmed after {retention_days:g} days "
            f"(LEDGER_ROLLUP_MINUTES, LEDGER_RETENTION_DAYS)")
