"""The compact ingest ledger's bound (sql/130_compact_ledger.sql,
salespulse/ledger.py) against a real PostgreSQL: roll-ups merge contiguous
ranges per stream and hour, trims move a contiguous prefix into the stream's
trimmed range, and after either (or a crash between or inside them) the audit
still accounts for every offset, a gap or an overlap is still found, and a
re-delivery of trimmed offsets is still skipped. The migration of sql/040
ledger rows keeps what the audit proves."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone

import psycopg2
import pytest

from salespulse import ledger
from salespulse.db import SQL_DIR, apply_migrations
from salespulse.integrity import LEDGER_GAPS_SQL, ledger_gaps, ledger_gaps_since, ledger_summary
from salespulse.ops.audit import format_report, run_audit
from salespulse.settings import ROLE_ANALYTICS, ROLE_INGEST, Settings
from services.consumer.store import BatchWriter
from tests.support.consumer import ecommerce_event, query
from tests.test_consumer_writer import EC, RO, raw

NOW = datetime.now(timezone.utc)


@pytest.fixture
def urls(database_url):
    settings = Settings(database_url=database_url)
    return database_url, settings.role_url(ROLE_INGEST), settings.role_url(ROLE_ANALYTICS)


@pytest.fixture
def writer(urls):
    w = BatchWriter(urls[1], group="g")
    yield w
    w.close()


def batch(offsets, partition=0, topic=EC, bad_every=5):
    return [raw(topic, o, b"{bad" if o % bad_every == bad_every - 1 else ecommerce_event(o + 1000 * partition),
                partition=partition) for o in offsets]


#: an hour boundary four hours ago: ranges back-dated from it share (or not) an hour for sure
HOUR = NOW.replace(minute=0, second=0, microsecond=0) - timedelta(hours=4)


def recorded(url, at_by_first: dict[int, datetime | float]):
    """Back-date ranges (by first offset, partition 0 of EC): recorded at that
    time, or that many minutes ago."""
    for first, at in at_by_first.items():
        at = NOW - timedelta(minutes=at) if isinstance(at, (int, float)) else at
        query(url, """UPDATE ingest_ledger_ranges SET recorded_at = %s
                      WHERE first_offset = %s AND stream IN (SELECT id FROM ingest_streams
                                                             WHERE topic = %s AND "partition" = 0)""",
              (at, first, EC))


def minutes(hour: datetime, *offsets: int) -> list[datetime]:
    return [hour + timedelta(minutes=m) for m in offsets]


def proof(url):
    """What the audit proves: per stream the offsets and counts, and every discontinuity."""
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        summary = [{k: v for k, v in row.items() if k not in ("batches", "trimmed_through")}
                   for row in ledger_summary(cur)]
        return summary, ledger_gaps(cur)


def analytics(url):
    conn = psycopg2.connect(url)
    conn.autocommit = False
    return conn


def test_rollup_merges_contiguous_ranges_per_hour_and_proves_the_same(urls, writer):
    admin, _ingest, analytics_url = urls
    for lo in range(0, 60, 10):
        writer.write_raw(batch(range(lo, lo + 10)))
    writer.write_raw(batch(range(70, 80)))  # offsets 60..69 are in no batch: a gap
    writer.write_raw(batch(range(0, 5), partition=1))
    # 0..29 recorded in one hour, 30..59 and the range after the gap in the next
    recorded(admin, dict(zip((0, 10, 20, 30, 40, 50, 70), minutes(HOUR, 1, 2, 3, 61, 62, 63, 64))))
    before = proof(admin)
    assert before[1] == [("g", EC, "", 0, 60, 70)]
    with analytics(analytics_url) as conn, conn.cursor() as cur:
        merged, examined = ledger.rollup(cur, ledger.rollup_horizon(120))
    assert (merged, examined) == (4, 7)  # partition 1's range is recent: not examined
    assert query(admin, """SELECT first_offset, last_offset FROM ingest_ledger WHERE topic = %s AND "partition" = 0
                           ORDER BY first_offset""", (EC,)) == [(0, 29), (30, 59), (70, 79)]
    assert proof(admin) == before
    with analytics(analytics_url) as conn, conn.cursor() as cur:  # again: nothing more to merge
        assert ledger.rollup(cur, ledger.rollup_horizon(120))[0] == 0


def test_after_a_trim_the_audit_accounts_for_every_offset_and_redeliveries_are_skipped(urls, writer, database_url):
    admin, _ingest, analytics_url = urls
    for lo in range(0, 40, 10):
        writer.write_raw(batch(range(lo, lo + 10)))
    writer.write_raw(batch(range(0, 5), topic=RO))
    day = HOUR - timedelta(days=2)
    recorded(admin, dict(zip((0, 10, 20), minutes(day, -60, 1, 2))))
    before = proof(admin)
    with analytics(analytics_url) as conn:
        done = ledger.maintain(conn, rollup_minutes=120, retention_days=1)
    assert (done.rolled_up, done.trimmed, done.complete) == (1, 2, True)  # 0..9 and 10..29 (rolled up)
    assert proof(admin) == before
    assert query(admin, """SELECT trimmed_first, trimmed_last, trimmed_stored + trimmed_duplicates
                                  + trimmed_dead_lettered FROM ingest_streams WHERE topic = %s""", (EC,)) == [(0, 29, 30)]
    assert query(admin, "SELECT count(*) FROM ingest_ledger_ranges r JOIN ingest_streams s ON s.id = r.stream "
                        "WHERE s.topic = %s", (EC,)) == [(1,)]
    audit = run_audit(admin)
    assert audit.ok and [(p["first_offset"], p["last_offset"], p["messages"], p["trimmed_through"])
                         for p in audit.partitions if p["topic"] == EC] == [(0, 39, 40, 29)]
    report = format_report(audit).splitlines()
    assert "trimmed to" in report[0] and report[-1] == "OK"
    assert [line.split()[4:7] for line in report if EC in line] == [["0..39", "29", "3"]]  # offsets, trimmed to, ranges
    # a re-delivery of trimmed offsets (and of the range kept) is skipped, the next batch continues
    again = writer.write_raw(batch(range(25, 45)))
    assert sorted(m.raw.offset for m in again.skipped) == list(range(25, 40))
    assert run_audit(admin).ok
    assert proof(admin)[0][0]["last_offset"] == 44


def test_a_gap_stops_the_trim_and_stays_found_and_an_overlap_of_the_trimmed_range_is_found(urls, writer):
    admin, _ingest, analytics_url = urls
    writer.write_raw(batch(range(0, 10)))
    writer.write_raw(batch(range(10, 20)))
    writer.write_raw(batch(range(30, 40)))  # 20..29: a gap
    writer.write_raw(batch(range(40, 50)))
    recorded(admin, {0: 3000, 10: 2990, 30: 2980, 40: 2970})
    with analytics(analytics_url) as conn, conn.cursor() as cur:
        assert ledger.trim(cur, ledger.retention_horizon(1)) == (2, 0)
    assert query(admin, "SELECT first_offset FROM ingest_ledger_ranges ORDER BY 1") == [(30,), (40,)]
    assert proof(admin)[1] == [("g", EC, "", 0, 20, 30)]
    assert not run_audit(admin).ok
    with analytics(analytics_url) as conn, conn.cursor() as cur:  # stuck at the gap: nothing more
        assert ledger.trim(cur, ledger.retention_horizon(1)) == (0, 0)
    # a range recorded now that starts inside the trimmed range: an overlap, for the audit and the
    # incremental check (whose neighbour is the trimmed range)
    query(admin, """INSERT INTO ingest_ledger (consumer_group, topic, topic_incarnation, "partition", first_offset,
                                               last_offset, messages, stored, duplicates, dead_lettered)
                    VALUES ('g', %s, '', 0, 15, 16, 2, 2, 0, 0)""", (EC,))
    with psycopg2.connect(admin) as conn, conn.cursor() as cur:
        assert ("g", EC, "", 0, 20, 15) in ledger_gaps(cur)
        assert ("g", EC, "", 0, 20, 15) in ledger_gaps_since(cur, NOW - timedelta(minutes=5))


def test_a_crash_inside_or_between_the_steps_leaves_the_audit_consistent(urls, writer):
    admin, _ingest, analytics_url = urls
    for lo in range(0, 50, 10):
        writer.write_raw(batch(range(lo, lo + 10)))
    recorded(admin, dict(zip((0, 10, 20, 30), minutes(HOUR - timedelta(days=2), 1, 2, 3, 4))))
    before = proof(admin)
    rows_before = query(admin, "SELECT * FROM ingest_ledger ORDER BY stream, first_offset")
    # a crash inside the roll-up and inside the trim: their transaction never commits
    for step in (lambda cur: ledger.rollup(cur, ledger.rollup_horizon(120)),
                 lambda cur: ledger.trim(cur, ledger.retention_horizon(1))):
        conn = analytics(analytics_url)
        with conn.cursor() as cur:
            step(cur)
        conn.close()  # the process dies: rolled back
        assert query(admin, "SELECT * FROM ingest_ledger ORDER BY stream, first_offset") == rows_before
    # the roll-up committed, the process dies before the trim
    with analytics(analytics_url) as conn, conn.cursor() as cur:
        assert ledger.rollup(cur, ledger.rollup_horizon(120))[0] == 3
    assert proof(admin) == before and run_audit(admin).ok
    # the trim afterwards, then a crash after the raw drop's second transaction (the ledger step never ran):
    # the next call trims by the dropped raw history
    with analytics(analytics_url) as conn:
        done = ledger.maintain(conn, rollup_minutes=120, retention_days=1)
    assert done.trimmed == 1 and proof(admin) == before and run_audit(admin).ok
    writer.write_raw(batch(range(50, 60)))
    recorded(admin, {40: 60, 50: 30})
    query(admin, """INSERT INTO raw_partition_drops (table_name, partition, range_start, range_end, rows)
                    VALUES ('events', 'events_old', %(s)s, %(e)s, 0), ('orders', 'orders_old', %(s)s, %(e)s, 0)""",
          {"s": NOW - timedelta(days=40), "e": NOW - timedelta(minutes=45)})
    before = proof(admin)
    with analytics(analytics_url) as conn:
        assert ledger.trim_dropped(conn) == 1  # 40..49, recorded before the dropped history's end
    assert proof(admin) == before and run_audit(admin).ok
    assert query(admin, "SELECT trimmed_first, trimmed_last FROM ingest_streams") == [(0, 49)]


def test_idle_streams_are_forgotten_after_twice_the_window(urls, writer):
    admin, _ingest, analytics_url = urls
    writer.write_raw(batch(range(0, 10)))
    w2 = BatchWriter(urls[1], group="replay-old")
    try:
        w2.write_raw(batch(range(0, 10)))
    finally:
        w2.close()
    query(admin, "UPDATE ingest_ledger_ranges SET recorded_at = now() - interval '3 days'")
    query(admin, "UPDATE ingest_ledger_ranges SET recorded_at = now() - interval '1 day 1 hour' WHERE stream = "
                 "(SELECT id FROM ingest_streams WHERE consumer_group = 'g')")
    with analytics(analytics_url) as conn, conn.cursor() as cur:
        assert ledger.trim(cur, ledger.retention_horizon(1)) == (2, 1)  # the replay group's, idle > 2 days
    assert query(admin, "SELECT consumer_group, trimmed_last FROM ingest_streams") == [("g", 9)]
    assert writer.write_raw(batch(range(5, 15))).topics[EC].skipped == 5


def test_the_migration_keeps_what_the_audit_proves(postgres, tmp_path):
    """sql/040-era ledger rows (two incarnations, two groups, a gap) are moved by
    sql/130: the same ranges, counts and discontinuities."""
    url = postgres.create_database("t_ledger_migration")
    before_130 = tmp_path / "sql"
    before_130.mkdir()
    for path in SQL_DIR.glob("*.sql"):
        if int(path.name[:3]) < 130:
            shutil.copy(path, before_130 / path.name)
    apply_migrations(url, before_130)
    rows = [("g", EC, "inc-1", 0, 0, 9, 10, 8, 1, 1), ("g", EC, "inc-1", 0, 10, 19, 10, 10, 0, 0),
            ("g", EC, "inc-1", 0, 25, 29, 5, 5, 0, 0), ("g", EC, "inc-2", 0, 0, 4, 5, 5, 0, 0),
            ("g", RO, "", 2, 0, 7, 8, 7, 0, 1), ("replay", EC, "inc-1", 0, 0, 9, 10, 0, 10, 0)]
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        for row in rows:
            cur.execute("""INSERT INTO ingest_ledger (consumer_group, topic, topic_incarnation, "partition",
                           first_offset, last_offset, messages, stored, duplicates, dead_lettered)
                           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""", row)
        cur.execute(LEDGER_GAPS_SQL)
        gaps = cur.fetchall()
        cur.execute(SUMS)
        sums = cur.fetchall()
    assert gaps == [("g", EC, "inc-1", 0, 20, 25)]
    apply_migrations(url)
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        assert ledger_gaps(cur) == gaps
        cur.execute(SUMS)
        assert cur.fetchall() == sums
        cur.execute("SELECT consumer_group, topic, topic_incarnation, \"partition\", first_offset, last_offset, "
                    "messages, stored, duplicates, dead_lettered FROM ingest_ledger ORDER BY 1, 2, 3, 4, 5")
        assert cur.fetchall() == sorted(rows)
        cur.execute("SELECT count(*) FROM ingest_ledger_ranges")
        assert cur.fetchone()[0] == len(rows)


SUMS = """SELECT consumer_group, topic, topic_incarnation, "partition", min(first_offset), max(last_offset),
                 sum(messages), sum(stored), sum(duplicates), sum(dead_lettered)
          FROM ingest_ledger GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"""


def test_the_op_in_store_retention_job_trims_with_the_soak_settings(urls, writer, monkeypatch):
    """LEDGER_ROLLUP_MINUTES / LEDGER_RETENTION_DAYS scaled down (the soak's path):
    ranges recorded 20 minutes ago are trimmed, the last minute's kept."""
    from orchestration.resources import PostgresResource
    from orchestration.jobs import store_retention_job
    from orchestration.retention import STORE_TRIMS, trim_ingest_ledger
    from salespulse.settings import get_settings

    admin = urls[0]
    assert trim_ingest_ledger in STORE_TRIMS
    for lo in range(0, 40, 10):
        writer.write_raw(batch(range(lo, lo + 10)))
    recorded(admin, {0: 22, 10: 21, 20: 20})
    before = proof(admin)
    monkeypatch.setenv("DATABASE_URL", admin)
    monkeypatch.setenv("LEDGER_ROLLUP_MINUTES", "5")
    monkeypatch.setenv("LEDGER_RETENTION_DAYS", "0.01")  # 14.4 minutes
    get_settings.cache_clear()
    try:
        result = store_retention_job.execute_in_process(
            op_selection=["trim_ingest_ledger"], resources={"postgres": PostgresResource(database_url=admin)})
    finally:
        get_settings.cache_clear()
    assert result.success
    meta = [e for e in result.all_node_events if e.is_successful_output][0].step_output_data.metadata
    # 0..29 rolled up (one range, or two if an hour began in between), then trimmed; 30..39 kept
    assert meta["ranges_trimmed"].value in (1, 2) and meta["ledger_ranges"].value == 1
    assert proof(admin) == before and run_audit(admin).ok
