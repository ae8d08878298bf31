"""Bounded stores against a real PostgreSQL: dead letters capped (full size and
hash kept, de-duplicated on the whole payload), their retention by age and by
total size, the pipeline records' retention keeping what rules still read, a
crash between two batches, and the Dagster op (as the analytics role)."""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, timedelta, timezone

import psycopg2
import pytest

from salespulse import bounded_stores
from salespulse.bounded_stores import OPS_TABLES, trim_dead_letters, trim_ops_history
from salespulse.contracts import ECOMMERCE_TOPIC
from salespulse.settings import ROLE_ANALYTICS, ROLE_INGEST, Settings
from services.consumer.messages import RawMessage
from services.consumer.store import BatchWriter
from tests.support.consumer import query

EC = ECOMMERCE_TOPIC.name
NOW = datetime.now(timezone.utc)


def analytics(url: str):
    return psycopg2.connect(Settings(database_url=url).role_url(ROLE_ANALYTICS))


def execute(url: str, sql: str, params=None) -> None:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
    conn.close()


def settings_for(url: str, **kw) -> Settings:
    return Settings(database_url=url, **kw)


# --- dead letters: the payload cap ---------------------------------------------------

def test_a_dead_letter_keeps_its_payload_up_to_the_cap_with_full_size_and_hash(database_url, monkeypatch):
    from salespulse.settings import get_settings

    monkeypatch.setenv("DEAD_LETTER_PAYLOAD_MAX_BYTES", "1000")
    get_settings.cache_clear()
    try:
        big = b"[" + b"7" * 5000  # not a valid message, 5,001 bytes
        other = big + b"x"  # the same first 1,000 bytes, another payload
        small = b"{}"
        url = Settings(database_url=database_url).role_url(ROLE_INGEST)
        w = BatchWriter(url)
        w.write_raw([RawMessage(EC, 0, 0, b"k", big), RawMessage(EC, 0, 1, b"k", small),
                     RawMessage(EC, 0, 2, b"k", None)])
        w.close()
        rows = query(database_url, 'SELECT "offset", octet_length(payload), payload_bytes, payload_sha256 '
                                   'FROM dead_letters ORDER BY "offset"')
        assert rows == [(0, 1000, 5001, hashlib.sha256(big).hexdigest()),
                        (1, 2, 2, hashlib.sha256(small).hexdigest()),
                        (2, None, None, hashlib.sha256(b"").hexdigest())]
        # another group (no ledger coverage) re-writes the same offsets: the
        # same payload is one row (dedup on the full hash), another payload
        # sharing the stored prefix is a new dead letter
        for group, value in (("replay-x", big), ("replay-y", other)):
            w = BatchWriter(url, group=group)
            w.write_raw([RawMessage(EC, 0, 0, b"k", value)])
            w.close()
        rows = query(database_url, 'SELECT payload_bytes, payload_sha256 FROM dead_letters WHERE "offset" = 0 '
                                   "ORDER BY payload_bytes")
        assert rows == [(5001, hashlib.sha256(big).hexdigest()), (5002, hashlib.sha256(other).hexdigest())]
    finally:
        get_settings.cache_clear()


def test_the_full_size_can_never_be_less_than_what_is_stored(database_url):
    with pytest.raises(psycopg2.errors.CheckViolation):
        execute(database_url, """INSERT INTO dead_letters (topic, "partition", "offset", payload, payload_bytes,
                                                           payload_sha256, error)
                                 VALUES ('t', 0, 0, '\\x010203', 2, repeat('0', 64), 'e')""")


# --- dead letters: retention ---------------------------------------------------------

def seed_dead_letters(url: str, ages: list[timedelta], size: int = 1000) -> None:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        for i, age in enumerate(ages):
            cur.execute("""INSERT INTO dead_letters (topic, "partition", "offset", payload, payload_bytes,
                                                     payload_sha256, error, received_at)
                           VALUES (%s, 0, %s, %s, %s, %s, 'bad', %s)""",
                        (EC, i, psycopg2.Binary(os.urandom(size)), size, f"{i:064d}", NOW - age))
    conn.close()


def test_dead_letters_older_than_the_retention_go_but_not_those_the_checks_read(database_url):
    # 0.01 days = 14.4 minutes: shorter than what ledger_reconciles (RECONCILE_MINUTES
    # + its batch span) and dead_letter_rate (the last hour) read
    settings = settings_for(database_url, dead_letter_retention_days=0.01)
    ages = [timedelta(days=40), timedelta(days=2), timedelta(hours=3), timedelta(minutes=30), timedelta(minutes=1)]
    seed_dead_letters(database_url, ages)
    with analytics(database_url) as conn:
        trim = trim_dead_letters(conn, settings, NOW)
    assert trim.deleted == 3 and not trim.more
    needed = bounded_stores.dead_letters_needed_since(settings, NOW)
    assert needed <= NOW - timedelta(minutes=75)  # RECONCILE_MINUTES (60) + 15
    assert [r[0] for r in query(database_url, 'SELECT "offset" FROM dead_letters ORDER BY 1')] == [3, 4]
    # with the default 30 days only the 40-day-old one would have gone
    seed_dead_letters(database_url, [timedelta(days=40), timedelta(days=2)])
    execute(database_url, "DELETE FROM dead_letters WHERE \"offset\" >= 2 AND received_at > now() - interval '1 day'")
    with analytics(database_url) as conn:
        assert trim_dead_letters(conn, settings_for(database_url), NOW).deleted == 1


def test_dead_letters_beyond_the_total_size_go_oldest_first(database_url):
    # 12 rows of 100 KB, 0.5 MB allowed: the oldest go until the rest fits;
    # the 2 newest are still read by the checks: their payload is emptied instead
    ages = [timedelta(days=10 - i) for i in range(10)] + [timedelta(minutes=20), timedelta(minutes=5)]
    seed_dead_letters(database_url, ages, size=100_000)
    settings = settings_for(database_url, dead_letter_max_mb=0.5)
    with analytics(database_url) as conn:
        trim = trim_dead_letters(conn, settings, NOW, batch_rows=3)
        with conn.cursor() as cur:
            size, rows = bounded_stores.dead_letter_bytes(cur)
    assert size <= 0.5 * 1024 * 1024
    left = query(database_url, 'SELECT "offset", octet_length(payload), payload_bytes FROM dead_letters ORDER BY 1')
    offsets = [r[0] for r in left]
    assert offsets == list(range(12 - len(offsets), 12))  # the oldest were deleted, newest kept
    assert len(offsets) == 5 and trim.deleted == 7 and trim.emptied == 0
    assert all(r[1] == 100_000 for r in left)

    # a bound the needed rows alone exceed: every older row goes, the needed
    # rows stay (counted by the checks) without their payload, with their size
    settings = settings_for(database_url, dead_letter_max_mb=0.1)
    with analytics(database_url) as conn:
        trim = trim_dead_letters(conn, settings, NOW, batch_rows=2)
    left = query(database_url, 'SELECT "offset", octet_length(payload), payload_bytes FROM dead_letters ORDER BY 1')
    assert [r[0] for r in left] == [10, 11]
    assert left[0] == (10, None, 100_000) and left[1][2] == 100_000
    assert trim.deleted == 3 and trim.emptied >= 1


def test_a_crash_between_two_batches_leaves_a_consistent_state(database_url, monkeypatch):
    """Each batch is its own transaction deleting whole rows that match the rule
    on their own: a trim killed after its first batch leaves fewer old rows,
    nothing half done, and the next run finishes the job."""
    seed_dead_letters(database_url, [timedelta(days=40 + i) for i in range(7)] + [timedelta(minutes=1)])
    execute(database_url, """INSERT INTO pipeline_runs (run_id, job_name, status, recorded_at)
                             SELECT 'r' || i, 'j', 'SUCCESS', now() - make_interval(days => 40 + i)
                             FROM generate_series(1, 7) AS i""")
    settings = settings_for(database_url)
    real = bounded_stores._batches
    calls = {"n": 0}

    class Killed(Exception):
        pass

    def one_batch_then_die(conn, sql, params, batch_rows, max_batches):
        calls["n"] += 1
        with conn.cursor() as cur:
            cur.execute(sql, {**params, "n": batch_rows})
        conn.commit()
        raise Killed()

    monkeypatch.setattr(bounded_stores, "_batches", one_batch_then_die)
    with analytics(database_url) as conn, pytest.raises(Killed):
        trim_dead_letters(conn, settings, NOW, batch_rows=3)
    with analytics(database_url) as conn, pytest.raises(Killed):
        bounded_stores.trim_ops_table(conn, settings, next(t for t in OPS_TABLES if t.table == "pipeline_runs"),
                                      NOW, batch_rows=3)
    assert query(database_url, "SELECT count(*) FROM dead_letters")[0][0] == 5  # 3 of 7 old ones gone
    assert query(database_url, "SELECT count(*) FROM pipeline_runs")[0][0] == 4
    monkeypatch.setattr(bounded_stores, "_batches", real)
    with analytics(database_url) as conn:
        assert trim_dead_letters(conn, settings, NOW, batch_rows=3).deleted == 4
        assert {t.table: t.deleted for t in trim_ops_history(conn, settings, NOW, batch_rows=3)}["pipeline_runs"] == 4
    assert query(database_url, "SELECT count(*) FROM dead_letters")[0][0] == 1
    assert query(database_url, "SELECT count(*) FROM pipeline_runs")[0][0] == 0


# --- pipeline records ----------------------------------------------------------------

def seed_ops(url: str) -> None:
    """Each record: one row 40 days old, one 10 minutes old; plus what rules read."""
    old, new = NOW - timedelta(days=40), NOW - timedelta(minutes=10)
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        for at in (old, new):
            cur.execute("INSERT INTO report_refreshes (domain, window_start, window_end, refreshed_at) "
                        "VALUES ('ecommerce', %s, %s, %s)", (at, at + timedelta(hours=1), at))
            cur.execute("INSERT INTO report_restatements (domain, window_start, rows_before, rows_after, restated_at) "
                        "VALUES ('ecommerce', %s, 1, 2, %s)", (at, at))
            cur.execute("INSERT INTO pipeline_check_results (check_name, asset, passed, severity, description, "
                        "evaluated_at) VALUES ('c', 'a', true, 'ERROR', 'ok', %s)", (at,))
            cur.execute("INSERT INTO pipeline_alert_notifications (check_name, asset, window_key, status, payload, "
                        "first_at) VALUES ('c', 'a', %s, 'sent', '{}', %s)", (at.isoformat(), at))
            cur.execute("INSERT INTO pipeline_observations (observed_at, topic, high_watermark, committed, lag) "
                        "VALUES (%s, 'ecommerce.events', 1, 1, 0)", (at,))
            cur.execute("INSERT INTO pipeline_runs (run_id, job_name, status, recorded_at) "
                        "VALUES (%s, 'j', 'SUCCESS', %s)", (at.isoformat(), at))
        # what rules read, however old: the only outcome of a check that stopped
        # running, the only observation of a topic, the newest drop of each table
        cur.execute("INSERT INTO pipeline_check_results (check_name, asset, passed, severity, description, "
                    "evaluated_at) VALUES ('gone', 'a', false, 'WARN', 'last', %s)", (old,))
        cur.execute("INSERT INTO pipeline_observations (observed_at, topic, high_watermark, committed, lag) "
                    "VALUES (%s, 'restaurant.orders', 1, 1, 0)", (old,))
        for months in (3, 2):
            start = NOW - timedelta(days=31 * months)
            cur.execute("INSERT INTO raw_partition_drops (table_name, partition, range_start, range_end, rows, "
                        "dropped_at) VALUES ('events', %s, %s, %s, 1, %s)",
                        (f"events_p{months}", start, start + timedelta(days=31), old - timedelta(days=months)))
    conn.close()


def test_ops_history_is_trimmed_by_age_keeping_what_rules_read(database_url):
    seed_ops(database_url)
    with analytics(database_url) as conn:  # the analytics role (Dagster) may delete exactly these
        trims = {t.table: t for t in trim_ops_history(conn, settings_for(database_url), NOW)}
    assert {t: trims[t].deleted for t in trims} == {
        "report_refreshes": 1, "report_restatements": 1, "pipeline_check_results": 1,
        "pipeline_alert_notifications": 1, "pipeline_observations": 1, "pipeline_runs": 1, "raw_partition_drops": 1}
    for spec in OPS_TABLES:
        oldest = query(database_url, f"SELECT min({spec.time_column}) FROM {spec.table}")[0][0]
        kept_old = {"pipeline_check_results", "pipeline_observations", "raw_partition_drops"}
        assert (oldest < NOW - timedelta(days=30)) == (spec.table in kept_old), spec.table
    assert query(database_url, "SELECT check_name FROM pipeline_check_results ORDER BY 1") == [("c",), ("gone",)]
    assert query(database_url, "SELECT topic FROM pipeline_observations ORDER BY 1") == [
        ("ecommerce.events",), ("restaurant.orders",)]
    assert query(database_url, "SELECT partition FROM raw_partition_drops") == [("events_p2",)]
    # the floor of dropped history is unchanged
    assert query(database_url, "SELECT salespulse_raw_floor('events')")[0][0] > NOW - timedelta(days=63)


def test_a_short_retention_never_forgets_alert_claims_a_check_may_send_again(database_url):
    seed_ops(database_url)
    execute(database_url, "INSERT INTO pipeline_alert_notifications (check_name, asset, window_key, status, "
                          "payload, first_at) VALUES ('c', 'a', 'hour-ago', 'sent', '{}', now() - interval '50 minutes')")
    settings = settings_for(database_url, ops_history_retention_days=0.01)  # 14.4 minutes
    with analytics(database_url) as conn:
        trims = {t.table: t for t in trim_ops_history(conn, settings, NOW)}
    assert query(database_url, "SELECT window_key FROM pipeline_alert_notifications ORDER BY first_at") == [
        ("hour-ago",), ((NOW - timedelta(minutes=10)).isoformat(),)]
    assert trims["pipeline_alert_notifications"].deleted == 1
    assert trims["pipeline_runs"].deleted == 1  # the 10-minute-old rows stay (14.4 minutes)
    assert query(database_url, "SELECT count(*) FROM pipeline_runs")[0][0] == 1


def test_the_retention_op_runs_as_the_analytics_role(settings, database_url):
    from orchestration.definitions import defs

    seed_ops(database_url)
    seed_dead_letters(database_url, [timedelta(days=40), timedelta(minutes=1)])
    result = defs.get_job_def("store_retention_job").execute_in_process()
    assert result.success
    outputs = [e for e in result.all_node_events if e.is_successful_output]
    meta = outputs[0].step_output_data.metadata
    assert meta["deleted_dead_letters"].value == 1
    assert meta["deleted_pipeline_runs"].value == 1
    assert "raw_partition_drops" in meta["deleted"].value


def test_status_shows_each_store_with_its_rows_and_bound(settings, database_url, tmp_path, capsys):
    from salespulse.status import print_stores, store_sizes

    seed_dead_letters(database_url, [timedelta(minutes=1), timedelta(minutes=2)], size=3000)
    seed_ops(database_url)
    local = settings.model_copy(update={"dagster_home": str(tmp_path), "dead_letter_max_mb": 64.0})
    with psycopg2.connect(database_url) as conn:
        sizes = {s.name: s for s in store_sizes(conn, local)}
    dead = sizes["dead letters"]
    assert dead.rows == 2 and dead.bytes > 6000 and "DEAD_LETTER_MAX_MB=64" in dead.bound
    assert "DEAD_LETTER_RETENTION_DAYS=30" in dead.bound
    records = sizes["pipeline records"]
    assert records.rows == query(database_url, "SELECT " + " + ".join(
        f"(SELECT count(*) FROM {t.table})" for t in OPS_TABLES))[0][0] and records.rows >= 14
    assert "OPS_HISTORY_RETENTION_DAYS=30" in records.bound
    print_stores(local)
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.strip().startswith("dead letters"))
    assert " 2 rows " in line and "DEAD_LETTER_PAYLOAD_MAX_BYTES=65536" in line
    assert "pipeline records" in out and "dagster compute logs" in out


def test_the_dead_letter_tool_refuses_a_truncated_payload_with_a_clear_error(settings, database_url, tmp_path,
                                                                              capsys, monkeypatch):
    from salespulse.cli import main

    monkeypatch.setenv("DEAD_LETTER_PAYLOAD_MAX_BYTES", "100")
    from salespulse.settings import get_settings

    get_settings.cache_clear()
    big, small = b"[" + b"1" * 999, b"[1"
    w = BatchWriter(Settings(database_url=database_url).role_url(ROLE_INGEST))
    w.write_raw([RawMessage(EC, 3, 7, b"k", big), RawMessage(EC, 3, 8, b"k", small)])
    w.close()
    (big_id,), (small_id,) = query(database_url, 'SELECT id FROM dead_letters ORDER BY "offset"')

    out = tmp_path / "p.bin"
    assert main(["dead-letter", str(big_id), "--payload", str(out)]) == 2
    err = capsys.readouterr().err
    assert "keeps 100 of its 1,000 payload bytes" in err and hashlib.sha256(big).hexdigest() in err
    assert f"{EC}[3] offset 7" in err and not out.exists()
    assert main(["dead-letter", str(big_id), "--payload", str(out), "--truncated"]) == 0
    assert out.read_bytes() == big[:100]
    assert main(["dead-letter", str(small_id), "--payload", str(out)]) == 0
    assert out.read_bytes() == small and "payload 2 bytes" in capsys.readouterr().out
    # emptied by the size bound: refused the same way
    execute(database_url, "UPDATE dead_letters SET payload = NULL WHERE id = %s", (small_id,))
    assert main(["dead-letter", str(small_id), "--payload", str(out)]) == 2
    assert "keeps 0 of its 2 payload bytes" in capsys.readouterr().err
    assert main(["dead-letter", "999999"]) == 2
    assert "no dead letter 999999" in capsys.readouterr().err
