"""The ingest ledger as the batch writer keeps it, against a real PostgreSQL:
one compact row per batch and partition in the batch's transaction
(sql/130_compact_ledger.sql), re-deliveries of a committed batch skipped,
topic incarnations told apart, and two writers owning the same partition at
once never both landing."""

from __future__ import annotations

import threading

import psycopg2
import pytest

from salespulse.integrity import ledger_gaps
from salespulse.settings import ROLE_INGEST, Settings
from services.consumer.messages import RawMessage
from services.consumer.store import BatchWriter
from tests.support.consumer import ecommerce_event, query, restaurant_order, wait_until
from tests.test_consumer_writer import EC, RO, raw

LEDGER = ('SELECT consumer_group, topic, topic_incarnation, "partition", first_offset, last_offset, messages, '
          'stored, duplicates, dead_lettered FROM ingest_ledger ORDER BY topic, topic_incarnation, "partition", '
          'first_offset')


@pytest.fixture
def ingest_url(database_url):
    return Settings(database_url=database_url).role_url(ROLE_INGEST)


@pytest.fixture
def writer(ingest_url):
    w = BatchWriter(ingest_url, group="g")
    yield w
    w.close()


def mixed_batch(offsets: range, partition: int = 0) -> list[RawMessage]:
    """Valid events with a bad message at every 5th offset."""
    return [raw(EC, o, b"{bad" if o % 5 == 4 else ecommerce_event(o), partition=partition) for o in offsets]


def test_each_batch_records_its_ranges_and_a_redelivery_is_skipped(writer, database_url):
    batch = mixed_batch(range(0, 10)) + mixed_batch(range(100, 103), partition=2) + [raw(RO, 7, restaurant_order(1))]
    first = writer.write_raw(batch, incarnations={EC: "topic-id-1"})
    assert first.skipped == []
    assert query(database_url, LEDGER) == [
        ("g", EC, "topic-id-1", 0, 0, 9, 10, 8, 0, 2),
        ("g", EC, "topic-id-1", 2, 100, 102, 3, 3, 0, 0),
        ("g", RO, "", 0, 7, 7, 1, 1, 0, 0),
    ]
    ledger = query(database_url, "SELECT * FROM ingest_ledger ORDER BY stream, first_offset")
    # structure: one narrow row per (batch, partition), three streams, in the batch's transaction
    assert query(database_url, "SELECT count(*), count(DISTINCT stream), count(DISTINCT xmin::text) "
                               "FROM ingest_ledger_ranges") == [(3, 3, 1)]
    assert query(database_url, "SELECT count(*) FROM ingest_streams") == [(3,)]
    rows = query(database_url, "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM dead_letters)")

    again = writer.write_raw(batch, incarnations={EC: "topic-id-1"})  # crash after the DB commit, before the offsets
    assert len(again.skipped) == len(batch) and again.dead_letters == []
    assert (again.topics[EC].skipped, again.topics[EC].stored, again.topics[EC].dead_letters) == (13, 0, 0)
    assert query(database_url, "SELECT * FROM ingest_ledger ORDER BY stream, first_offset") == ledger
    assert query(database_url, "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM dead_letters)") == rows
    # the two dead letters may never have reached the DLQ topic: they are handed back for re-publication
    assert sorted((m.raw.offset, m.error) for m in again.republish) == sorted(
        (m.raw.offset, m.error) for m in first.dead_letters)
    assert [m.raw.offset for m in again.republish] == [4, 9] and all(m.error for m in again.republish)


def test_a_batch_partly_covered_records_only_the_rest(writer, database_url):
    writer.write_raw(mixed_batch(range(0, 10)))
    writer.write_raw(mixed_batch(range(20, 30)))
    result = writer.write_raw(mixed_batch(range(5, 25)))  # 5..9 and 20..24 were written before
    assert sorted(m.raw.offset for m in result.skipped) == [*range(5, 10), *range(20, 25)]
    assert [row[4:7] for row in query(database_url, LEDGER)] == [(0, 9, 10), (10, 19, 10), (20, 29, 10)]
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        assert ledger_gaps(cur) == []


def test_two_incarnations_with_the_same_offsets_are_both_stored(writer, database_url):
    before = writer.write_raw(mixed_batch(range(0, 5)), incarnations={EC: "before-restart"})
    after_batch = [raw(EC, o, ecommerce_event(o + 50)) for o in range(0, 4)] + [raw(EC, 4, b"{bad")]
    after = writer.write_raw(after_batch, incarnations={EC: "after-restart"})
    assert before.skipped == [] and after.skipped == []
    assert after.topics[EC].stored == 4
    # the same bad payload at the same offset in the new incarnation is a new dead letter
    assert [m.raw.offset for m in after.dead_letters] == [4]
    assert query(database_url, 'SELECT topic_incarnation, "offset" FROM dead_letters ORDER BY 1') == [
        ("after-restart", 4), ("before-restart", 4)]
    assert [row[2] for row in query(database_url, LEDGER)] == ["after-restart", "before-restart"]
    # the incarnation may also come with each message
    msgs = [RawMessage(EC, 0, o, b"k", b"{bad", None, "third") for o in range(2)]
    assert len(writer.write_raw(msgs, incarnations={EC: "ignored"}).dead_letters) == 2
    assert query(database_url, "SELECT count(*) FROM ingest_ledger WHERE topic_incarnation = 'third'")[0][0] == 1


def test_each_consumer_group_has_its_own_ledger(writer, ingest_url, database_url):
    batch = mixed_batch(range(0, 5))
    writer.write_raw(batch)
    replay = BatchWriter(ingest_url, group="replay-1")
    try:
        result = replay.write_raw(batch)
    finally:
        replay.close()
    assert result.skipped == [] and result.topics[EC].duplicates == 4 and result.topics[EC].dead_letters == 1
    assert [(row[0], row[7:]) for row in query(database_url, LEDGER)] == [("g", (4, 0, 1)), ("replay-1", (0, 4, 1))]


def test_the_ledger_refuses_a_second_range_from_an_offset_and_the_check_finds_any_other_overlap(database_url):
    """No GiST exclusion constraint any more (sql/130): the primary key refuses
    two ranges of a stream starting at the same offset; any other overlap (a
    writer bypassing the consumer's lock and coverage read) is committed but
    found by the contiguity check."""
    conn = psycopg2.connect(database_url)
    insert = ('INSERT INTO ingest_ledger (consumer_group, topic, topic_incarnation, "partition", first_offset, '
              'last_offset, messages, stored, duplicates, dead_lettered) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 0, 0)')
    try:
        with conn, conn.cursor() as cur:
            cur.execute(insert, ("g", EC, "", 0, 0, 9, 10, 10))
            cur.execute(insert, ("g", EC, "other", 0, 0, 9, 10, 10))  # another incarnation: fine
        with pytest.raises(psycopg2.errors.UniqueViolation), conn, conn.cursor() as cur:
            cur.execute(insert, ("g", EC, "", 0, 0, 12, 13, 13))
        with pytest.raises(psycopg2.errors.CheckViolation), conn, conn.cursor() as cur:
            cur.execute(insert, ("g", EC, "", 0, 10, 12, 3, 2))  # counts do not add up
        with conn, conn.cursor() as cur:
            assert ledger_gaps(cur) == []
            cur.execute(insert, ("g", EC, "", 0, 9, 12, 4, 4))
            assert ledger_gaps(cur) == [("g", EC, "", 0, 10, 9)]  # an overlap: expected 10, found 9
    finally:
        conn.close()


def test_two_writers_owning_a_partition_at_once_never_both_land(ingest_url, database_url):
    """A holds its transaction open (stopped at its last statement, the ledger
    insert, by a table lock a third session holds); B writes an overlapping
    batch meanwhile: B waits, then sees A's ledger rows and skips."""
    a, b = BatchWriter(ingest_url, group="g", application_name="writer-a"), BatchWriter(
        ingest_url, group="g", application_name="writer-b")
    blocker = psycopg2.connect(database_url)
    with blocker.cursor() as cur:  # reads of the ledger pass, inserts wait until the rollback below
        cur.execute("LOCK TABLE ingest_ledger_ranges IN EXCLUSIVE MODE")

    def waiting_for_a_lock(name: str) -> bool:
        return query(database_url, "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                                   "AND wait_event_type = 'Lock'", (name,))[0][0] == 1

    results = {}
    first = threading.Thread(target=lambda: results.setdefault("a", a.write_raw(mixed_batch(range(0, 10)))))
    second = threading.Thread(target=lambda: results.setdefault("b", b.write_raw(mixed_batch(range(5, 15)))))
    try:
        first.start()
        wait_until(lambda: waiting_for_a_lock("writer-a"), what="writer A stopped before its COMMIT")
        second.start()
        wait_until(lambda: waiting_for_a_lock("writer-b"), what="writer B waits for A's partition lock")
    finally:
        blocker.rollback()
        blocker.close()
        first.join(60)
        second.join(60)
        a.close()
        b.close()
    assert results["a"].topics[EC].stored == 8
    assert sorted(m.raw.offset for m in results["b"].skipped) == list(range(5, 10))
    assert results["b"].topics[EC].stored == 4 and results["b"].topics[EC].dead_letters == 1
    assert [row[4:6] for row in query(database_url, LEDGER)] == [(0, 9), (10, 14)]
    assert query(database_url, "SELECT count(*) FROM events")[0][0] == 12
