"""Raw retention (salespulse/partitions.py ``drop_expired``) interrupted between its two
transactions, against a real PostgreSQL: the first drops the expired month partitions
and records them, the second deletes the dropped history's keys and the dead letters
received before it, then the ingest ledger's ranges recorded before it are trimmed.

The interruption is real: the second transaction waits for a lock this test holds, and
its backend is terminated (``pg_terminate_backend``), as a killed job or a restarted
server would leave it. The next run, which has no partition left to drop, finishes the
job: the keys and dead letters of the dropped months go, the ledger's ranges move into
its trimmed totals, and nothing is dropped, recorded or counted twice."""

from __future__ import annotations

import os
import threading
import time
from datetime import timedelta

import psycopg2

from salespulse.daily_aggregates import rebuild_views
from salespulse.partitions import drop_expired, ensure_partitions
from tests.support.consumer import query
from tests.test_partitions import EC, NOW, REPORT_ROWS, analytics, month, partitions_of, seed_months, writer  # noqa: F401

TRIM = "salespulse_trim_dropped_history"


def seed_dead_letters(url: str, received: list) -> None:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        for i, at in enumerate(received):
            cur.execute("""INSERT INTO dead_letters (topic, "partition", "offset", payload, payload_bytes,
                                                     payload_sha256, error, received_at)
                           VALUES (%s, 5, %s, %s, 16, %s, 'bad', %s)""",
                        (EC, 1000 + i, psycopg2.Binary(os.urandom(16)), f"{i:064d}", at))
    conn.close()


def ledger(url: str) -> tuple:
    """(messages, stored, duplicates, dead-lettered) over ranges and trimmed totals."""
    return query(url, "SELECT sum(messages), sum(stored), sum(duplicates), sum(dead_lettered) FROM ingest_ledger")[0]


def state(url: str) -> dict:
    return {
        "events": query(url, "SELECT count(*) FROM events")[0][0],
        "orders": query(url, "SELECT count(*) FROM orders")[0][0],
        "event_keys": query(url, "SELECT count(*) FROM event_keys")[0][0],
        "order_keys": query(url, "SELECT count(*) FROM order_keys")[0][0],
        "dead_letters": query(url, "SELECT count(*) FROM dead_letters")[0][0],
        "drops": query(url, "SELECT table_name, partition, rows FROM raw_partition_drops ORDER BY 1, 2"),
        "ledger": ledger(url),
        "ranges_before_floor": query(url, "SELECT count(*) FROM ingest_ledger_ranges "
                                          "WHERE recorded_at < salespulse_raw_floor('events')")[0][0],
    }


def wait_for_backend_waiting_in(url: str, text: str, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = query(url, "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s",
                      (f"%{text}%",))
        if found:
            return found[0][0]
        time.sleep(0.05)
    raise AssertionError(f"no backend waited in {text}")


def test_a_retention_run_killed_between_its_two_transactions_is_finished_by_the_next(writer, database_url):
    times = seed_months(writer)  # 5 events and 5 orders in each of two expired months and one kept month
    # the ledger's ranges of those messages, recorded in the last expired month: before
    # the drop's floor, so trimmed after the drop (but not so old that their streams are
    # forgotten: salespulse_trim_ingest_ledger in sql/130)
    query(database_url, "UPDATE ingest_ledger_ranges SET recorded_at = %s", (times["oct"],))
    seed_dead_letters(database_url, [times["sep"], times["oct"], NOW - timedelta(hours=2)])
    conn = analytics(database_url)
    with conn, conn.cursor() as cur:
        ensure_partitions(cur)
    conn.close()
    query(database_url, REPORT_ROWS)
    admin = psycopg2.connect(database_url)
    rebuild_views(admin)  # the reports and all-time aggregates have seen every row: the months may go
    admin.close()
    before = state(database_url)
    assert (before["events"], before["event_keys"], before["dead_letters"]) == (15, 15, 3)

    # the second transaction waits for this lock; its backend is then terminated
    blocker = psycopg2.connect(database_url)
    blocker.cursor().execute("LOCK TABLE event_keys IN SHARE MODE")
    failure: list[BaseException] = []

    def run_retention():
        conn = analytics(database_url)
        try:
            with conn.cursor() as cur:
                drop_expired(cur, 30, run_id="killed")
        except BaseException as exc:  # noqa: BLE001
            failure.append(exc)
        finally:
            conn.close()

    thread = threading.Thread(target=run_retention)
    thread.start()
    pid = wait_for_backend_waiting_in(database_url, TRIM)
    assert query(database_url, "SELECT pg_terminate_backend(%s)", (pid,)) == [(True,)]
    thread.join(60)
    blocker.rollback()
    blocker.close()
    assert not thread.is_alive()
    assert len(failure) == 1 and isinstance(failure[0], psycopg2.OperationalError), failure

    crashed = state(database_url)
    # the first transaction stands: the expired months are dropped and recorded ...
    assert crashed["events"] == crashed["orders"] == 5
    dropped = {p for _, p, _ in crashed["drops"]}
    for table in ("events", "transactions", "orders", "order_items"):
        assert {f"{table}_p{month(times['sep'])}", f"{table}_p{month(times['oct'])}"} <= dropped
        assert f"{table}_p{month(times['kept'])}" in partitions_of(database_url, table)
    # ... the second never ran: the dropped months' keys and dead letters are still there
    assert (crashed["event_keys"], crashed["order_keys"], crashed["dead_letters"]) == (15, 15, 3)
    assert crashed["ranges_before_floor"] > 0

    conn = analytics(database_url)
    with conn.cursor() as cur:
        drops, why = drop_expired(cur, 30, run_id="next")
    conn.close()
    assert drops == [], why  # nothing left to drop
    after = state(database_url)
    assert (after["events"], after["orders"]) == (5, 5)
    assert (after["event_keys"], after["order_keys"]) == (5, 5)  # the kept month's keys only
    assert after["dead_letters"] == 1  # the one received after the floor
    assert after["drops"] == crashed["drops"]  # each partition recorded once, with its rows
    assert sum(rows for table, _, rows in after["drops"] if table == "events") == 10
    assert after["ranges_before_floor"] == 0  # moved into the trimmed totals ...
    assert after["ledger"] == before["ledger"]  # ... which count every message once
    # the keys left are exactly the kept events' (they still de-duplicate a resend)
    kept = query(database_url, "SELECT event_id FROM event_keys")
    assert {str(k) for (k,) in kept} == {str(e) for (e,) in query(database_url, "SELECT event_id FROM events")}


def test_a_run_with_nothing_dropped_ever_trims_nothing(writer, database_url):
    """The next run finishes a crashed trim; without any drop it deletes nothing."""
    times = seed_months(writer)
    seed_dead_letters(database_url, [times["sep"]])
    before = state(database_url)
    conn = analytics(database_url)
    with conn.cursor() as cur:
        drops, why = drop_expired(cur, 30)  # no reports yet: nothing may go
    conn.close()
    assert drops == [], why
    assert state(database_url) == before
