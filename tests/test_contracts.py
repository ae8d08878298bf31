"""The event contracts (salespulse.contracts): valid examples accepted, invalid
ones rejected with a readable reason, event times checked against the window.
Uses the contracts module (and Settings for the window's configuration) only."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from salespulse.contracts import (
    ECOMMERCE_TOPIC,
    RESTAURANT_TOPIC,
    TOPICS,
    ContractError,
    EcommerceEvent,
    RestaurantOrder,
    TimestampWindow,
    json_schemas,
    parse_message,
)
from salespulse.settings import Settings

ECO = ECOMMERCE_TOPIC.name
REST = RESTAURANT_TOPIC.name
PRODUCT = {"id": "PROD00001", "name": "Acme Red Laptop", "category": "Electronics", "price": 999.99}
BASE = {
    "event_id": "7b0d6a3e-2a52-4d7c-9a55-1f1a0c3d9e01",
    "timestamp": "2026-01-01T12:30:00Z",
    "user_id": "USER000001",
    "session_id": "5f6c2a1e-8f0e-4b9b-8c7e-2d7e1f0a9b11",
}
ECOMMERCE_VALID = {
    "page_view": {**BASE, "event_type": "page_view", "product": PRODUCT},
    "add_to_cart": {**BASE, "event_type": "add_to_cart", "product": PRODUCT, "quantity": 2},
    "remove_from_cart": {**BASE, "event_type": "remove_from_cart", "product": PRODUCT},
    "purchase": {**BASE, "event_type": "purchase", "product": PRODUCT, "quantity": 2,
                 "total_amount": 1999.98, "payment_method": "credit_card"},
    "search": {**BASE, "event_type": "search", "search_query": "red laptop"},
}
#: required fields beyond the common ones, per event type
REQUIRED_BY_TYPE = {
    "page_view": ["product"],
    "add_to_cart": ["product"],
    "remove_from_cart": ["product"],
    "purchase": ["product", "quantity", "total_amount", "payment_method"],
    "search": ["search_query"],
}
COMMON_REQUIRED = ["event_id", "event_type", "timestamp", "user_id", "session_id"]

ORDER_VALID = {
    "order_id": "0be6afd3-6e11-404d-bf97-7767ced7ceee",
    "timestamp": "2026-01-01T19:05:00Z",
    "restaurant_id": "REST001",
    "table_number": 12,
    "channel": "dine_in",
    "items": [
        {"item_id": "ITEM007", "name": "Beef Steak", "category": "Mains", "quantity": 2, "unit_price": 89.0},
        {"item_id": "ITEM030", "name": "Soda", "category": "Drinks", "quantity": 3, "unit_price": 7.5},
    ],
    "total_amount": 200.5,
    "payment_method": "pix",
}
ORDER_REQUIRED = ["order_id", "timestamp", "restaurant_id", "channel", "items", "total_amount", "payment_method"]


def raw(obj) -> bytes:
    return json.dumps(obj).encode()


def without(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}


def rejected(topic: str, payload) -> str:
    data = payload if isinstance(payload, (bytes, type(None))) else raw(payload)
    with pytest.raises(ContractError) as info:
        parse_message(topic, data)
    reason = info.value.reason
    assert reason and str(info.value) == reason and "\n" not in reason
    return reason


# --------------------------------------------------------------------------- e-commerce


@pytest.mark.parametrize("event_type", sorted(ECOMMERCE_VALID))
def test_valid_ecommerce_event_of_each_type_is_accepted(event_type):
    event = parse_message(ECO, raw(ECOMMERCE_VALID[event_type]))
    assert isinstance(event, EcommerceEvent)
    assert event.event_type == event_type
    assert event.timestamp == datetime(2026, 1, 1, 12, 30, tzinfo=timezone.utc)
    if event_type == "purchase":
        assert event.total_amount == Decimal("1999.98") and event.quantity == 2
    # round trip: what a producer writes parses back to the same event
    assert parse_message(ECO, event.model_dump_json(exclude_none=True).encode()) == event


@pytest.mark.parametrize("event_type,field", [(t, f) for t, fs in REQUIRED_BY_TYPE.items() for f in fs])
def test_field_required_by_event_type_missing_is_rejected(event_type, field):
    reason = rejected(ECO, without(ECOMMERCE_VALID[event_type], field))
    assert f"{event_type} requires" in reason and field in reason


@pytest.mark.parametrize("event_type", sorted(ECOMMERCE_VALID))
@pytest.mark.parametrize("field", COMMON_REQUIRED)
def test_common_field_missing_is_rejected(event_type, field):
    reason = rejected(ECO, without(ECOMMERCE_VALID[event_type], field))
    assert field in reason and "required" in reason.lower()


def test_purchase_missing_several_fields_names_them_all():
    event = without(without(ECOMMERCE_VALID["purchase"], "quantity"), "payment_method")
    reason = rejected(ECO, event)
    assert "quantity" in reason and "payment_method" in reason


@pytest.mark.parametrize("field,value,where", [
    ("event_id", "not-a-uuid", "event_id"),
    ("event_id", 12345, "event_id"),
    ("event_type", "checkout", "event_type"),
    ("timestamp", "yesterday", "timestamp"),
    ("timestamp", 1767270600, "timestamp"),  # epoch seconds are not ISO-8601 (strict)
    ("user_id", 42, "user_id"),
    ("user_id", "", "user_id"),
    ("quantity", "2", "quantity"),
    ("quantity", 0, "quantity"),
    ("quantity", 2.5, "quantity"),
    ("total_amount", "lots", "total_amount"),
    ("total_amount", [1999.98], "total_amount"),
    ("total_amount", -1, "total_amount"),
    ("payment_method", None, "purchase requires payment_method"),
    ("product", "PROD00001", "product"),
])
def test_wrong_types_and_values_are_rejected(field, value, where):
    reason = rejected(ECO, {**ECOMMERCE_VALID["purchase"], field: value})
    assert where in reason


def test_bad_uuid_reason_is_readable():
    reason = rejected(ECO, {**ECOMMERCE_VALID["search"], "event_id": "1234-zz"})
    assert reason.startswith("event_id:") and "uuid" in reason.lower()


@pytest.mark.parametrize("price", [-0.01, -999, "NaN"])
def test_negative_or_invalid_product_price_is_rejected(price):
    reason = rejected(ECO, {**ECOMMERCE_VALID["page_view"], "product": {**PRODUCT, "price": price}})
    assert "product.price" in reason


def test_negative_money_reason_says_so():
    reason = rejected(ECO, {**ECOMMERCE_VALID["purchase"], "total_amount": -5.0})
    assert "total_amount" in reason and "negative" in reason


@pytest.mark.parametrize("field", ["id", "name", "category", "price"])
def test_product_missing_field_is_rejected(field):
    reason = rejected(ECO, {**ECOMMERCE_VALID["add_to_cart"], "product": without(PRODUCT, field)})
    assert f"product.{field}" in reason


def test_naive_timestamp_means_utc_and_offsets_are_normalised():
    naive = parse_message(ECO, raw({**ECOMMERCE_VALID["search"], "timestamp": "2026-01-01T12:30:00"}))
    assert naive.timestamp == datetime(2026, 1, 1, 12, 30, tzinfo=timezone.utc)
    assert naive.timestamp.utcoffset().total_seconds() == 0
    offset = parse_message(ECO, raw({**ECOMMERCE_VALID["search"], "timestamp": "2026-01-01T09:30:00-03:00"}))
    assert offset.timestamp == naive.timestamp and offset.timestamp.tzinfo == timezone.utc
    assert '"timestamp":"2026-01-01T12:30:00Z"' in offset.model_dump_json()


@pytest.mark.parametrize("value,expected", [
    (19.999, "20.00"), (0.005, "0.01"), (10.004, "10.00"), (1, "1.00"), (12.5, "12.50"), (0, "0.00")])
def test_money_is_rounded_half_up_to_two_decimals(value, expected):
    event = parse_message(ECO, raw({**ECOMMERCE_VALID["page_view"], "product": {**PRODUCT, "price": value}}))
    assert event.product.price == Decimal(expected)
    assert event.product.price.as_tuple().exponent == -2


def test_money_as_numeric_string_is_accepted_as_documented():
    event = parse_message(ECO, raw({**ECOMMERCE_VALID["purchase"], "total_amount": "1999.98"}))
    assert event.total_amount == Decimal("1999.98")


def test_extra_fields_are_ignored():
    event = parse_message(ECO, raw({**ECOMMERCE_VALID["search"], "referrer": "ads"}))
    assert not hasattr(event, "referrer")


# --------------------------------------------------------------------------- raw-bytes problems


@pytest.mark.parametrize("topic", sorted(TOPICS))
@pytest.mark.parametrize("payload,expected", [
    (b"", "empty message"),
    (None, "empty message"),
    (b"\xff\xfe{\"event_id\": 1}", "not UTF-8"),
    (b"{\"caf\xe9\": 1}", "not UTF-8"),
    (b"this is not json", "JSON"),
    (b"{\"event_id\": ", "JSON"),
    (b"[1, 2, 3]", "message"),
    (b"42", "message"),
])
def test_empty_non_utf8_and_non_json_are_rejected(topic, payload, expected):
    reason = rejected(topic, payload)
    assert expected.lower() in reason.lower()


def test_unknown_topic_is_rejected():
    assert "unknown topic" in rejected("nope.events", raw(ECOMMERCE_VALID["search"]))


def test_utf8_text_is_accepted():
    event = parse_message(ECO, raw({**ECOMMERCE_VALID["search"], "search_query": "café açaí 東京"}))
    assert event.search_query == "café açaí 東京"


# --------------------------------------------------------------------------- restaurant


def test_valid_restaurant_order_is_accepted():
    order = parse_message(REST, raw(ORDER_VALID))
    assert isinstance(order, RestaurantOrder)
    assert order.total_amount == Decimal("200.50")
    assert [i.line_total for i in order.items] == [Decimal("178.00"), Decimal("22.50")]
    assert parse_message(REST, order.model_dump_json(exclude_none=True).encode()) == order


@pytest.mark.parametrize("channel", ["takeaway", "delivery"])
def test_takeaway_and_delivery_without_table_are_accepted(channel):
    order = parse_message(REST, raw({**without(ORDER_VALID, "table_number"), "channel": channel}))
    assert order.table_number is None and order.channel == channel
    order = parse_message(REST, raw({**ORDER_VALID, "table_number": None, "channel": channel}))
    assert order.table_number is None


def test_dine_in_without_table_is_accepted():
    assert parse_message(REST, raw(without(ORDER_VALID, "table_number"))).table_number is None


@pytest.mark.parametrize("channel", ["takeaway", "delivery"])
def test_table_number_on_takeaway_or_delivery_is_rejected(channel):
    reason = rejected(REST, {**ORDER_VALID, "channel": channel})
    assert "table_number must be null unless channel is dine_in" in reason


@pytest.mark.parametrize("field", ORDER_REQUIRED)
def test_order_missing_required_field_is_rejected(field):
    reason = rejected(REST, without(ORDER_VALID, field))
    assert field in reason and "required" in reason.lower()


@pytest.mark.parametrize("field", ["item_id", "name", "category", "quantity", "unit_price"])
def test_order_item_missing_field_is_rejected(field):
    items = [without(ORDER_VALID["items"][0], field), ORDER_VALID["items"][1]]
    reason = rejected(REST, {**ORDER_VALID, "items": items})
    assert f"items.0.{field}" in reason


@pytest.mark.parametrize("total", [200.49, 200.51, 0, 178.0])
def test_total_mismatch_is_rejected(total):
    reason = rejected(REST, {**ORDER_VALID, "total_amount": total})
    assert "total_amount" in reason and "sum of items 200.50" in reason


def test_total_matches_after_rounding_line_items():
    items = [{"item_id": "I1", "name": "Tea", "category": "Drinks", "quantity": 3, "unit_price": 3.335}]
    order = parse_message(REST, raw({**ORDER_VALID, "items": items, "total_amount": 10.02}))  # 3.34 * 3
    assert order.items[0].unit_price == Decimal("3.34") and order.total_amount == Decimal("10.02")


@pytest.mark.parametrize("patch,where", [
    ({"order_id": "ORDER-1"}, "order_id"),
    ({"channel": "drive_thru"}, "channel"),
    ({"table_number": "12"}, "table_number"),
    ({"table_number": 0}, "table_number"),
    ({"items": []}, "items"),
    ({"items": "ITEM007"}, "items"),
    ({"total_amount": -200.5}, "total_amount"),
    ({"total_amount": "two hundred"}, "total_amount"),
    ({"timestamp": "19:05"}, "timestamp"),
    ({"restaurant_id": ""}, "restaurant_id"),
])
def test_order_wrong_types_and_values_are_rejected(patch, where):
    assert where in rejected(REST, {**ORDER_VALID, **patch})


@pytest.mark.parametrize("patch,where", [
    ({"quantity": 0}, "items.0.quantity"),
    ({"quantity": "2"}, "items.0.quantity"),
    ({"unit_price": -89.0}, "items.0.unit_price"),
])
def test_order_item_wrong_values_are_rejected(patch, where):
    items = [{**ORDER_VALID["items"][0], **patch}, ORDER_VALID["items"][1]]
    assert where in rejected(REST, {**ORDER_VALID, "items": items})


def test_negative_unit_price_reason_says_so():
    items = [{**ORDER_VALID["items"][0], "unit_price": -1}]
    assert "must not be negative" in rejected(REST, {**ORDER_VALID, "items": items, "total_amount": 0})


def test_order_naive_timestamp_means_utc():
    order = parse_message(REST, raw({**ORDER_VALID, "timestamp": "2026-01-01T19:05:00"}))
    assert order.timestamp == datetime(2026, 1, 1, 19, 5, tzinfo=timezone.utc)


def test_order_money_rounded_to_two_decimals():
    items = [{**ORDER_VALID["items"][0], "unit_price": 88.995, "quantity": 1}]
    order = parse_message(REST, raw({**ORDER_VALID, "items": items, "total_amount": 89.004}))
    assert order.items[0].unit_price == Decimal("89.00") and order.total_amount == Decimal("89.00")


def test_json_schemas_cover_every_topic():
    schemas = json_schemas()
    assert set(schemas) == set(TOPICS)
    assert "event_type" in schemas[ECO]["properties"]
    assert "items" in schemas[REST]["properties"]


# --------------------------------------------------------------------------- timestamp window


def test_timestamp_window_rejects_far_future_and_ancient_events():
    window = TimestampWindow()  # default: now + 300 s, 2000-01-01
    now = datetime.now(timezone.utc)
    for topic, valid in ((ECO, ECOMMERCE_VALID["purchase"]), (REST, ORDER_VALID)):
        for ts in ("9999-12-31T23:59:59Z", "1999-12-31T23:59:59Z", (now + timedelta(seconds=400)).isoformat()):
            with pytest.raises(ContractError, match="^timestamp outside the accepted window: "):
                parse_message(topic, raw({**valid, "timestamp": ts}), window)
        for ts in ("2000-01-01T00:00:00Z", (now + timedelta(seconds=200)).isoformat()):
            assert parse_message(topic, raw({**valid, "timestamp": ts}), window)
        # without a window only the shape is checked (the schema is unaffected)
        assert parse_message(topic, raw({**valid, "timestamp": "9999-12-31T23:59:59Z"}))


def test_timestamp_window_is_configurable_and_naive_earliest_means_utc():
    window = TimestampWindow(max_future_seconds=0, earliest=datetime(2026, 1, 1))
    assert window.earliest == datetime(2026, 1, 1, tzinfo=timezone.utc)
    now = datetime(2026, 6, 1, tzinfo=timezone.utc)
    assert window.violation(now, now=now) is None
    assert "is more than 0 s in the future" in window.violation(now + timedelta(seconds=1), now=now)
    assert window.violation(datetime(2025, 12, 31, 23, 59, tzinfo=timezone.utc), now=now) == (
        "timestamp outside the accepted window: 2025-12-31T23:59:00+00:00 is before 2026-01-01T00:00:00+00:00")
    settings = Settings(event_max_future_seconds=60, event_earliest="2010-05-01T00:00:00Z")
    assert TimestampWindow.from_settings(settings) == TimestampWindow(60, datetime(2010, 5, 1, tzinfo=timezone.utc))
    assert json_schemas()[ECO]["properties"]["timestamp"] == {"format": "date-time", "title": "Timestamp",
                                                              "type": "string"}  # the schema knows no window
