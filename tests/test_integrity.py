"""salespulse.integrity against a real PostgreSQL: nothing reported after normal
writes; every kind of violation, built by hand with direct SQL, reported."""

from __future__ import annotations

from datetime import timedelta

import psycopg2
import pytest

from salespulse.integrity import consistency_violations, consistency_violations_in, ledger_gaps, ledger_summary
from salespulse.settings import ROLE_INGEST, Settings
from services.consumer.store import BatchWriter
from tests.support.consumer import BASE_TS, ecommerce_event, restaurant_order
from tests.test_consumer_writer import EC, RO, raw


@pytest.fixture
def stored(database_url):
    """A normal ingest: purchases and other events, orders, bad messages, two batches."""
    writer = BatchWriter(Settings(database_url=database_url).role_url(ROLE_INGEST), group="g")
    events = [ecommerce_event(i) for i in range(40)]
    orders = [restaurant_order(i) for i in range(12)]
    try:
        writer.write_raw([raw(EC, i, e) for i, e in enumerate(events[:20])] + [raw(EC, 20, b"{bad")]
                         + [raw(RO, i, o) for i, o in enumerate(orders)])
        writer.write_raw([raw(EC, 21 + i, e) for i, e in enumerate(events[20:])], incarnations={EC: "t1"})
        # the same events again (a client re-sending them): duplicates
        writer.write_raw([raw(EC, 41 + i, e) for i, e in enumerate(events[20:])], incarnations={EC: "t1"})
    finally:
        writer.close()
    return {"events": events, "orders": orders}


@pytest.fixture
def cur(database_url):
    conn = psycopg2.connect(database_url)
    conn.autocommit = True
    with conn.cursor() as c:
        yield c
    conn.close()


def purchase_ids(events: list[dict]) -> list[str]:
    return [e["event_id"] for e in events if e["event_type"] == "purchase"]


def test_normal_writes_show_no_violation_and_a_full_summary(stored, cur):
    assert ledger_gaps(cur) == []
    assert consistency_violations(cur) == []
    assert ledger_summary(cur) == [
        {"consumer_group": "g", "topic": EC, "topic_incarnation": "", "partition": 0, "first_offset": 0,
         "last_offset": 20, "messages": 21, "stored": 20, "duplicates": 0, "dead_lettered": 1, "batches": 1,
         "trimmed_through": -1, "gaps": 0},
        {"consumer_group": "g", "topic": EC, "topic_incarnation": "t1", "partition": 0, "first_offset": 21,
         "last_offset": 60, "messages": 40, "stored": 20, "duplicates": 20, "dead_lettered": 0, "batches": 2,
         "trimmed_through": -1, "gaps": 0},
        {"consumer_group": "g", "topic": RO, "topic_incarnation": "", "partition": 0, "first_offset": 0,
         "last_offset": 11, "messages": 12, "stored": 12, "duplicates": 0, "dead_lettered": 0, "batches": 1,
         "trimmed_through": -1, "gaps": 0},
    ]


def test_ledger_gaps_are_reported(stored, cur):
    assert ledger_gaps(cur) == []
    cur.execute("""INSERT INTO ingest_ledger (consumer_group, topic, topic_incarnation, "partition", first_offset,
                   last_offset, messages, stored, duplicates, dead_lettered)
                   VALUES ('g', %s, '', 0, 25, 29, 5, 5, 0, 0), ('g', %s, '', 1, 0, 3, 4, 4, 0, 0),
                          ('g', %s, '', 1, 10, 11, 2, 2, 0, 0)""", (EC, EC, EC))
    assert ledger_gaps(cur) == [("g", EC, "", 0, 21, 25), ("g", EC, "", 1, 4, 10)]
    by_partition = {(r["topic_incarnation"], r["partition"]): r for r in ledger_summary(cur, "g") if r["topic"] == EC}
    assert by_partition[("", 0)]["gaps"] == 1 and by_partition[("", 1)]["gaps"] == 1
    assert by_partition[("", 1)]["messages"] == 6 and by_partition[("t1", 0)]["gaps"] == 0
    assert ledger_summary(cur, "no-such-group") == []


def test_disagreements_between_parents_and_children_are_reported(stored, cur):
    events, orders = stored["events"], stored["orders"]
    purchases = purchase_ids(events)
    page_view = next(e["event_id"] for e in events if e["event_type"] == "page_view")
    cur.execute("DELETE FROM transactions WHERE event_id = %s", (purchases[0],))
    cur.execute("""INSERT INTO transactions (transaction_id, event_id, product_id, quantity, total_amount,
                   payment_method, "timestamp")
                   SELECT 'tx-' || e.event_id, e.event_id, p.product_id, 1, 1, 'card', e."timestamp"
                   FROM events e, (SELECT product_id FROM products LIMIT 1) p WHERE e.event_id = %s""", (page_view,))
    cur.execute("UPDATE transactions SET \"timestamp\" = \"timestamp\" + interval '1 hour' WHERE event_id = %s",
                (purchases[1],))
    cur.execute("DELETE FROM order_items WHERE order_id = %s", (orders[0]["order_id"],))
    cur.execute("UPDATE orders SET item_count = item_count + 1 WHERE order_id = %s", (orders[1]["order_id"],))
    cur.execute("UPDATE orders SET total_amount = total_amount + 1 WHERE order_id = %s", (orders[2]["order_id"],))

    found = {(check, table, key) for check, table, key, _ in consistency_violations(cur)}
    assert found == {
        ("purchase_without_transaction", "events", purchases[0]),
        ("transaction_event_not_purchase", "transactions", f"tx-{page_view}"),
        ("transaction_timestamp_mismatch", "transactions", purchases[1]),
        ("order_without_items", "orders", orders[0]["order_id"]),
        ("order_item_count_mismatch", "orders", orders[1]["order_id"]),
        ("order_total_mismatch", "orders", orders[2]["order_id"]),
    }
    details = {check: detail for check, _, _, detail in consistency_violations(cur)}
    assert details["order_without_items"] == f"order {orders[0]['order_id']} has no items"
    assert "!= sum of line totals" in details["order_total_mismatch"]

    # the time window: orders 0..2 are at BASE_TS + 0..2 s
    later = consistency_violations(cur, since=BASE_TS + timedelta(seconds=2))
    assert "order_without_items" not in {v[0] for v in later} and "order_total_mismatch" in {v[0] for v in later}
    assert consistency_violations(cur, since=BASE_TS + timedelta(days=1)) == []
    assert consistency_violations(cur, until=BASE_TS) == []

    # the incremental form (five-minute check) over the minutes of every row: the
    # same findings, except that a transaction moved out of its event's minutes is
    # not looked for there, so its purchase shows as having none
    def minutes(table):
        cur.execute(f"""SELECT DISTINCT date_trunc('minute', "timestamp", 'UTC') FROM {table}""")
        return [m for (m,) in cur.fetchall()]

    in_minutes = consistency_violations_in(cur, minutes("events"), minutes("orders"))
    assert {(check, table, key) for check, table, key, _, _ in in_minutes} == (
        found - {("transaction_timestamp_mismatch", "transactions", purchases[1])}
        | {("purchase_without_transaction", "events", purchases[1])})
    # with the transaction's minute too, it is a mismatch again
    with_moved = consistency_violations_in(cur, minutes("events") + minutes("transactions"), minutes("orders"))
    assert {(check, table, key) for check, table, key, _, _ in with_moved} == found
    # the moved transaction's minute alone: its event, elsewhere, is found through event_keys
    cur.execute("""SELECT date_trunc('minute', "timestamp", 'UTC') FROM transactions WHERE event_id = %s""",
                (purchases[1],))
    alone = consistency_violations_in(cur, [cur.fetchone()[0]], [])
    assert [(check, key) for check, _, key, _, _ in alone] == [("transaction_timestamp_mismatch", purchases[1])]
    assert consistency_violations_in(cur, [], []) == []


def test_a_transaction_without_its_event_is_reported(stored, cur):
    gone = purchase_ids(stored["events"])[2]
    cur.execute("DELETE FROM events WHERE event_id = %s", (gone,))
    assert [(v[0], v[2]) for v in consistency_violations(cur)] == [("transaction_without_event", gone)]
    cur.execute("""SELECT DISTINCT date_trunc('minute', "timestamp", 'UTC') FROM transactions""")
    minutes = [m for (m,) in cur.fetchall()]
    assert [(v[0], v[2]) for v in consistency_violations_in(cur, minutes, [])] == [("transaction_without_event", gone)]
