"""Shared pieces of the report code: the Spark Connect session, JDBC reads with
the time range pushed down, minute windows, and the idempotent write.

Time: every timestamp is an instant (``TIMESTAMPTZ`` in PostgreSQL); windows are
UTC minutes. Naive ``datetime`` arguments are taken as UTC (as in the event
contract). A window's minute is computed in Spark as
``floor(epoch_seconds / 60) * 60`` on the instant, so the Spark session time
zone cannot shift it, and it is turned back into an aware UTC ``datetime`` on
the driver.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from typing import Callable, Iterable, Sequence

from psycopg2.extensions import parse_dsn

from orchestration.reports.windows import clip_ranges, merge_windows, ranges_sql, record_restatements, restatements
from salespulse.catalog import Domain
from salespulse.settings import ROLE_ANALYTICS, Settings, get_settings

log = logging.getLogger(__name__)

MINUTE = timedelta(minutes=1)
CENT = Decimal("0.01")
ZERO = Decimal("0.00")


@dataclass
class ReportResult:
    """What one refresh did.

    ``rows``: report table -> rows written (after deleting the windows' old
    rows); ``spark_seconds``: wall time of the Spark part (JDBC read, aggregate,
    collect); ``source_rows``: raw rows read from PostgreSQL for the range.
    """

    window_start: datetime
    window_end: datetime
    rows: dict[str, int] = field(default_factory=dict)
    spark_seconds: float = 0.0
    source_rows: int = 0
    write_seconds: float = 0.0


@dataclass(frozen=True)
class ReportDomain:
    """One domain's reports: its catalogue entry (``salespulse/catalog.py``:
    tables, sources, topic) and the refresh that computes them. The Dagster
    asset of the domain and its asset checks are derived from this."""

    domain: Domain
    #: ``refresh(spark, settings, start, end, windows=None) -> ReportResult``
    #: (``windows``: only those minute windows of the range, see ``windows.py``)
    refresh: Callable[..., ReportResult]

    @property
    def name(self) -> str:
        return self.domain.name

    @property
    def raw_table(self) -> str:
        """The raw table whose minutes the overview windows must cover (freshness, completeness)."""
        return self.domain.raw_table

    @property
    def sources(self) -> tuple[str, ...]:
        """Every raw table the refresh reads."""
        return self.domain.raw_tables

    @property
    def tables(self) -> tuple[str, ...]:
        """Every report table the refresh writes, the overview first."""
        return self.domain.tables

    @property
    def overview(self) -> str:
        return self.domain.overview

    @property
    def counted(self) -> str:
        """The overview column counting ``raw_table``'s rows per window (restatements)."""
        return self.domain.counted

    @property
    def summary(self) -> str:
        return self.domain.summary


# --- Spark Connect session -----------------------------------------------------
_sessions: dict[str, object] = {}
_sessions_lock = threading.Lock()


def spark_session(remote: str | None = None):
    """A Spark Connect session for ``remote`` (default ``get_settings().spark_remote``).

    Cached per remote. A cached session is checked with one cheap round trip;
    if the server went away (restart), a new session is created, so callers
    never keep a dead handle. The session time zone is UTC.
    """
    from pyspark.sql import SparkSession

    remote = remote or get_settings().spark_remote
    with _sessions_lock:
        spark = _sessions.get(remote)
        if spark is not None:
            try:
                spark.sql("SELECT 1").collect()
                return spark
            except Exception:  # noqa: BLE001 - server restarted or session expired
                log.warning("cached spark session for %s is unusable; reconnecting", remote)
                _sessions.pop(remote, None)
                try:
                    spark.stop()
                except Exception:  # noqa: BLE001
                    pass
        # every Dagster run is a new client process: release its server-side
        # session when the process exits, or the Spark Connect server keeps it
        # (and its memory) until the idle timeout (salespulse/stack/spark.py)
        os.environ.setdefault("SPARK_CONNECT_RELEASE_SESSION_ON_EXIT", "true")
        spark = SparkSession.builder.remote(remote).create()
        spark.conf.set("spark.sql.session.timeZone", "UTC")
        _sessions[remote] = spark
        return spark


def close_sessions() -> None:
    """Stop every cached client session (before a server is stopped, or at exit)."""
    with _sessions_lock:
        for spark in _sessions.values():
            try:
                spark.stop()
            except Exception:  # noqa: BLE001
                pass
        _sessions.clear()


#: ranges up to this long are aggregated with ONE shuffle partition: their
#: post-aggregation data is tiny, and each extra reduce task costs scheduling
#: time (measured: a one-minute refresh 1.9 s -> 0.7 s per query on a busy
#: 2-core machine). Longer ranges (hour partitions, backfills) keep the
#: server's ``spark.sql.shuffle.partitions``.
SMALL_RANGE = timedelta(minutes=15)


@contextlib.contextmanager
def shuffle_partitions_for(spark, start: datetime, end: datetime):
    """Use 1 shuffle partition while computing a small range; restore after."""
    if end - start > SMALL_RANGE:
        yield
        return
    key = "spark.sql.shuffle.partitions"
    previous = spark.conf.get(key)
    spark.conf.set(key, "1")
    try:
        yield
    finally:
        spark.conf.set(key, previous)


#: run a refresh's two independent Spark jobs concurrently (threads sharing the
#: session; the server schedules both). ``bench/bench_reports.py`` measures both.
PARALLEL_JOBS = True


def run_jobs(*jobs):
    """Run zero-argument callables, concurrently if ``PARALLEL_JOBS``; return their results."""
    import orchestration.reports.common as this

    if not this.PARALLEL_JOBS or len(jobs) < 2:
        return [job() for job in jobs]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(job) for job in jobs]
        return [f.result() for f in futures]


# --- windows -------------------------------------------------------------------
def as_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def align_range(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """``[start, end)`` in UTC, widened to whole minutes (start floored, end ceiled)."""
    start, end = as_utc(start), as_utc(end)
    if end <= start:
        raise ValueError(f"empty range: start {start} >= end {end}")
    floor = start.replace(second=0, microsecond=0)
    ceil = end.replace(second=0, microsecond=0)
    if ceil < end:
        ceil += MINUTE
    return floor, ceil


def minute_of(epoch_seconds: int) -> datetime:
    return datetime.fromtimestamp(int(epoch_seconds), tz=timezone.utc)


def sql_ts(value: datetime) -> str:
    """A timestamptz literal that does not depend on the session's TimeZone."""
    return f"TIMESTAMPTZ '{as_utc(value).isoformat()}'"


def in_range(column: str, start: datetime, end: datetime) -> str:
    """SQL predicate ``start <= column < end`` (pushed down to PostgreSQL with the JDBC query)."""
    return f"{column} >= {sql_ts(start)} AND {column} < {sql_ts(end)}"


def in_span(column: str, start: datetime, end: datetime, ranges=None) -> str:
    """:func:`in_range`, narrowed to ``ranges`` (minute windows merged into
    ``(start, end)`` ranges, see ``windows.py``) when given."""
    if ranges is None:
        return in_range(column, start, end)
    return f"{in_range(column, start, end)} AND {ranges_sql(column, ranges, sql_ts)}"


def window_ranges(windows, start: datetime, end: datetime):
    """``None`` (the whole range) without ``windows``; else the windows of
    ``[start, end)`` merged into ranges (an error if none falls in it)."""
    if windows is None:
        return None
    ranges = clip_ranges(merge_windows(windows), start, end)
    if not ranges:
        raise ValueError(f"none of the windows {sorted(windows)} is in [{start}, {end})")
    return ranges


def minute_column(F):
    """The ``timestamp`` column's minute as epoch seconds (floor of the instant,
    independent of the Spark session's time zone); ``F`` is ``pyspark.sql.functions``."""
    return (F.floor(F.unix_seconds(F.col("timestamp")) / 60) * 60).cast("long")


def money(value) -> Decimal:
    return (Decimal(value) if value is not None else ZERO).quantize(CENT, rounding=ROUND_HALF_UP)


def ratio_money(total: Decimal, count: int) -> Decimal:
    """``total / count`` rounded half-up to cents (0 when count is 0): exact Decimal math."""
    if not count:
        return ZERO
    return (Decimal(total) / Decimal(count)).quantize(CENT, rounding=ROUND_HALF_UP)


# --- JDBC ----------------------------------------------------------------------
@dataclass(frozen=True)
class Jdbc:
    url: str
    user: str
    password: str


def jdbc_for(settings: Settings, role: str = ROLE_ANALYTICS) -> Jdbc:
    """``postgresql://u:p@h:port/db?x=y`` (the role's URL) -> JDBC URL + credentials.

    The URL is read by libpq (``parse_dsn``); its other parameters (``x=y``)
    are passed on to the JDBC driver."""
    options = parse_dsn(settings.role_url(role))
    user, password = options.pop("user", ""), options.pop("password", "")
    host = options.pop("host", "127.0.0.1")
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    port = options.pop("port", 5432)
    database = options.pop("dbname", "postgres")
    params = [f"{k}={v}" for k, v in options.items()]
    params.append("ApplicationName=salespulse-reports")
    url = f"jdbc:postgresql://{host}:{port}/{database}?" + "&".join(params)
    return Jdbc(url, user, password)


#: long ranges (backfills) are read in parallel: one JDBC partition per this
#: much time, at most MAX_READ_PARTITIONS. An hour partition is one read.
READ_PARTITION_SPAN = timedelta(hours=2)
MAX_READ_PARTITIONS = 4


def read_partitions(start: datetime, end: datetime) -> int:
    spans = -(-(end - start) // READ_PARTITION_SPAN)  # ceil
    return max(1, min(MAX_READ_PARTITIONS, spans))


def read_query(spark, jdbc: Jdbc, query: str, start: datetime | None = None, end: datetime | None = None):
    """A DataFrame over ``(query) AS src`` read through the PostgreSQL JDBC driver.

    The SELECT (with its WHERE on the time range) runs inside PostgreSQL, which
    uses the ``"timestamp"`` indexes; Spark only receives the range's rows. The
    physical plan shows it: ``Scan JDBCRelation((SELECT ... WHERE "timestamp" >=
    ... AND "timestamp" < ...) AS src)`` (asserted in ``tests/test_reports.py``).

    With ``start``/``end`` spanning more than ``READ_PARTITION_SPAN`` the read is
    split on the query's ``"timestamp"`` column into up to
    ``MAX_READ_PARTITIONS`` JDBC partitions (Spark adds stride predicates on top
    of the query's own range; the first and last strides are open-ended, so each
    row is read exactly once whatever the bounds).
    """
    reader = (
        spark.read.format("jdbc")
        .option("url", jdbc.url)
        .option("user", jdbc.user)
        .option("password", jdbc.password)
        .option("driver", "org.postgresql.Driver")
        .option("dbtable", f"({query}) AS src")
        .option("fetchsize", "10000")
    )
    if start is not None and end is not None and read_partitions(start, end) > 1:
        fmt = "%Y-%m-%d %H:%M:%S"
        reader = (reader.option("partitionColumn", "timestamp")
                  .option("lowerBound", as_utc(start).strftime(fmt))
                  .option("upperBound", as_utc(end).strftime(fmt))
                  .option("numPartitions", str(read_partitions(start, end))))
    return reader.load()


# --- write ---------------------------------------------------------------------
#: the Dagster run computing the reports in this context (see ``computed_by``)
_RUN_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("report_run_id", default=None)


@contextlib.contextmanager
def computed_by(run_id: str | None):
    """Refreshes inside this block record ``run_id`` in ``report_refreshes``
    (the drill-down's "run that computed this figure"). The report assets wrap
    their refresh in it; a refresh outside Dagster records NULL."""
    token = _RUN_ID.set(run_id)
    try:
        yield
    finally:
        _RUN_ID.reset(token)


def record_refresh(cur, domain: str, ranges: Sequence[tuple[datetime, datetime]]) -> None:
    """Inside the refresh's transaction: ``ranges`` (the ``[start, end)`` whose
    report rows were just replaced) were computed by the current run
    (``computed_by``); refreshes lying wholly inside them are superseded."""
    for start, end in ranges:
        cur.execute("DELETE FROM report_refreshes WHERE domain = %s AND window_start >= %s AND window_end <= %s",
                    (domain, start, end))
        cur.execute("INSERT INTO report_refreshes (domain, window_start, window_end, run_id) VALUES (%s, %s, %s, %s)",
                    (domain, start, end, _RUN_ID.get()))


#: one advisory lock per domain (this class, the hash of the domain's name):
#: concurrent refreshes of overlapping ranges (a sensor run and a backfill)
#: serialise instead of failing on the primary key
_LOCK_CLASS = 74177020


def replace_windows(
    settings: Settings,
    domain: str,
    start: datetime,
    end: datetime,
    tables: Sequence[tuple[str, Sequence[str], Iterable[tuple]]],
    ranges: Sequence[tuple[datetime, datetime]] | None = None,
    restate: tuple[str, str] | None = None,
) -> dict[str, int]:
    """In ONE transaction (as the analytics role): for each ``(table, columns,
    rows)`` delete the rows with ``window_start`` in ``[start, end)`` and insert
    ``rows``. Re-running or backfilling a range therefore never duplicates, and
    readers see either the old or the new rows of the range, never a mix.
    ``ranges`` (sub-ranges of ``[start, end)``): replace only those windows.
    ``restate`` = ``(overview table, counted column)``: record the windows
    this write restates in ``report_restatements`` (``windows.py``).
    The same transaction records the refresh (range, run: ``computed_by``) in
    ``report_refreshes``, replacing the refreshes it supersedes."""
    import psycopg2
    from psycopg2.extras import execute_values

    written: dict[str, int] = {}
    conn = psycopg2.connect(settings.role_url(ROLE_ANALYTICS), application_name="salespulse-reports")
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SET LOCAL TIME ZONE 'UTC'")
            cur.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_CLASS, domain))
            ranges = list(ranges) if ranges is not None else [(start, end)]
            tables = [(table, columns, list(rows)) for table, columns, rows in tables]
            restated = _restatements(cur, ranges, tables, restate) if restate else []
            where = " OR ".join("(window_start >= %s AND window_start < %s)" for _ in ranges)
            for table, columns, rows in tables:
                cur.execute(f"DELETE FROM {table} WHERE {where}", [t for r in ranges for t in r])
                if rows:
                    execute_values(cur, f"INSERT INTO {table} ({', '.join(columns)}) VALUES %s", rows,
                                   page_size=1000)
                written[table] = len(rows)
            if restated:
                record_restatements(cur, domain, restated, _RUN_ID.get())
            record_refresh(cur, domain, ranges)
    finally:
        conn.close()
    return written


def _restatements(cur, ranges, tables, restate: tuple[str, str]):
    """The windows this write restates (``windows.restatements``), from the new overview rows."""
    overview, counted = restate
    for table, columns, rows in tables:
        if table == overview:
            i, c = columns.index("window_start"), columns.index(counted)
            return restatements(cur, overview, counted, ranges, {r[i]: r[c] for r in rows})
    raise ValueError(f"{overview} is not among the tables written")


class Stopwatch:
    def __init__(self):
        self.t0 = time.perf_counter()

    def seconds(self) -> float:
        return time.perf_counter() - self.t0


def refresh_domain(domain: Domain, compute, spark, settings: Settings, start: datetime, end: datetime,
                   windows=None) -> ReportResult:
    """Recompute ``domain``'s reports of every minute window in ``[start, end)``
    (UTC; widened to whole minutes) and replace their rows in one transaction;
    with ``windows`` (minute starts), only those windows of the range
    (``windows.py``). Restatements are recorded in the same transaction.

    ``compute(spark, settings, start, end, ranges) -> (rows per report table,
    source_rows)`` is the domain's Spark part."""
    start, end = align_range(start, end)
    ranges = window_ranges(windows, start, end)
    watch = Stopwatch()
    with shuffle_partitions_for(spark, start, end):
        rows, source_rows = compute(spark, settings, start, end, ranges)
    spark_seconds = watch.seconds()
    watch = Stopwatch()
    written = replace_windows(settings, domain.name, start, end,
                              [(r.table, r.columns, rows[r.table]) for r in domain.reports],
                              ranges=ranges, restate=(domain.overview, domain.counted))
    return ReportResult(start, end, written, spark_seconds, source_rows, write_seconds=watch.seconds())
