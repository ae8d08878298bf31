"""Retention of the stores that grow with time rather than with data.

Plain functions (no Dagster import), each taking an open psycopg2 connection
as the analytics role (or the admin) and the settings; run every 10 minutes
by ``store_retention_job`` (orchestration/retention.py). Every trim is
bounded per call: it deletes in batches of ``BATCH_ROWS`` rows, one
transaction each, at most ``MAX_BATCHES`` of them; what is left is taken by
the next run. A crash between two batches leaves every table consistent:
each batch deletes whole rows that match the trim's rule on their own (no
batch depends on another), and a run started afterwards goes on from there.

What is trimmed, and what is never deleted because a rule still reads it:

* ``dead_letters`` (:func:`trim_dead_letters`): rows received more than
  ``DEAD_LETTER_RETENTION_DAYS`` ago; then, oldest first, until the live
  bytes are within ``DEAD_LETTER_MAX_MB``. The dead letters of the last
  :func:`dead_letters_needed_since` (the ledger reconciliation's
  ``RECONCILE_MINUTES`` plus its batch span, and the last hour that
  ``dead_letter_rate`` counts) are never deleted: the size bound empties
  their payload instead (the row, its full size and hash stay, so the checks
  still count them).
* the pipeline records (:data:`OPS_TABLES`, :func:`trim_ops_history`):
  older than ``OPS_HISTORY_RETENTION_DAYS``, except the newest row per check
  and asset (``pipeline_check_results``), per topic (``pipeline_observations``:
  the freshness API reads the latest lag) and per raw table
  (``raw_partition_drops``: the floor of dropped history, which backfills and
  the drop functions read); alert claims (``pipeline_alert_notifications``)
  are kept at least as long as any check may evaluate their window again (a
  deleted claim would be notified twice).

Not trimmed here: the raw tables and their keys (``RAW_RETENTION_DAYS``,
salespulse/partitions.py), report tables and per-day aggregates (figures,
not history), ``health_check_marks`` / ``pipeline_report_freshness`` /
``pipeline_run_queue`` / ``daily_aggregates_state`` (one row per check,
domain or singleton: bounded as they are), and ``ingest_ledger``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from salespulse.settings import Settings

#: rows deleted per transaction
BATCH_ROWS = 5_000
#: transactions per trim and call (the next run goes on)
MAX_BATCHES = 50

#: the ledger reconciliation looks this far behind RECONCILE_MINUTES for a
#: batch's rows (orchestration/checks/reconcile.py BATCH_SPAN), plus a margin
RECONCILE_SPAN = timedelta(minutes=15)
#: dead_letter_rate (health checks and the minute alert) counts the last hour
RATE_WINDOW = timedelta(hours=1, minutes=5)

#: bytes of a dead letter as stored, without reading any toasted value
#: (pg_column_size reads the header of a compressed/out-of-line datum only)
DEAD_LETTER_ROW_BYTES = ("(64 + coalesce(pg_column_size(payload), 0) + coalesce(pg_column_size(key), 0)"
                         " + coalesce(pg_column_size(key_bytes), 0) + coalesce(pg_column_size(headers), 0)"
                         " + coalesce(pg_column_size(error), 0) + pg_column_size(topic)"
                         " + pg_column_size(topic_incarnation))")


@dataclass
class Trim:
    """What one trim did: rows deleted (and dead-letter payloads emptied)."""

    table: str
    deleted: int = 0
    emptied: int = 0
    horizon: datetime | None = None  # rows older than this were eligible
    more: bool = False  # stopped at MAX_BATCHES: the next run goes on
    note: str = ""
    extra: dict = field(default_factory=dict)


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(timezone.utc)


def dead_letters_needed_since(settings: Settings, now: datetime | None = None) -> datetime:
    """Dead letters received after this are still read by a check (never deleted)."""
    keep = max(timedelta(minutes=settings.reconcile_minutes) + RECONCILE_SPAN, RATE_WINDOW)
    return _now(now) - keep


def alert_claims_needed_since(settings: Settings, now: datetime | None = None) -> datetime:
    """Alert claims first taken after this may be evaluated again (a window of
    the reconciliation's RECONCILE_MINUTES, the dead-letter hour, the newest
    revenue block, the funnel minutes): never deleted."""
    keep = max(timedelta(minutes=settings.reconcile_minutes), timedelta(hours=1)) + timedelta(hours=1)
    return _now(now) - keep


def _batches(conn, sql: str, params: dict, batch_rows: int, max_batches: int) -> tuple[int, bool]:
    """Run a ``DELETE ... LIMIT %(n)s``-style statement until it deletes fewer
    than a batch; one transaction each. Returns (rows, more left)."""
    total = 0
    for _ in range(max_batches):
        with conn.cursor() as cur:
            cur.execute(sql, {**params, "n": batch_rows})
            n = cur.rowcount
        conn.commit()
        total += n
        if n < batch_rows:
            return total, False
    return total, True


# --- dead letters -----------------------------------------------------------------

def dead_letter_bytes(cur) -> tuple[int, int]:
    """(live bytes, rows) of dead_letters."""
    cur.execute(f"SELECT coalesce(sum({DEAD_LETTER_ROW_BYTES}), 0), count(*) FROM dead_letters")
    size, rows = cur.fetchone()
    return int(size), int(rows)


def trim_dead_letters(conn, settings: Settings, now: datetime | None = None, *,
                      batch_rows: int = BATCH_ROWS, max_batches: int = MAX_BATCHES) -> Trim:
    """Age, then size (see the module docstring)."""
    now = _now(now)
    needed = dead_letters_needed_since(settings, now)
    horizon = now - timedelta(days=settings.dead_letter_retention_days)
    trim = Trim("dead_letters", horizon=horizon)
    by_age, more = _batches(conn, """
        DELETE FROM dead_letters WHERE id IN (
            SELECT id FROM dead_letters WHERE received_at < %(before)s ORDER BY received_at, id LIMIT %(n)s)""",
                            {"before": min(horizon, needed)}, batch_rows, max_batches)
    trim.deleted, trim.more = by_age, more
    trim.extra["deleted_by_age"] = by_age
    if horizon > needed:
        trim.note = (f"kept the dead letters after {needed:%Y-%m-%d %H:%M} UTC (read by ledger_reconciles / "
                     "dead_letter_rate)")
    cap = int(settings.dead_letter_max_mb * 1024 * 1024)
    with conn.cursor() as cur:
        # the table on disk (heap, TOAST, indexes) holds at least its live bytes:
        # while it is within the bound, the rows need not be read
        cur.execute("SELECT pg_total_relation_size('dead_letters')")
        on_disk = cur.fetchone()[0]
        size = dead_letter_bytes(cur)[0] if on_disk > cap else 0
    conn.rollback()
    trim.extra["bytes_on_disk"] = on_disk
    excess = size - cap
    trim.extra.update({"bytes_before_size_trim": size, "max_bytes": cap})
    batches = 0
    while excess > 0 and batches < max_batches:
        batches += 1
        with conn.cursor() as cur:
            # oldest first; a needed row whose payload is emptied already frees nothing more
            cur.execute(f"""
                SELECT id, {DEAD_LETTER_ROW_BYTES}, coalesce(pg_column_size(payload), 0), received_at >= %(needed)s
                FROM dead_letters WHERE received_at < %(needed)s OR payload IS NOT NULL
                ORDER BY received_at, id LIMIT %(n)s""", {"needed": needed, "n": batch_rows})
            rows = cur.fetchall()
            if not rows:
                break
            delete, empty = [], []
            for ident, row_bytes, payload_bytes, is_needed in rows:
                if excess <= 0:
                    break
                if is_needed:
                    empty.append(ident)
                    excess -= payload_bytes
                else:
                    delete.append(ident)
                    excess -= row_bytes
            if delete:
                cur.execute("DELETE FROM dead_letters WHERE id = ANY(%s)", (delete,))
                trim.deleted += cur.rowcount
            if empty:
                cur.execute("""UPDATE dead_letters SET payload_bytes = coalesce(payload_bytes, octet_length(payload)),
                                                       payload = NULL
                               WHERE id = ANY(%s) AND payload IS NOT NULL""", (empty,))
                trim.emptied += cur.rowcount
        conn.commit()
        if len(rows) < batch_rows and excess > 0:
            break  # every row walked: what is left is needed rows without payload
    trim.more = trim.more or excess > 0 and batches >= max_batches
    trim.extra["deleted_by_size"] = trim.deleted - by_age
    if excess > 0 and not trim.more:
        trim.note = (trim.note + "; " if trim.note else "") + (
            f"{excess} bytes over DEAD_LETTER_MAX_MB are rows the checks still read (payloads emptied)")
    return trim


# --- pipeline records ---------------------------------------------------------------

@dataclass(frozen=True)
class OpsTable:
    """A pipeline record trimmed by age: its time column, key columns, and the
    rows kept whatever their age (an extra SQL condition on alias ``t``)."""

    table: str
    time_column: str
    key: tuple[str, ...]
    keep: str = ""  # SQL: rows matching it are kept
    why: str = ""


OPS_TABLES: tuple[OpsTable, ...] = (
    OpsTable("report_refreshes", "refreshed_at", ("id",),
             why="the drill-down's run of a window; older runs are gone from Dagster too"),
    OpsTable("report_restatements", "restated_at", ("id",), why="the dashboard's restatement markers"),
    OpsTable("pipeline_check_results", "evaluated_at", ("id",),
             keep="t.evaluated_at >= (SELECT max(x.evaluated_at) FROM pipeline_check_results x "
                  "WHERE x.check_name = t.check_name AND x.asset = t.asset)",
             why="the newest outcome of each check is kept"),
    OpsTable("pipeline_alert_notifications", "first_at", ("check_name", "asset", "window_key"),
             why="claims of windows no check evaluates any more"),
    OpsTable("pipeline_observations", "observed_at", ("topic", "observed_at"),
             keep="t.observed_at >= (SELECT max(x.observed_at) FROM pipeline_observations x WHERE x.topic = t.topic)",
             why="the newest observation of each topic is kept (freshness API)"),
    OpsTable("pipeline_runs", "recorded_at", ("run_id",), why="the dashboard's run list"),
    OpsTable("raw_partition_drops", "dropped_at", ("id",),
             keep="t.range_end >= (SELECT max(x.range_end) FROM raw_partition_drops x WHERE x.table_name = t.table_name)",
             why="the newest drop of each table is kept (the floor of dropped history)"),
)


def ops_horizon(settings: Settings, table: str, now: datetime | None = None) -> datetime:
    """Rows of ``table`` older than this may go (OPS_HISTORY_RETENTION_DAYS, or
    later for alert claims still needed)."""
    now = _now(now)
    horizon = now - timedelta(days=settings.ops_history_retention_days)
    if table == "pipeline_alert_notifications":
        horizon = min(horizon, alert_claims_needed_since(settings, now))
    return horizon


def trim_ops_table(conn, settings: Settings, spec: OpsTable, now: datetime | None = None, *,
                   batch_rows: int = BATCH_ROWS, max_batches: int = MAX_BATCHES) -> Trim:
    horizon = ops_horizon(settings, spec.table, now)
    key = ", ".join(spec.key)
    keep = f" AND NOT ({spec.keep})" if spec.keep else ""
    sql = (f"DELETE FROM {spec.table} WHERE ({key}) IN ("
           f"SELECT {key} FROM {spec.table} t WHERE t.{spec.time_column} < %(before)s{keep} "
           f"ORDER BY t.{spec.time_column} LIMIT %(n)s)")
    deleted, more = _batches(conn, sql, {"before": horizon}, batch_rows, max_batches)
    return Trim(spec.table, deleted=deleted, horizon=horizon, more=more, note=spec.why)


def trim_ops_history(conn, settings: Settings, now: datetime | None = None, **kw) -> list[Trim]:
    """Every table of :data:`OPS_TABLES`, each bounded per call."""
    return [trim_ops_table(conn, settings, spec, now, **kw) for spec in OPS_TABLES]


def trim_all(conn, settings: Settings, now: datetime | None = None, **kw) -> list[Trim]:
    """Dead letters and the pipeline records (what the retention op runs)."""
    return [trim_dead_letters(conn, settings, now, **kw), *trim_ops_history(conn, settings, now, **kw)]
