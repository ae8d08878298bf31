"""Month partitions of the raw tables, and their retention.

The tables and the two SECURITY DEFINER functions that create and drop
partitions are in ``sql/100_partitioned_raw_tables.sql``; this module decides
*when*. Used by the hourly ``raw_partitions_job`` (orchestration/retention.py),
the report assets (a backfill of dropped raw history fails with the reason)
and ``salespulse status``.

Retention (``RAW_RETENTION_DAYS`` > 0) drops a month partition only when all
of these hold, so reports and all-time figures never lose a row:

* the whole month ends more than ``RAW_RETENTION_DAYS`` + one day ago (the
  day of grace covers a consumer that accepted an event just inside the
  window a moment before the drop; the consumer dead-letters older events);
* every minute of it with events or orders has its overview report row,
  counting the same rows (the new-data sensor's rule: a late row not yet
  restated holds the drop);
* every day of it has its per-day aggregate counting exactly its raw events
  (``salespulse/daily_aggregates.py``, behind the all-time views).

The database enforces these rules (``salespulse_raw_drop_bound``), and after
a drop it refuses rows for the dropped months, so a late or replayed event
cannot bring a dropped day back as a lone row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from salespulse.catalog import DOMAINS

#: grace beyond the retention, see the module docstring
GRACE = timedelta(days=1)

#: raw tables whose dropped history bounds what reports may be recomputed
REPORTED_TABLES = tuple(d.raw_table for d in DOMAINS.values())

_MONTH_PARTITIONS = ("SELECT table_name, partition, range_start, range_end "
                     "FROM salespulse_raw_month_partitions() ORDER BY 1, 3")


@dataclass(frozen=True)
class MonthPartition:
    table: str
    name: str
    start: datetime
    end: datetime


@dataclass(frozen=True)
class Drop:
    table: str
    partition: str
    start: datetime
    end: datetime
    rows: int


class RawHistoryDropped(Exception):
    """A report window needs raw rows that retention has dropped."""


#: creating or dropping a partition locks its table: rather than queue the
#: consumer and the dashboard behind a long query, give up (the hourly job
#: tries again)
LOCK_TIMEOUT_MS = 10_000


def _set_lock_timeout(cur, lock_timeout_ms: int) -> None:
    cur.execute("SELECT set_config('lock_timeout', %s, true)", (f"{int(lock_timeout_ms)}ms",))  # SET LOCAL


def ensure_partitions(cur, around: datetime | None = None, *, lock_timeout_ms: int = LOCK_TIMEOUT_MS) -> list[str]:
    """Create the month partitions of every raw table around ``around`` (now)
    and for rows waiting in a DEFAULT partition; return the ones created.
    Waits at most ``lock_timeout_ms`` for a raw table's lock."""
    _set_lock_timeout(cur, lock_timeout_ms)
    cur.execute("SELECT salespulse_ensure_raw_partitions(coalesce(%s, now()))", (around,))
    return [name for (name,) in cur.fetchall()]


def month_partitions(cur) -> list[MonthPartition]:
    cur.execute(_MONTH_PARTITIONS)
    return [MonthPartition(*row) for row in cur.fetchall()]


def drop_bound(cur, keep_days: int, now: datetime | None = None) -> tuple[datetime | None, str]:
    """The time before which whole month partitions may be dropped now (None:
    none may), and why that bound (``salespulse_raw_drop_bound`` in sql/100
    holds the rules, so the database enforces them whoever calls)."""
    if keep_days <= 0:
        return None, "RAW_RETENTION_DAYS is 0: raw rows are kept"
    horizon = (now or datetime.now(timezone.utc)) - timedelta(days=keep_days) - GRACE
    cur.execute("SELECT bound, reason FROM salespulse_raw_drop_bound(%s)", (horizon,))
    bound, why = cur.fetchone()
    if bound is not None and not any(p.end <= bound for p in month_partitions(cur)):
        return None, why + ": no month partition ends before it"
    return bound, why


def drop_expired(cur, keep_days: int, run_id: str | None = None, now: datetime | None = None, *,
                 lock_timeout_ms: int = LOCK_TIMEOUT_MS) -> tuple[list[Drop], str]:
    """Drop the month partitions :func:`drop_bound` allows (recorded in
    ``raw_partition_drops``) and commit; then, in a second transaction that
    locks no raw table, delete the dropped rows' keys and older dead letters;
    then the ingest ledger's ranges recorded before the dropped history, in
    bounded transactions of their own (salespulse/ledger.py).

    The second and third steps run on every call once anything was ever dropped,
    not only after a drop of this call: a run that died after the drop's commit
    (a killed job, a terminated backend) is finished by the next one, which has
    no partition left to drop. Both are cheap when there is nothing to trim (the
    keys' block-range indexes, the ledger's horizon)."""
    bound, why = drop_bound(cur, keep_days, now)
    drops: list[Drop] = []
    if bound is not None:
        _set_lock_timeout(cur, lock_timeout_ms)
        cur.execute("SELECT table_name, partition, range_start, range_end, rows "
                    "FROM salespulse_drop_raw_partitions(%s, %s)", (bound, run_id))
        drops = [Drop(*row) for row in cur.fetchall()]
        cur.connection.commit()
    cur.execute("SELECT EXISTS (SELECT 1 FROM raw_partition_drops)")
    if cur.fetchone()[0]:
        cur.execute("SELECT salespulse_trim_dropped_history()")
        cur.connection.commit()
        from salespulse.ledger import trim_dropped

        trim_dropped(cur.connection)
    return drops, why


def dropped_until(cur, tables) -> tuple[datetime, str, datetime] | None:
    """(end of the dropped raw history, partition, when) over ``tables``, or None."""
    cur.execute("SELECT range_end, partition, dropped_at FROM raw_partition_drops WHERE table_name = ANY(%s) "
                "ORDER BY range_end DESC LIMIT 1", (list(tables),))
    return cur.fetchone()


def check_retained(cur, tables, start: datetime, keep_days: int) -> None:
    """Raise :class:`RawHistoryDropped` if raw rows of ``tables`` from
    ``start`` on may be gone (a report backfill cannot recompute them)."""
    dropped = dropped_until(cur, tables)
    if dropped is not None and start < dropped[0]:
        until, partition, when = dropped
        raise RawHistoryDropped(
            f"cannot recompute from {start:%Y-%m-%d %H:%M} UTC: the raw rows before {until:%Y-%m-%d %H:%M} UTC "
            f"were dropped by retention (RAW_RETENTION_DAYS={keep_days}; {partition} dropped at "
            f"{when:%Y-%m-%d %H:%M} UTC). The reports already computed for those windows are kept; "
            f"backfill windows from {until:%Y-%m-%d %H:%M} UTC on.")


def summary(cur, keep_days: int) -> str:
    """One line for ``salespulse status``: the month partitions, rows waiting
    in DEFAULT partitions (the hourly job moves them), retention."""
    cur.execute("SELECT min(range_start), max(range_end), count(DISTINCT range_start) "
                "FROM salespulse_raw_month_partitions()")
    first, last, months = cur.fetchone()
    cur.execute("SELECT table_name FROM raw_partitioned_tables ORDER BY 1")
    waiting = 0
    for (table,) in cur.fetchall():
        cur.execute(f"SELECT count(*) FROM {table}_default")
        waiting += cur.fetchone()[0]
    line = (f"{months} months ({first:%Y-%m}..{last - timedelta(days=1):%Y-%m}), {waiting} rows waiting in DEFAULT"
            if months else f"no month partitions, {waiting} rows waiting in DEFAULT")
    dropped = dropped_until(cur, REPORTED_TABLES)
    retention = f"retention {keep_days} days" if keep_days else "retention off (RAW_RETENTION_DAYS=0)"
    return f"{line}; {retention}" + (f"; dropped before {dropped[0]:%Y-%m-%d}" if dropped else "")
