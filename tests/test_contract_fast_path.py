"""The contracts' fast path (salespulse.contract_fast_path) against the models
(salespulse.contracts.parse_message), and the content hash the consumer stores.

* On every message, valid or hostile, ``parse_values`` raises exactly when
  ``parse_message`` does, with the same reason, and otherwise returns the same
  values; the consumer's COPY rows and content hashes are the same either way.
* The fast path really is taken for what the producer sends.
* The content hash of a row never changes (rows stored by earlier versions
  must still compare equal): pinned for a few messages.
Needs no broker and no database."""

from __future__ import annotations

import json
import random
import re
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, seed, settings as hsettings, strategies as st
from pydantic import BaseModel, BeforeValidator, ConfigDict
from typing import Annotated

from salespulse.contract_fast_path import Values, _shape, fast_values, parse_values
from salespulse.contracts import (
    ECOMMERCE_TOPIC,
    RESTAURANT_TOPIC,
    ContractError,
    TimestampWindow,
    parse_message,
)
from services.consumer.messages import build_row
from services.producer.simulation import EcommerceSimulation, RestaurantSimulation
from tests.support.consumer import ecommerce_event, restaurant_order
from tests.support.hostile import KINDS, Message, draw_recipes, materialize

EC, RO = ECOMMERCE_TOPIC.name, RESTAURANT_TOPIC.name
WINDOW = TimestampWindow()


def outcome(parse, topic: str, value, window=None):
    try:
        return "ok", parse(topic, value, window)
    except ContractError as exc:
        return "rejected", exc.reason
    except Exception as exc:  # e.g. decimal.InvalidOperation for a huge amount: the consumer's parse words it
        return "rejected", f"{type(exc).__name__}: {exc}"


def plain(value):
    """A model's or a view's values as plain data (UUIDs as text)."""
    if isinstance(value, (BaseModel, Values)):
        names = type(value).model_fields if isinstance(value, BaseModel) else value.contract.model_fields
        return {name: plain(getattr(value, name)) for name in names}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def assert_same(topic: str, value) -> str:
    """Both paths agree on ``value`` (with and without the window); returns the outcome."""
    for window in (None, WINDOW):
        fast, slow = outcome(parse_values, topic, value, window), outcome(parse_message, topic, value, window)
        assert fast[0] == slow[0], (value, fast, slow)
        if fast[0] == "rejected":
            assert fast[1] == slow[1], value
            continue
        assert plain(fast[1]) == plain(slow[1]), value
        assert type(plain(fast[1])["timestamp"]) is datetime
        try:
            slow_row = build_row(0, slow[1])
        except Exception as exc:  # unstorable: both ways, the same reason
            with pytest.raises(type(exc), match=None) as info:
                build_row(0, fast[1])
            assert str(info.value) == str(exc)
            continue
        fast_row = build_row(0, fast[1])
        assert (fast_row.line, fast_row.items, fast_row.digest, fast_row.ident) == (
            slow_row.line, slow_row.items, slow_row.digest, slow_row.ident), value
    return fast[0]


def producer_messages(n: int) -> list[tuple[str, bytes]]:
    eco, rest = EcommerceSimulation(seed=5), RestaurantSimulation(seed=5)
    return [(EC, eco.next_message()[1]) for _ in range(n)] + [(RO, rest.next_message()[1]) for _ in range(n // 3)]


def test_what_the_producer_sends_takes_the_fast_path_and_equals_the_model():
    for topic, value in producer_messages(600):
        assert fast_values(topic, value) is not None, value
        assert assert_same(topic, value) == "ok"


def test_hostile_messages_get_the_same_answer_and_reason_both_ways():
    eco, rest = EcommerceSimulation(seed=9), RestaurantSimulation(seed=9)
    sent = {EC: [], RO: []}
    seen = {"ok": 0, "rejected": 0}
    kinds = set()
    for recipe in draw_recipes(1500, seed=11):
        topic, sim = (RO, rest) if recipe.orders else (EC, eco)
        key, value = sim.next_message()
        msg = materialize(recipe, Message(topic, key.encode(), value), sent[topic])
        sent[topic].append(Message(topic, key.encode(), value))
        seen[assert_same(msg.topic, msg.value)] += 1
        kinds.add(recipe.kind)
    assert kinds == set(KINDS) and seen["ok"] > 100 and seen["rejected"] > 500, seen


#: a reason names the field (``path: rule``) or, for the message as a whole, says what is wrong with it
FIELD_REASON = re.compile(r"^(?:[A-Za-z_][\w]*(?:\.\w+)*: \S|empty message$|not UTF-8: |unknown topic |"
                          r"timestamp outside the accepted window: )")


def test_hostile_messages_are_refused_with_the_field_and_the_rule():
    """Never an internal exception: every refusal is a ContractError whose
    reason names the field and the rule (the consumer stores it with the dead letter)."""
    eco, rest = EcommerceSimulation(seed=12), RestaurantSimulation(seed=12)
    sent = {EC: [], RO: []}
    refused = 0
    for recipe in draw_recipes(1500, seed=12):
        topic, sim = (RO, rest) if recipe.orders else (EC, eco)
        key, value = sim.next_message()
        msg = materialize(recipe, Message(topic, key.encode(), value), sent[topic])
        sent[topic].append(Message(topic, key.encode(), value))
        for parse in (parse_values, parse_message):
            try:
                parse(msg.topic, msg.value, WINDOW)
            except ContractError as exc:
                assert FIELD_REASON.match(exc.reason), (recipe.kind, exc.reason)
                refused += 1
    assert refused > 500


@pytest.mark.parametrize("amount", ["1e50", "1E+400", "123456789012345678901234567890.5", "1e25", "-1e50"])
def test_an_amount_too_large_to_round_names_its_field(amount):
    event, order = ecommerce_event(3, event_type="purchase"), restaurant_order(1)
    cases = [(EC, "total_amount", {**event, "total_amount": "AMOUNT"}),
             (EC, "product.price", {**event, "product": {**event["product"], "price": "AMOUNT"}}),
             (RO, "items.0.unit_price", {**order, "items": [{**order["items"][0], "unit_price": "AMOUNT"}]})]
    for topic, field, doc in cases:
        raw = json.dumps(doc).replace('"AMOUNT"', amount).encode()
        for parse in (parse_values, parse_message):
            with pytest.raises(ContractError) as info:
                parse(topic, raw, WINDOW)
            assert info.value.reason.startswith(f"{field}: "), info.value.reason
            assert "InvalidOperation" not in info.value.reason


# values a field may be swapped for: right, wrong and borderline ones
ODD_VALUES = [
    None, True, 0, 1, -1, 2.0, 2.5, 10_000, 10_001, 1000, 1001, 10 ** 12, -0.0, 0.005, 19.999, "1.5", "abc", "",
    "x" * 200, "x" * 201, "NaN", "1e3", [], {}, [1], {"id": "P"},
    "7B0D6A3E-2A52-4D7C-9A55-1F1A0C3D9E01", "7b0d6a3e2a524d7c9a551f1a0c3d9e01", "{7b0d6a3e-2a52-4d7c-9a55-1f1a0c3d9e01}",
    "urn:uuid:7b0d6a3e-2a52-4d7c-9a55-1f1a0c3d9e01", "00000000-0000-0000-0000-000000000000",
    "7b0d6a3e-2a52-4d7c-9a55-1f1a0c3d9e01\n", "2026-01-01T12:30:00Z", "2026-01-01T12:30:00", "2026-01-01T12:30:00.5+05:30",
    "2026-02-29T00:00:00Z", "2024-02-29T23:59:60Z", "2026-01-01T24:00:00Z", "2026-01-01T12:30:00.1234567Z",
    "2026-01-01 12:30:00Z", "2026-01-01", "9999-12-31T23:59:59Z", "1999-12-31T23:59:59+00:00", 1767270600,
    "page_view", "purchase", "search", "add_to_cart", "dine_in", "takeaway", "café\t\\ \u6771\n", "nul\u0000",
    # amounts no decimal context rounds to cents (once an "unexpected" InvalidOperation) and their neighbours
    1e50, -1e50, 1e25, 9.99e24, 10 ** 30, 1e-50, "=HYPERLINK(\"x\")", "+1", "@SUM(A1)",
]
ECO_FIELDS = ["event_id", "event_type", "timestamp", "user_id", "session_id", "product", "quantity", "total_amount",
              "payment_method", "search_query"]
PRODUCT_FIELDS = ["id", "name", "category", "price"]
ORDER_FIELDS = ["order_id", "timestamp", "restaurant_id", "table_number", "channel", "items", "total_amount",
                "payment_method"]
ITEM_FIELDS = ["item_id", "name", "category", "quantity", "unit_price"]
edits = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 99), st.sampled_from(ODD_VALUES)), min_size=1,
                 max_size=4)


def mutate(doc: dict, topic: str, changes) -> bytes:
    top, nested_name, nested = (ECO_FIELDS, "product", PRODUCT_FIELDS) if topic == EC else (
        ORDER_FIELDS, "items", ITEM_FIELDS)
    for where, which, value in changes:
        if where == 0:  # a top-level field
            doc[top[which % len(top)]] = value
        elif where == 1:  # a field of the product / first item
            target = doc.get(nested_name)
            target = target[0] if isinstance(target, list) and target else target
            if isinstance(target, dict):
                target[nested[which % len(nested)]] = value
        elif where == 2:  # a field left out
            doc.pop(top[which % len(top)], None)
        else:  # the total made to match (or not) the items, for orders; a type swap for events
            doc["event_type" if topic == EC else "total_amount"] = value
    text = json.dumps(doc)
    if changes[0][1] % 7 == 0:  # a duplicate key: the later one counts, both ways
        text = text[:-1] + ', "' + top[changes[0][1] % len(top)] + '": ' + json.dumps(changes[0][2]) + "}"
    return text.encode()


@pytest.mark.property
@seed(20261206)
@hsettings(deadline=None, suppress_health_check=list(HealthCheck))
@given(orders=st.booleans(), pick=st.integers(0, 999), changes=edits)
def test_edited_messages_get_the_same_answer_and_reason_both_ways(orders, pick, changes):
    rng = random.Random(pick)
    topic = RO if orders else EC
    sim = RestaurantSimulation(seed=pick) if orders else EcommerceSimulation(seed=pick)
    for _ in range(rng.randint(0, 5)):
        sim.next_message()
    doc = json.loads(sim.next_message()[1])
    assert_same(topic, mutate(doc, topic, changes))


def test_other_uuid_spellings_take_the_model_path_and_are_accepted():
    doc = json.loads(EcommerceSimulation(seed=1).next_message()[1])
    for spelling in (doc["event_id"].upper(), doc["event_id"].replace("-", "")):
        value = json.dumps({**doc, "event_id": spelling}).encode()
        assert fast_values(EC, value) is None
        assert str(parse_values(EC, value).event_id) == doc["event_id"]


def test_a_contract_the_fast_path_cannot_follow_fails_at_once():
    class Shouty(BaseModel):
        model_config = ConfigDict(strict=True, extra="ignore", frozen=True)
        name: Annotated[str, BeforeValidator(str.upper)]

    with pytest.raises(TypeError, match="not supported"):
        _shape(Shouty)


def test_values_are_read_only():
    value = parse_values(EC, producer_messages(1)[0][1])
    assert isinstance(value, Values)
    with pytest.raises(AttributeError):
        value.user_id = "someone else"


# --------------------------------------------------------------------------- the content hash
E = {"event_id": "7b0d6a3e-2a52-4d7c-9a55-1f1a0c3d9e01", "timestamp": "2026-01-01T12:30:00Z",
     "user_id": "USER000001", "session_id": "5f6c2a1e-8f0e-4b9b-8c7e-2d7e1f0a9b11"}
P = {"id": "PROD00001", "name": "Acme Red Laptop", "category": "Electronics", "price": 999.99}
PINNED = [  # (topic, message, content hash) as stored since content hashes exist
    (EC, {**E, "event_type": "page_view", "product": P}, "c0c8956527331011c5e3d2321edae605"),
    (EC, {**E, "event_type": "purchase", "product": {**P, "price": 19.999}, "quantity": 2, "total_amount": "39.995",
          "payment_method": "credit\tcard"}, "89fab69cc58b0f8696dcb4f257d9eb4c"),
    (EC, {**E, "event_type": "search", "search_query": "caf\u00e9 a\\b\nc\rd \u6771\u4eac",
          "timestamp": "2026-01-01T09:30:00.123456-03:00"}, "0090e6369a208e2e5b96a7dacdf65fd5"),
    (EC, {**E, "event_type": "add_to_cart", "product": {**P, "price": 0.005}, "quantity": 3,
          "timestamp": "2026-01-01T12:30:00", "event_id": "7B0D6A3E-2A52-4D7C-9A55-1F1A0C3D9E01"},
     "e68e29fc4c0cc32bc111cf3dcf0fbccd"),
    (EC, {**E, "event_type": "remove_from_cart", "product": {**P, "price": 0}, "timestamp": "2026-01-01T12:30:00.5Z",
          "total_amount": 12}, "813c9f42537268ef3a2bc5cbafb20191"),
    (RO, {"order_id": "0be6afd3-6e11-404d-bf97-7767ced7ceee", "timestamp": "2026-01-01T19:05:00Z",
          "restaurant_id": "REST001", "table_number": 12, "channel": "dine_in",
          "items": [{"item_id": "ITEM007", "name": "Beef\tSteak", "category": "Mains", "quantity": 2,
                     "unit_price": 89.0},
                    {"item_id": "ITEM030", "name": "Soda", "category": "Drinks", "quantity": 3, "unit_price": 7.5}],
          "total_amount": 200.5, "payment_method": "pix"}, "0ae6fb9a32ed2a2789c17654ea5fa1a7"),
    (RO, {"order_id": "0be6afd3-6e11-404d-bf97-7767ced7cee0", "timestamp": "2026-01-01T19:05:00+02:00",
          "restaurant_id": "REST001", "channel": "takeaway",
          "items": [{"item_id": "I1", "name": "Tea", "category": "Drinks", "quantity": 3, "unit_price": 3.335}],
          "total_amount": 10.02, "payment_method": "pix"}, "2023b0cab95357fd05188488d54a4e0f"),
]


@pytest.mark.parametrize("topic,message,digest", PINNED)
def test_the_content_hash_of_a_row_never_changes(topic, message, digest):
    value = json.dumps(message).encode()
    assert build_row(0, parse_message(topic, value)).digest == digest
    assert build_row(0, parse_values(topic, value)).digest == digest
    assert build_row(0, parse_values(topic, value)).line.endswith(b"\t\\\\x" + digest.encode() + b"\t\\N\t\\N")
    assert build_row(0, parse_values(topic, value), 4, 123).line.endswith(b"\t\\\\x" + digest.encode() + b"\t4\t123")


def test_money_and_time_are_normalised_the_same_way_both_ways():
    now = datetime.now(timezone.utc).replace(microsecond=0)
    for ts in (now.isoformat(), now.strftime("%Y-%m-%dT%H:%M:%SZ"), now.strftime("%Y-%m-%dT%H:%M:%S")):
        for price in (0, 0.005, 0.015, 19.999, 1e9, "12.345", Decimal("0.1") * 3):
            doc = {**E, "timestamp": ts, "event_type": "page_view", "product": {**P, "price": float(price)
                                                                                if isinstance(price, Decimal)
                                                                                else price}}
            assert assert_same(EC, json.dumps(doc).encode()) == "ok"


def test_the_window_decides_as_the_exact_comparison_does():
    window = TimestampWindow(max_future_seconds=300, earliest=datetime(2000, 1, 1))
    earliest = window.earliest
    for ts, inside in ((earliest, True), (earliest.replace(microsecond=1), True),
                       (datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc), False),
                       (datetime(2026, 1, 1, tzinfo=timezone.utc), True),
                       (datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc), False)):
        assert (window.violation(ts) is None) == inside, ts
    now = datetime.now(timezone.utc)
    for seconds, inside in ((-1, True), (0, True), (250, True), (350, False), (10 ** 6, False)):
        assert (window.violation(now + timedelta(seconds=seconds)) is None) == inside, seconds
