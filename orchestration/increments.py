"""Incremental health checks: what was ingested since the last evaluation.

``raw_tables_consistent`` and ``ingest_ledger_contiguous`` run every five
minutes. Over the whole tables their cost grew with history (docs/scaling.md);
each evaluation now looks only at:

* the rows ingested (``ingested_at``; ledger rows: ``recorded_at``) after the
  previous evaluation's bound. That bound is the new-data sensor's
  (``orchestration/sensors/late_rows.py``): it follows the oldest ingest
  transaction still open at the previous evaluation, so a row that commits
  late, with an ``ingested_at`` earlier than that evaluation, is still looked
  at; rows near the bound may be looked at twice, never zero times;
* what a previous evaluation found wrong (``pending``), looked at again until
  it is right: a violation keeps its check failing until it is fixed, as the
  whole-table check did, at the cost of the violations only.

State (bound, marks, pending) is one row per check in ``health_check_marks``
(sql/110), written in the evaluation's own repeatable-read transaction, so it
survives Dagster restarts and moves only when an evaluation completed. A
first evaluation (no row) looks at the last ``FIRST_LOOKBACK`` of ingestion;
older history is for ``salespulse audit`` (whole tables, docs/audit.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable

from orchestration.sensors.late_rows import Mark, advance, begin_tick

#: what a first evaluation (no state) looks at
FIRST_LOOKBACK = timedelta(hours=1)
#: findings kept per check (the newest): each is looked at again by every
#: evaluation (a raw-table finding is a whole event-time minute of rows), so
#: they are bounded too; the check fails while any is kept, and
#: `salespulse audit` lists them all
MAX_PENDING = 120


@dataclass(frozen=True)
class Increment:
    """What one evaluation looks at."""

    since: datetime  # rows ingested/recorded after this
    first: bool  # no state yet: since = now - FIRST_LOOKBACK
    pending: list  # JSON items found wrong before
    fell_back: bool  # an ingest transaction older than every mark is open


def _load(row, now: datetime) -> tuple[datetime, list[Mark] | None, list, bool]:
    if row is None:
        return now - FIRST_LOOKBACK, None, [], True
    since, marks, pending = row
    return since, [Mark(datetime.fromisoformat(at), int(xid)) for at, xid in marks], list(pending or []), False


def evaluate_increment(conn, check_name: str, margin: timedelta,
                       evaluate: Callable[[object, Increment], tuple[object, list]]):
    """Run ``evaluate(cursor, increment) -> (result, still pending)`` in one
    repeatable-read snapshot and store the next bound and the pending items in
    the same transaction (committed by the caller's connection); returns
    ``(result, increment)``."""
    with conn.cursor() as cur:
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        # The increment's queries touch a few minutes of rows (milliseconds),
        # but their estimated cost counts partitions that run-time pruning
        # skips and crosses jit_above_cost: JIT compilation took 1.4 s there.
        cur.execute("SET LOCAL jit = off")
        now, mark, xmin = begin_tick(cur)
        # FOR UPDATE: two overlapping evaluations cannot both move the bound
        # (the later one fails on the serialization error and changes nothing)
        cur.execute("SELECT since, marks, pending FROM health_check_marks WHERE check_name = %s FOR UPDATE",
                    (check_name,))
        since, previous, pending, first = _load(cur.fetchone(), now)
        next_since, marks, fell_back, _restarted = advance(previous, mark, xmin, margin, inclusive=True)
        if fell_back:
            # a transaction older than every mark (on a first evaluation: older
            # than it) is still open: its rows may come with an ingested_at
            # before any mark, so the next evaluation starts where this one did
            next_since = min(next_since, since)
        increment = Increment(since=since, first=first, pending=pending, fell_back=fell_back)
        result, still_pending = evaluate(cur, increment)
        cur.execute(
            """INSERT INTO health_check_marks (check_name, since, marks, pending, evaluated_at)
               VALUES (%(name)s, %(since)s, %(marks)s, %(pending)s, now())
               ON CONFLICT (check_name) DO UPDATE
               SET since = EXCLUDED.since, marks = EXCLUDED.marks, pending = EXCLUDED.pending,
                   evaluated_at = EXCLUDED.evaluated_at""",
            {"name": check_name, "since": next_since,
             "marks": json.dumps([[m.at.isoformat(), m.xid] for m in marks]),
             "pending": json.dumps(still_pending[-MAX_PENDING:])},
        )
    return result, increment


def minutes_of(items: list) -> list[datetime]:
    """Pending minutes stored as ISO text -> datetimes (UTC)."""
    return [datetime.fromisoformat(m).astimezone(timezone.utc) for m in items]
