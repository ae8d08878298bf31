"""The batch writer against a real PostgreSQL (no Kafka): one transaction per
batch, idempotent inserts, dead letters (whatever the message holds), isolation
of rejected rows, conflicting re-sends, the event-time window, outages.
The ingest ledger has its own tests (test_consumer_ledger.py)."""

from __future__ import annotations

import base64
import hashlib
import json
from decimal import Decimal

import psycopg2
import pytest

from salespulse.contracts import ECOMMERCE_TOPIC, RESTAURANT_TOPIC
from salespulse.settings import ROLE_INGEST, Settings
import services.consumer.store as store_module
from services.consumer.messages import RawMessage, parse
from services.consumer.store import CONFLICT, BatchWriter, DatabaseUnavailable
from tests.support.consumer import (
    ecommerce_event,
    expected_items,
    expected_purchase_total,
    query,
    restaurant_order,
)

EC, RO = ECOMMERCE_TOPIC.name, RESTAURANT_TOPIC.name


def raw(topic: str, offset: int, value, key: bytes | None = b"k", partition: int = 0) -> RawMessage:
    if isinstance(value, dict):
        value = json.dumps(value).encode()
    return RawMessage(topic, partition, offset, key, value, None)


@pytest.fixture
def writer(database_url):
    w = BatchWriter(Settings(database_url=database_url).role_url(ROLE_INGEST))
    yield w
    w.close()


def test_valid_batch_both_domains_then_redelivery_is_noop(writer, database_url):
    events = [ecommerce_event(i) for i in range(250)]
    orders = [restaurant_order(i) for i in range(60)]
    batch = [raw(EC, i, e) for i, e in enumerate(events)] + [raw(RO, i, o) for i, o in enumerate(orders)]

    result = writer.write_raw(batch)
    assert result.topics[EC].stored == 250 and result.topics[EC].duplicates == 0
    assert result.topics[RO].stored == 60
    assert result.dead_letters == []

    purchases = [e for e in events if e["event_type"] == "purchase"]
    n_items, orders_total = expected_items(orders)
    assert query(database_url, "SELECT count(*) FROM events")[0][0] == 250
    assert query(database_url, "SELECT count(*), sum(total_amount) FROM transactions")[0] == (
        len(purchases), expected_purchase_total(events))
    assert query(database_url, "SELECT count(*), sum(total_amount) FROM orders")[0] == (60, orders_total)
    assert query(database_url, "SELECT count(*), sum(line_total) FROM order_items")[0] == (n_items, orders_total)
    assert query(database_url, "SELECT count(*) FROM products")[0][0] == 11
    # transaction_id is the event id as text; line numbers are the item index
    tx = query(database_url, "SELECT transaction_id, event_id::text FROM transactions LIMIT 5")
    assert all(a == b for a, b in tx)
    lines = query(database_url, "SELECT array_agg(line_number ORDER BY line_number) FROM order_items "
                                "WHERE order_id = %s", (orders[3]["order_id"],))[0][0]
    assert lines == list(range(len(orders[3]["items"])))
    # normalisation: UTC timestamps, item_count = sum of quantities, escaped text round-trips
    search = next(e for e in events if e["event_type"] == "search")
    assert query(database_url, "SELECT search_query FROM events WHERE event_id = %s",
                 (search["event_id"],))[0][0] == search["search_query"]
    assert query(database_url, "SELECT item_count FROM orders WHERE order_id = %s", (orders[5]["order_id"],))[0][0] \
        == sum(it["quantity"] for it in orders[5]["items"])

    # the same messages at other offsets (a replay, a client re-sending): identical content = duplicates
    again = writer.write_raw([raw(m.topic, m.offset + 1000, m.value) for m in batch])
    assert again.topics[EC].stored == 0 and again.topics[EC].duplicates == 250
    assert again.topics[RO].duplicates == 60 and again.dead_letters == []
    assert query(database_url, "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM transactions), "
                               "(SELECT count(*) FROM orders), (SELECT count(*) FROM order_items)")[0] == (
        250, len(purchases), 60, n_items)


def test_duplicates_inside_one_batch_are_stored_once(writer, database_url):
    e = ecommerce_event(3, event_type="purchase")
    o = restaurant_order(1)
    result = writer.write_raw([raw(EC, 0, e), raw(EC, 1, e), raw(RO, 0, o), raw(RO, 1, o)])
    assert result.topics[EC].stored == 1 and result.topics[EC].duplicates == 1
    assert result.topics[RO].stored == 1 and result.topics[RO].duplicates == 1
    assert query(database_url, "SELECT (SELECT count(*) FROM transactions), (SELECT count(*) FROM order_items)")[0] \
        == (1, len(o["items"]))


def test_invalid_messages_become_dead_letters_and_neighbours_are_stored(writer, database_url):
    good = [ecommerce_event(i) for i in range(4)]
    good_order = restaurant_order(2)
    bad_total = restaurant_order(7)
    bad_total["total_amount"] += 1
    wrong_typed = ecommerce_event(8, event_type="purchase")
    wrong_typed["quantity"] = "three"
    missing = ecommerce_event(9, event_type="purchase")
    del missing["payment_method"]
    bad = {
        1: b"",
        3: b"\xff\xfe not utf-8",
        5: b"{not json",
        6: json.dumps(wrong_typed).encode(),
        7: json.dumps(missing).encode(),
    }
    batch = [raw(EC, 0, good[0]), raw(EC, 2, good[1]), raw(EC, 4, good[2]), raw(EC, 8, good[3])]
    batch += [raw(EC, off, value, key=b"\xc3\x28" if off == 3 else b"user-x") for off, value in bad.items()]
    batch += [raw(RO, 0, good_order), raw(RO, 1, bad_total), raw(RO, 2, None)]

    result = writer.write_raw(batch)
    assert result.topics[EC].stored == 4 and result.topics[EC].dead_letters == 5
    assert result.topics[RO].stored == 1 and result.topics[RO].dead_letters == 2
    rows = {(t, o): (key, bytes(p) if p is not None else None, sha, err)
            for t, o, key, p, sha, err in query(
                database_url, 'SELECT topic, "offset", key, payload, payload_sha256, error FROM dead_letters')}
    assert len(rows) == 7
    assert rows[(EC, 1)][3] == "empty message"
    assert rows[(EC, 3)][3].startswith("not UTF-8") and rows[(EC, 3)][1] == bad[3]
    assert rows[(EC, 3)][0] == "\\xc3("  # undecodable key kept readable
    assert rows[(EC, 3)][2] == hashlib.sha256(bad[3]).hexdigest()
    assert "json" in rows[(EC, 5)][3].lower()
    assert rows[(EC, 6)][3].startswith("quantity:")
    assert "purchase requires payment_method" in rows[(EC, 7)][3]
    assert "total_amount" in rows[(RO, 1)][3] and "sum of items" in rows[(RO, 1)][3]
    assert rows[(RO, 2)][3] == "empty message" and rows[(RO, 2)][1] is None
    assert query(database_url, "SELECT count(*) FROM events")[0][0] == 4
    assert query(database_url, "SELECT count(*) FROM orders")[0][0] == 1

    again = writer.write_raw([raw(m.topic, m.offset, m.value, key=m.key, partition=1) for m in batch])
    assert again.topics[EC].dead_letters == 5 and again.topics[RO].dead_letters == 2  # other offsets: new rows
    replay = BatchWriter(writer.url, group="replay")  # the same offsets read again by another group
    try:
        assert replay.write_raw(batch).dead_letters == []  # already stored: not published again
    finally:
        replay.close()
    assert query(database_url, "SELECT count(*) FROM dead_letters")[0][0] == 14


def test_rows_no_column_can_hold_are_dead_letters_without_a_database_error(writer, database_url):
    events = [ecommerce_event(i, event_type="purchase") for i in range(5)]
    huge = ecommerce_event(99, event_type="purchase", total_amount=10 ** 12)  # > NUMERIC(12,2)
    nul = ecommerce_event(98, event_type="search", search_query="nul \u0000 inside")  # text cannot hold NUL
    batch = [raw(EC, i, e) for i, e in enumerate(events)] + [raw(EC, 10, huge), raw(EC, 11, nul)]
    assert all(parse(m).valid for m in batch)  # the contract lets them through

    result = writer.write_raw(batch)
    assert not result.isolated
    assert result.topics[EC].stored == 5 and result.topics[EC].dead_letters == 2
    errors = dict(query(database_url, 'SELECT "offset", error FROM dead_letters'))
    assert errors[10] == "cannot be stored: amount 1000000000000.00 does not fit NUMERIC(12,2)"
    assert errors[11] == "cannot be stored: text contains a NUL character, which PostgreSQL text cannot hold"
    assert query(database_url, "SELECT count(*) FROM transactions")[0][0] == 5


def test_an_amount_no_decimal_can_round_is_a_dead_letter_naming_its_field(writer, database_url):
    """1e50 once reached the dead letters as "unexpected validation error:
    InvalidOperation"; the reason names the field and the rule."""
    huge = ecommerce_event(1, event_type="purchase", total_amount=1e50)
    order = restaurant_order(2)
    order["items"][0]["unit_price"] = 1e50
    result = writer.write_raw([raw(EC, 0, huge), raw(RO, 0, order)])
    assert result.topics[EC].dead_letters == 1 and result.topics[RO].dead_letters == 1
    errors = dict(query(database_url, "SELECT topic, error FROM dead_letters"))
    assert errors[EC] == "total_amount: Value error, must be less than 1E+25"
    assert errors[RO].startswith("items.0.unit_price: Value error, must be less than 1E+25")


def test_rows_the_database_rejects_are_isolated_into_dead_letters(writer, database_url):
    admin = psycopg2.connect(database_url)
    with admin, admin.cursor() as cur:  # a rule the contract does not know
        cur.execute("ALTER TABLE events ADD CONSTRAINT no_mallory CHECK (user_id <> 'mallory')")
    admin.close()
    events = [ecommerce_event(i, event_type="purchase") for i in range(9)]
    events[2]["user_id"] = events[7]["user_id"] = "mallory"
    fixed = {**events[2], "user_id": "alice"}  # a later copy of a rejected id, with other content
    batch = [raw(EC, i, e) for i, e in enumerate(events)] + [raw(EC, 9, fixed), raw(RO, 0, restaurant_order(1))]

    result = writer.write_raw(batch)
    assert result.isolated
    assert result.topics[EC].stored == 8 and result.topics[EC].dead_letters == 2
    assert result.topics[RO].stored == 1
    assert {m.raw.offset for m in result.dead_letters} == {2, 7}
    errors = dict(query(database_url, 'SELECT "offset", error FROM dead_letters'))
    assert set(errors) == {2, 7}
    assert all(e.startswith('rejected by the database: new row for relation "events_p')  # its month's partition
               and "violates check constraint" in e for e in errors.values())
    assert query(database_url, "SELECT user_id FROM events WHERE event_id = %s", (fixed["event_id"],)) == [("alice",)]
    assert query(database_url, "SELECT count(*) FROM transactions")[0][0] == 8
    assert query(database_url, "SELECT messages, stored, dead_lettered FROM ingest_ledger WHERE topic = %s",
                 (EC,)) == [(10, 8, 2)]


def test_products_keep_the_latest_catalogue_data_by_event_time(writer, database_url):
    def product_event(i, price, name):
        return ecommerce_event(i, event_type="page_view", product={"id": "PX", "name": name, "category": "c",
                                                                   "price": price})

    writer.write_raw([raw(EC, 0, product_event(10, 5.0, "ten")), raw(EC, 1, product_event(20, 7.5, "twenty"))])
    assert query(database_url, "SELECT product_name, price FROM products WHERE product_id = 'PX'")[0] == (
        "twenty", Decimal("7.50"))
    writer.write_raw([raw(EC, 2, product_event(15, 6.0, "fifteen"))])  # older: no roll-back
    assert query(database_url, "SELECT product_name FROM products WHERE product_id = 'PX'")[0][0] == "twenty"
    writer.write_raw([raw(EC, 3, product_event(30, 9.99, "thirty"))])
    assert query(database_url, "SELECT product_name, price FROM products WHERE product_id = 'PX'")[0] == (
        "thirty", Decimal("9.99"))


def test_lost_connection_raises_unavailable_then_reconnects(writer, database_url):
    writer.write_raw([raw(EC, 0, ecommerce_event(0))])
    admin = psycopg2.connect(database_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE usename = 'salespulse_ingest' AND datname = current_database()")
        cur.execute("REVOKE CONNECT ON DATABASE " + database_url.rsplit("/", 1)[1] + " FROM PUBLIC")
    batch = [raw(EC, i, ecommerce_event(i)) for i in range(1, 4)]
    with pytest.raises(DatabaseUnavailable):
        writer.write_raw(batch)
    with pytest.raises(DatabaseUnavailable):
        writer.write_raw(batch)  # reconnect refused while access is revoked
    with admin.cursor() as cur:
        cur.execute("GRANT CONNECT ON DATABASE " + database_url.rsplit("/", 1)[1] + " TO PUBLIC")
    admin.close()
    result = writer.write_raw(batch)
    assert result.topics[EC].stored == 3
    assert query(database_url, "SELECT count(*) FROM events")[0][0] == 4


# --- hostile content: dead letters never fail because of what a message holds ---

def test_nul_in_key_value_error_and_headers_is_stored_in_full(writer, database_url):
    echoing = {**ecommerce_event(1), "event_id": "\u0000x"}  # the validation error echoes the NUL
    headers = [("h\x00", b"\x00\xff raw"), ("empty", None), ("caf\u00e9", b"ok")]
    batch = [
        RawMessage(EC, 0, 0, b"k\x00", b"x", None),
        RawMessage(EC, 0, 1, b"\xff\x00\xfe", json.dumps(echoing).encode(), headers),
        RawMessage(EC, 0, 2, b"k", b"{\"event_id\": \"\\u0000\"}", [(b"\xc3\x28", b"v")]),
        raw(EC, 3, ecommerce_event(3)),
    ]
    result = writer.write_raw(batch)
    assert result.topics[EC].stored == 1 and result.topics[EC].dead_letters == 3
    assert [m.raw.offset for m in result.dead_letters] == [0, 1, 2]
    assert all("\x00" not in m.error for m in result.dead_letters)
    rows = {off: rest for off, *rest in query(
        database_url, 'SELECT "offset", key, key_bytes, payload, headers, error FROM dead_letters')}
    key, key_bytes, payload, hdrs, error = rows[0]
    assert (key, bytes(key_bytes), bytes(payload), hdrs) == ("k\\x00", b"k\x00", b"x", None)
    key, key_bytes, payload, hdrs, error = rows[1]
    assert key == "\\xff\\x00\\xfe" and bytes(key_bytes) == b"\xff\x00\xfe"
    assert bytes(payload) == json.dumps(echoing).encode()
    assert error.startswith("event_id:") and "\\x00" in error
    assert [(h["key"], h["value_b64"] and base64.b64decode(h["value_b64"])) for h in hdrs] == [
        ("h\\x00", b"\x00\xff raw"), ("empty", None), ("caf\u00e9", b"ok")]
    assert rows[2][3] == [{"key": "\\xc3(", "value_b64": base64.b64encode(b"v").decode()}]


def test_a_large_bad_value_is_stored_up_to_the_cap_with_its_full_size_and_hash(writer, database_url):
    big = b"\x00" + bytes(range(256)) * 8192  # 2 MB, not UTF-8
    result = writer.write_raw([RawMessage(RO, 0, 0, None, big, None), raw(RO, 1, restaurant_order(1))])
    assert result.topics[RO].dead_letters == 1 and result.topics[RO].stored == 1
    payload, size, sha = query(database_url, "SELECT payload, payload_bytes, payload_sha256 FROM dead_letters")[0]
    cap = Settings().dead_letter_payload_max_bytes  # DEAD_LETTER_PAYLOAD_MAX_BYTES (64 KiB)
    assert bytes(payload) == big[:cap] and size == len(big) and sha == hashlib.sha256(big).hexdigest()


def test_an_unexpected_error_on_one_message_dead_letters_only_that_message(writer, database_url, monkeypatch):
    events = [ecommerce_event(i) for i in range(10)]
    culprit = events[6]["event_id"].encode()
    real_copy = store_module.copy_lines

    def copy_failing_on_culprit(cur, table, lines):
        if any(culprit in line for line in lines):
            raise ValueError("A string literal cannot contain NUL (0x00) characters.")
        real_copy(cur, table, lines)

    monkeypatch.setattr(store_module, "copy_lines", copy_failing_on_culprit)
    result = writer.write_raw([raw(EC, i, e) for i, e in enumerate(events)])
    assert result.isolated
    assert result.topics[EC].stored == 9 and [m.raw.offset for m in result.dead_letters] == [6]
    assert query(database_url, "SELECT error FROM dead_letters")[0][0] == (
        "cannot be stored: ValueError: A string literal cannot contain NUL (0x00) characters.")
    assert query(database_url, "SELECT count(*) FROM events")[0][0] == 9


def test_write_raises_nothing_but_database_unavailable(writer, database_url, monkeypatch):
    def broken_ledger(self):
        raise KeyError("a bug outside the row insert")

    monkeypatch.setattr(store_module.Attempt, "write_ledger", broken_ledger)
    with pytest.raises(DatabaseUnavailable, match="unexpected error: KeyError"):
        writer.write_raw([raw(EC, 0, ecommerce_event(0))])
    assert query(database_url, "SELECT count(*) FROM events")[0][0] == 0  # nothing half-written
    monkeypatch.undo()
    assert writer.write_raw([raw(EC, 0, ecommerce_event(0))]).topics[EC].stored == 1


# --- same id, other content ---------------------------------------------------

def test_a_conflicting_resend_is_a_dead_letter_and_adds_no_child_rows(writer, database_url):
    page_view = ecommerce_event(1, event_type="page_view")
    order = restaurant_order(2, n_items=2)
    writer.write_raw([raw(EC, 0, page_view), raw(RO, 0, order)])

    purchase = ecommerce_event(4, event_type="purchase", event_id=page_view["event_id"])
    bigger = restaurant_order(2, n_items=3, order_id=order["order_id"])
    result = writer.write_raw([raw(EC, 1, purchase), raw(EC, 2, page_view), raw(RO, 1, bigger), raw(RO, 2, order)])
    assert (result.topics[EC].dead_letters, result.topics[EC].duplicates) == (1, 1)
    assert (result.topics[RO].dead_letters, result.topics[RO].duplicates) == (1, 1)
    assert sorted((m.raw.topic, m.raw.offset) for m in result.dead_letters) == [(EC, 1), (RO, 1)]
    assert {m.error for m in result.dead_letters} == {CONFLICT}
    assert query(database_url, "SELECT event_type FROM events")[0][0] == "page_view"
    assert query(database_url, "SELECT count(*) FROM transactions")[0][0] == 0
    assert query(database_url, "SELECT item_count, (SELECT count(*) FROM order_items) FROM orders")[0] == (
        sum(it["quantity"] for it in order["items"]), 2)


def test_inside_a_batch_the_first_copy_wins(writer, database_url):
    first = ecommerce_event(1, event_type="purchase")
    other = {**first, "total_amount": first["total_amount"] + 1}
    reordered = json.dumps(dict(reversed(list(first.items())))).encode()  # same content, other bytes
    order = restaurant_order(3)
    batch = [raw(EC, 0, first), raw(EC, 1, other), raw(EC, 2, reordered), raw(RO, 0, order),
             raw(RO, 1, {**order, "payment_method": "other"})]
    result = writer.write_raw(batch)
    assert (result.topics[EC].stored, result.topics[EC].duplicates, result.topics[EC].dead_letters) == (1, 1, 1)
    assert (result.topics[RO].stored, result.topics[RO].dead_letters) == (1, 1)
    assert sorted((m.raw.topic, m.raw.offset, m.error) for m in result.dead_letters) == [
        (EC, 1, CONFLICT), (RO, 1, CONFLICT)]
    assert query(database_url, "SELECT total_amount FROM transactions")[0][0] == Decimal(str(first["total_amount"]))
    assert query(database_url, "SELECT payment_method FROM orders")[0][0] == order["payment_method"]


# --- event-time window -------------------------------------------------------

def test_events_outside_the_timestamp_window_are_dead_letters(writer, database_url):
    batch = [raw(EC, 0, ecommerce_event(0, timestamp="9999-12-31T23:59:59Z")),
             raw(EC, 1, ecommerce_event(1, timestamp="1999-12-31T23:59:59Z")),
             raw(RO, 0, restaurant_order(0, timestamp="9999-01-01T00:00:00+00:00")),
             raw(EC, 2, ecommerce_event(2))]
    result = writer.write_raw(batch)
    assert result.topics[EC].stored == 1 and result.topics[EC].dead_letters == 2
    assert result.topics[RO].dead_letters == 1
    errors = [e for (e,) in query(database_url, 'SELECT error FROM dead_letters ORDER BY topic, "offset"')]
    assert all(e.startswith("timestamp outside the accepted window: ") for e in errors), errors
    assert "9999-12-31T23:59:59+00:00 is more than 300 s in the future" in errors[0]
    assert "1999-12-31T23:59:59+00:00 is before 2000-01-01T00:00:00+00:00" in errors[1]
    assert query(database_url, "SELECT count(*) FROM products WHERE catalog_as_of > now()")[0][0] == 0


# --- the cost of a batch -----------------------------------------------------

def test_a_clean_batch_costs_a_fixed_number_of_statements(writer):
    batch = [raw(EC, i, ecommerce_event(i)) for i in range(300)] + [raw(RO, i, restaurant_order(i)) for i in range(50)]
    # lock+ledger read, COPY + insert events, COPY orders + items + insert, ledger row(s): whatever the size
    assert writer.write_raw(batch).statements == 7
    assert writer.write_raw([raw(EC, 300 + i, ecommerce_event(i)) for i in range(40)]).statements == 4
