"""Finding the report windows that late or out-of-order rows left wrong.

Why not "the highest id seen": ids are drawn when a row is inserted, but a
row becomes visible when its transaction commits. Two consumers writing side
by side (or one batch transaction that stays open longer than the next) commit
ids out of order: a tick that saw id 120 has not seen id 110 if that
transaction commits a moment later, and a cursor at 120 never looks back.

What is used instead, per tick, in ONE repeatable-read snapshot:

1. **Rows committed since the last tick**, by ``ingested_at``
   (``clock_timestamp()`` at insert, BRIN-indexed): every row that was not
   visible to the previous tick belongs to a transaction that was still open
   (or not begun) then, i.e. whose transaction id is >= that snapshot's
   ``xmin`` (the oldest transaction still open). Each tick records a *mark*
   ``(now(), its own transaction id)``; a transaction id greater than a mark's
   id was assigned after that mark's time, so its rows were inserted after it.
   The next tick therefore scans ``ingested_at > t_j - margin`` where ``j`` is
   the newest mark whose id is below the previous snapshot's ``xmin``. This
   bound follows the oldest open transaction, however long it stays open: no
   assumption on how long an ingest transaction lasts. ``margin``
   (``LATE_ROWS_MARGIN_SECONDS``) only covers clock steps and the
   microseconds between a row's ``clock_timestamp()`` and the assignment of
   its transaction's id (a consumer batch writes its temp tables first, so it
   has an id before any raw row). If the oldest open transaction predates
   every kept mark (it was open before the sensor's first tick), the bound
   falls back to the oldest mark (and says so in the log).
2. **Windows whose report disagrees with the raw rows**: the minute windows of
   those rows, plus the windows still pending from earlier ticks, are compared
   with the domain's overview: raw rows in the window vs the overview's count
   (``ReportDomain.counted``: ``report_ecommerce_overview_minute.events``,
   ``report_restaurant_overview_minute.orders``; no report row = differs).
   Raw rows are insert-only, so a window whose counts agree is complete.
3. Differing windows stay **pending** in the cursor until their counts agree,
   whatever happens to the runs requested for them (a run that read before a
   row committed, a failed run, a window left to the minute schedule). Rows
   are found once by (1); (3) makes sure they end in the reports.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Iterable

#: marks kept in the cursor at most (one per tick; older ones are only needed
#: while a transaction older than them is still open)
MAX_MARKS = 500
#: pending windows kept at most per domain (the newest)
MAX_PENDING = 5000


@dataclass(frozen=True)
class Mark:
    at: datetime  # now() of a tick's transaction
    xid: int  # that transaction's own id (assigned after ``at``)


@dataclass
class Cursor:
    """The sensor's cursor: where the next scan starts, the marks, the pending
    windows per domain and the highest ids (for the raw tables' observations)."""

    since: datetime
    marks: list[Mark]
    pending: dict[str, list[datetime]] = field(default_factory=dict)
    ids: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({
            "v": 2,
            "since": self.since.isoformat(),
            "marks": [[m.at.isoformat(), m.xid] for m in self.marks],
            "pending": {d: [w.isoformat() for w in ws] for d, ws in sorted(self.pending.items()) if ws},
            "ids": self.ids,
        }, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> "Cursor | None":
        """``None`` for no cursor or one of the former format (``{table: max id}``)."""
        if not text:
            return None
        data = json.loads(text)
        if data.get("v") != 2:
            return None
        return cls(
            since=datetime.fromisoformat(data["since"]),
            marks=[Mark(datetime.fromisoformat(at), int(xid)) for at, xid in data["marks"]],
            pending={d: [datetime.fromisoformat(w) for w in ws] for d, ws in data.get("pending", {}).items()},
            ids={t: int(i) for t, i in data.get("ids", {}).items()},
        )


def next_since(marks: list[Mark], xmin: int, margin: timedelta) -> tuple[datetime, list[Mark], bool]:
    """From the marks and the current snapshot's ``xmin``: where the next scan
    starts, the marks to keep, and whether the bound had to fall back (an open
    transaction older than every mark).

    Every transaction still open now has an id >= ``xmin``; the newest mark
    with ``xid < xmin`` was taken before any of them got its id."""
    marks = sorted(marks, key=lambda m: m.xid)
    below = [i for i, m in enumerate(marks) if m.xid < xmin]
    if below:
        j = below[-1]
        return marks[j].at - margin, marks[j:][-MAX_MARKS:], False
    return marks[0].at - margin, marks[-MAX_MARKS:], True


def advance(previous: list[Mark] | None, mark: Mark, xmin: int, margin: timedelta,
            inclusive: bool = False) -> tuple[datetime, list[Mark], bool, bool]:
    """One tick's step for any reader of rows by ``ingested_at`` (the new-data
    sensor, the incremental health checks): the previous marks plus this
    tick's ``mark`` -> ``(where the next scan starts, marks to keep, fell
    back, restarted)``. ``restarted``: a previous mark has a higher id than
    this tick's (the database was replaced): the marks start again.

    ``inclusive``: a mark whose id *equals* ``xmin`` bounds too. The oldest
    open transaction is then the mark's own (this tick's, when nothing older
    is open): every other open one got its id after it. With the strict rule
    (the sensor's) the bound trails one tick behind, so each row is scanned by
    two consecutive ticks."""
    restarted = previous is not None and any(m.xid > mark.xid for m in previous)
    marks = [mark] if restarted else [*(previous or []), mark]
    since, marks, fell_back = next_since(marks, xmin + 1 if inclusive else xmin, margin)
    return since, marks, fell_back, restarted


def differing(rows: Iterable[tuple[datetime, int, int | None]]) -> list[datetime]:
    """``(window, raw rows, reported count or None)`` -> windows to restate."""
    return sorted(w for w, raw, reported in rows if reported is None and raw > 0 or
                  reported is not None and int(reported) != int(raw))


def scan_sql(raw_table: str, overview: str, counted: str) -> str:
    """Candidate windows (rows ingested after ``%(since)s`` + ``%(pending)s``)
    with their raw count and reported count (NULL: no report row)."""
    return f"""
        WITH candidates AS (
            SELECT DISTINCT date_trunc('minute', "timestamp", 'UTC') AS w
            FROM {raw_table} WHERE ingested_at > %(since)s
            UNION
            SELECT unnest(%(pending)s::timestamptz[])
        )
        SELECT c.w,
               (SELECT count(*) FROM {raw_table} r
                WHERE r."timestamp" >= c.w AND r."timestamp" < c.w + interval '1 minute'),
               o.{counted}
        FROM candidates c LEFT JOIN {overview} o ON o.window_start = c.w
        ORDER BY c.w"""


def begin_tick(cur) -> tuple[datetime, Mark, int]:
    """First statement of a tick's repeatable-read transaction: ``(now, mark, xmin)``."""
    cur.execute("SELECT now(), pg_current_xact_id()::text::bigint, "
                "pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
    now, xid, xmin = cur.fetchone()
    return now, Mark(now, int(xid)), int(xmin)


def windows_to_restate(cur, raw_table: str, overview: str, counted: str, since: datetime,
                       pending: list[datetime]) -> list[datetime]:
    cur.execute(scan_sql(raw_table, overview, counted), {"since": since, "pending": list(pending)})
    return differing(cur.fetchall())


def by_hour(windows: Iterable[datetime]) -> dict[datetime, list[datetime]]:
    """Windows grouped by their UTC hour."""
    out: dict[datetime, list[datetime]] = {}
    for w in sorted(windows):
        hour = w.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)
        out.setdefault(hour, []).append(w)
    return out
