"""Month-partitioned raw tables against a real PostgreSQL: the migration of
existing data, the key tables that keep de-duplication exact across
partitions, the DEFAULT partition and its rows moved into new months, and
retention (salespulse/partitions.py, orchestration/retention.py, sql/100)."""

from __future__ import annotations

import shutil
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg2
import pytest
from dagster import materialize

from orchestration.assets.reports import ecommerce_reports
from orchestration.reports import REPORT_DOMAINS
from orchestration.resources import PostgresResource, SparkResource
from orchestration.jobs import raw_partitions_job
from salespulse.contracts import ECOMMERCE_TOPIC, RESTAURANT_TOPIC, TimestampWindow
from salespulse.daily_aggregates import rebuild_views
from salespulse.db import SQL_DIR, apply_migrations, migrate
from salespulse.partitions import check_retained, drop_expired, ensure_partitions, summary
from salespulse.settings import ROLE_ANALYTICS, ROLE_INGEST, Settings, get_settings
from services.consumer.store import BatchWriter
from tests.support.consumer import ecommerce_event, query, restaurant_order
from tests.test_consumer_writer import raw

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from seed_sql import ECOMMERCE_SEED_SQL, RESTAURANT_SEED_SQL  # noqa: E402

EC, RO = ECOMMERCE_TOPIC.name, RESTAURANT_TOPIC.name
NOW = datetime.now(timezone.utc)

FINGERPRINT = """
SELECT (SELECT count(*) FROM events), (SELECT count(DISTINCT event_id) FROM events),
       (SELECT md5(string_agg(event_id::text || event_type || "timestamp" || user_id, ',' ORDER BY event_id)) FROM events),
       (SELECT count(*) FROM transactions), (SELECT sum(total_amount) FROM transactions),
       (SELECT count(*) FROM orders), (SELECT sum(total_amount) FROM orders),
       (SELECT count(*) FROM order_items), (SELECT sum(line_total) FROM order_items)
"""


def partitions_of(url: str, table: str) -> dict[str, int]:
    names = [r[0] for r in query(url, "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                                      "WHERE i.inhparent = %s::regclass ORDER BY 1", (table,))]
    return {n: query(url, f"SELECT count(*) FROM {n}")[0][0] for n in names}


def month(ts: datetime) -> str:
    return f"{ts:%Y_%m}"


@pytest.fixture
def writer(database_url):
    w = BatchWriter(Settings(database_url=database_url).role_url(ROLE_INGEST))
    yield w
    w.close()


def analytics(database_url):
    conn = psycopg2.connect(Settings(database_url=database_url).role_url(ROLE_ANALYTICS))
    conn.autocommit = False
    return conn


def test_migration_converts_existing_history_into_month_partitions(postgres, tmp_path):
    url = postgres.create_database("t_partition_migration")
    for f in SQL_DIR.glob("0*.sql"):  # the schema as it was before sql/100
        shutil.copy(f, tmp_path)
    apply_migrations(url, tmp_path)
    start = datetime(2026, 8, 20, tzinfo=timezone.utc)
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:  # 20,000 events and 4,000 orders over three months
        cur.execute(ECOMMERCE_SEED_SQL, {"base": start, "n": 20_000, "step": 400_000_000})
        cur.execute(RESTAURANT_SEED_SQL.split(";")[0], {"base": start, "orders": 4_000, "ostep": 2_000_000_000})
        cur.execute("INSERT INTO order_items (order_id, line_number, item_id, name, category, quantity, unit_price, "
                    "line_total) SELECT order_id, 0, 'm-1', 'Item 1', 'cat-1', 2, 12.50, 25.00 FROM orders")
        cur.execute(FINGERPRINT)
        before = cur.fetchone()
        cur.execute("SELECT max(id) FROM events")
        (last_id,) = cur.fetchone()
    conn.close()

    assert "100_partitioned_raw_tables" in migrate(Settings(database_url=url))
    assert query(url, FINGERPRINT)[0] == before
    events = partitions_of(url, "events")
    assert events["events_default"] == 0
    assert {"events_p2026_08", "events_p2026_09", "events_p2026_10", "events_p2026_11"} <= set(events)
    assert sum(events.values()) == 20_000 and events["events_p2026_09"] > 0
    items = partitions_of(url, "order_items")
    assert sum(items.values()) == 4_000 and items["order_items_default"] == 0
    assert query(url, "SELECT count(*) FROM order_items i JOIN orders o ON o.order_id = i.order_id "
                      "AND o.\"timestamp\" = i.\"timestamp\"")[0][0] == 4_000
    assert query(url, "SELECT count(*) FROM event_keys")[0][0] == 20_000
    assert query(url, "SELECT count(*) FROM order_keys")[0][0] == 4_000

    # the consumer goes on after the migration: ids continue, a migrated event re-sent is a duplicate
    old = query(url, "SELECT event_id::text, event_type, \"timestamp\", user_id, session_id FROM events "
                     "WHERE event_type = 'page_view' ORDER BY id LIMIT 1")[0]
    w = BatchWriter(Settings(database_url=url).role_url(ROLE_INGEST))
    try:
        resend = ecommerce_event(0, event_type="page_view", event_id=old[0], timestamp=old[2].isoformat(),
                                 user_id=old[3], session_id=old[4])
        new = ecommerce_event(1, event_type="page_view")
        result = w.write_raw([raw(EC, 0, resend), raw(EC, 1, new)])
    finally:
        w.close()
    assert result.topics[EC].stored == 1 and result.topics[EC].duplicates == 1
    assert query(url, "SELECT id > %s FROM events WHERE event_id = %s", (last_id, new["event_id"]))[0][0]


def test_a_resend_with_another_month_is_a_conflict_not_a_second_row(writer, database_url):
    first = ecommerce_event(1, event_type="page_view", timestamp="2026-10-15T12:00:00+00:00")
    other_month = {**first, "timestamp": "2026-11-20T12:00:00+00:00"}
    result = writer.write_raw([raw(EC, 0, first)])
    assert result.topics[EC].stored == 1
    result = writer.write_raw([raw(EC, 1, other_month), raw(EC, 2, first)])
    assert result.topics[EC].dead_letters == 1 and result.topics[EC].duplicates == 1
    assert query(database_url, "SELECT count(*), min(\"timestamp\") FROM events WHERE event_id = %s",
                 (first["event_id"],)) == [(1, datetime(2026, 10, 15, 12, tzinfo=timezone.utc))]
    (error,) = query(database_url, 'SELECT error FROM dead_letters WHERE "offset" = 1')[0]
    assert error.startswith("conflicting re-send")


def test_rows_of_a_month_without_partition_wait_in_default_then_move(writer, database_url):
    event = ecommerce_event(3, event_type="purchase", timestamp="2003-05-04T10:00:00+00:00")
    order = restaurant_order(2, n_items=3, timestamp="2003-05-04T10:00:01+00:00")
    writer.write_raw([raw(EC, 0, event), raw(RO, 0, order)])
    for table in ("events", "transactions", "orders", "order_items"):
        assert partitions_of(database_url, table)[f"{table}_default"] >= 1, table
    conn = analytics(database_url)
    with conn, conn.cursor() as cur:
        assert "6 rows waiting in DEFAULT" in summary(cur, 0)  # an event, its transaction, an order, 3 items
    conn.close()

    conn = analytics(database_url)
    with conn, conn.cursor() as cur:
        created = ensure_partitions(cur)
    conn.close()
    assert {"events_p2003_05", "transactions_p2003_05", "orders_p2003_05", "order_items_p2003_05"} <= set(created)
    conn = analytics(database_url)
    with conn, conn.cursor() as cur:
        line = summary(cur, 0)
    conn.close()
    assert line.startswith("5 months (2003-05..")  # 2003-05 and last month to two ahead and "0 rows waiting in DEFAULT; retention off" in line
    for table, n in (("events", 1), ("transactions", 1), ("orders", 1), ("order_items", 3)):
        parts = partitions_of(database_url, table)
        assert parts[f"{table}_default"] == 0 and parts[f"{table}_p2003_05"] == n, table
    # the moved rows are still the stored ones: a re-send is a duplicate
    result = writer.write_raw([raw(EC, 1, event), raw(RO, 1, order)])
    assert result.topics[EC].duplicates == 1 and result.topics[RO].duplicates == 1


def test_the_window_refuses_events_older_than_the_retention():
    window = TimestampWindow(max_age_days=30)
    assert window.violation(NOW - timedelta(days=29)) is None
    reason = window.violation(NOW - timedelta(days=31))
    assert reason and "older than the 30 days of raw history kept" in reason
    assert TimestampWindow().violation(NOW - timedelta(days=3000)) is None


def seed_months(writer) -> dict[str, datetime]:
    """Events and orders in two expired months and one kept month."""
    times = {"sep": datetime(NOW.year, NOW.month, 1, tzinfo=timezone.utc) - timedelta(days=80),
             "oct": datetime(NOW.year, NOW.month, 1, tzinfo=timezone.utc) - timedelta(days=50),
             "kept": NOW - timedelta(days=3)}
    batch = []
    for n, (name, ts) in enumerate(times.items()):
        for i in range(5):
            at = (ts + timedelta(minutes=i)).isoformat()
            batch.append(raw(EC, n * 10 + i, ecommerce_event(i, event_type=["page_view", "purchase"][i % 2], timestamp=at)))
            batch.append(raw(RO, n * 10 + i, restaurant_order(i, timestamp=at)))
    assert writer.write_raw(batch).topics[EC].stored == 15
    return times


REPORT_ROWS = """
INSERT INTO report_ecommerce_overview_minute
SELECT DISTINCT date_trunc('minute', "timestamp"), 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 FROM events
ON CONFLICT DO NOTHING;
INSERT INTO report_restaurant_overview_minute
SELECT DISTINCT date_trunc('minute', "timestamp"), 1, 0, 0, 0 FROM orders ON CONFLICT DO NOTHING;
"""


def test_retention_drops_expired_months_only_once_reported_and_aggregated(writer, database_url):
    times = seed_months(writer)
    conn = analytics(database_url)
    with conn, conn.cursor() as cur:
        ensure_partitions(cur)
    sep = f"events_p{month(times['sep'])}"
    assert sep in partitions_of(database_url, "events")

    with conn, conn.cursor() as cur:  # no reports yet: nothing may go
        drops, why = drop_expired(cur, 30)
    assert drops == [] and "do not match their report_ecommerce_overview_minute row yet" in why
    query(database_url, REPORT_ROWS)
    with conn, conn.cursor() as cur:  # reports agree, but the all-time aggregates never saw the rows
        drops, why = drop_expired(cur, 30)
    assert drops == [] and "per-day aggregate" in why
    admin = psycopg2.connect(database_url)
    rebuild_views(admin)
    admin.close()
    late = times["sep"] + timedelta(minutes=2)  # a late row of a reported minute, not yet restated
    query(database_url, "UPDATE report_restaurant_overview_minute SET orders = 0 WHERE window_start = %s", (late,))
    with conn, conn.cursor() as cur:
        drops, why = drop_expired(cur, 30)
    assert drops == [] and f"the orders of {late:%Y-%m-%d %H:%M} do not match" in why
    query(database_url, "UPDATE report_restaurant_overview_minute SET orders = 1 WHERE window_start = %s", (late,))
    all_time = query(database_url, "SELECT day, events, unique_users FROM daily_metrics ORDER BY 1")
    reports = query(database_url, "SELECT count(*), sum(events) FROM report_ecommerce_overview_minute")

    with conn, conn.cursor() as cur:
        drops, why = drop_expired(cur, 30, run_id="run-1")
    assert drops, why
    dropped = {(d.table, d.partition) for d in drops}
    for table in ("events", "transactions", "orders", "order_items"):
        assert (table, f"{table}_p{month(times['sep'])}") in dropped
        assert (table, f"{table}_p{month(times['oct'])}") in dropped
        assert f"{table}_p{month(times['kept'])}" in partitions_of(database_url, table)
    assert query(database_url, "SELECT sum(rows) FROM raw_partition_drops WHERE table_name = 'events' "
                               "AND run_id = 'run-1'") == [(10,)]
    assert query(database_url, "SELECT count(*) FROM events") == [(5,)]
    assert query(database_url, "SELECT count(*) FROM event_keys") == [(5,)]
    assert query(database_url, "SELECT count(*) FROM order_keys") == [(5,)]
    # a late or replayed event of a dropped month is refused by the database itself
    # (this writer has no event-time window), and no partition comes back for it
    result = writer.write_raw([raw(EC, 99, ecommerce_event(7, timestamp=(times["sep"] + timedelta(hours=1)).isoformat()))])
    assert result.topics[EC].dead_letters == 1
    assert 'violates check constraint "raw_history_dropped"' in query(
        database_url, 'SELECT error FROM dead_letters WHERE "offset" = 99')[0][0]
    with conn, conn.cursor() as cur:
        assert not [p for p in ensure_partitions(cur) if month(times["sep"]) in p or month(times["oct"]) in p]
        # whoever calls the drop, the database keeps what is not covered or too recent: the
        # current month's rows stay (only last month's empty partitions may go)
        cur.execute("SELECT DISTINCT range_start FROM salespulse_drop_raw_partitions('infinity')")
        assert all(start < times["kept"] - timedelta(days=2) for (start,) in cur.fetchall())
    conn.close()
    assert query(database_url, "SELECT count(*) FROM events") == [(5,)]
    # reports and the all-time figures are untouched, also after the aggregates are rebuilt from raw rows
    assert query(database_url, "SELECT count(*), sum(events) FROM report_ecommerce_overview_minute") == reports
    admin = psycopg2.connect(database_url)
    rebuild_views(admin)
    admin.close()
    assert query(database_url, "SELECT day, events, unique_users FROM daily_metrics ORDER BY 1") == all_time


def test_partition_bounds_are_utc_months_whatever_the_session_says(database_url):
    conn = analytics(database_url)
    with conn, conn.cursor() as cur:
        cur.execute("SET TimeZone = 'Asia/Kolkata'; SET DateStyle = 'SQL, DMY'")
        assert "events_p2027_05" in ensure_partitions(cur, datetime(2027, 6, 15, tzinfo=timezone.utc))
        cur.execute("SET TimeZone = 'UTC'; SET DateStyle = 'ISO'")  # for psycopg2 to read the answer
        cur.execute("SELECT range_start, range_end FROM salespulse_raw_month_partitions() "
                    "WHERE partition = 'events_p2027_05'")
        assert cur.fetchone() == (datetime(2027, 5, 1, tzinfo=timezone.utc), datetime(2027, 6, 1, tzinfo=timezone.utc))
    conn.close()


def test_retention_job_and_a_backfill_of_dropped_history(writer, database_url, monkeypatch):
    times = seed_months(writer)
    query(database_url, REPORT_ROWS)
    admin = psycopg2.connect(database_url)
    rebuild_views(admin)
    admin.close()
    monkeypatch.setenv("RAW_RETENTION_DAYS", "30")
    get_settings.cache_clear()
    postgres = PostgresResource(database_url=database_url)

    result = raw_partitions_job.execute_in_process(resources={"postgres": postgres})
    assert result.success
    meta = result.output_for_node("maintain_raw_partitions")
    assert meta == 8  # two months x events, transactions, orders, order_items
    assert query(database_url, "SELECT count(DISTINCT run_id) FROM raw_partition_drops") == [(1,)]
    conn = analytics(database_url)
    with conn, conn.cursor() as cur:
        after_oct = (times["oct"].replace(day=1) + timedelta(days=32)).replace(day=1)
        assert f"retention 30 days; dropped before {after_oct:%Y-%m-%d}" in summary(cur, 30)
    conn.close()

    # a backfill of a dropped hour fails with the reason, before any Spark work
    hour = times["sep"].strftime("%Y-%m-%d-%H:00")
    run = materialize([ecommerce_reports], partition_key=hour, raise_on_error=False,
                      resources={"postgres": postgres, "spark": SparkResource(remote="sc://127.0.0.1:9")})
    assert not run.success
    failure = next(e for e in run.all_events if e.event_type_value == "STEP_FAILURE")
    text = failure.step_failure_data.user_failure_data.description
    assert "were dropped by retention (RAW_RETENTION_DAYS=30" in text and "backfill windows from" in text
    # a kept hour is not refused
    conn = analytics(database_url)
    with conn, conn.cursor() as cur:
        check_retained(cur, REPORT_DOMAINS["ecommerce"].sources, times["kept"], 30)
    conn.close()
    monkeypatch.delenv("RAW_RETENTION_DAYS")
    get_settings.cache_clear()


def test_partition_maintenance_gives_up_rather_than_queue_the_pipeline(writer, database_url):
    """A long query holds a raw table: creating a partition waits at most
    LOCK_TIMEOUT_MS (10 s; 0.2 s here), then fails (the hourly job tries again)
    instead of making every insert and read queue behind it."""
    writer.write_raw([raw(EC, 0, ecommerce_event(1, timestamp="2004-02-03T04:05:06+00:00"))])
    reader = psycopg2.connect(database_url)
    with reader.cursor() as cur:
        cur.execute("SELECT count(*) FROM events")  # its transaction stays open: ACCESS SHARE held
    conn = analytics(database_url)
    try:
        with pytest.raises(psycopg2.errors.LockNotAvailable, match="lock timeout"):
            with conn, conn.cursor() as cur:
                ensure_partitions(cur, lock_timeout_ms=200)
        reader.rollback()
        with conn, conn.cursor() as cur:
            assert "events_p2004_02" in ensure_partitions(cur)
            cur.execute("SHOW lock_timeout")  # what the hourly job waits at most, for this transaction only
            assert cur.fetchone()[0] == "10s"
        with conn, conn.cursor() as cur:
            cur.execute("SHOW lock_timeout")
            assert cur.fetchone()[0] == "0"
    finally:
        reader.close()
        conn.close()
    assert partitions_of(database_url, "events")["events_p2004_02"] == 1
