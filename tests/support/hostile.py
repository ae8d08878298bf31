"""Hostile Kafka messages as hypothesis strategies, and the oracle that says
where each message must end (the chaos campaign's test data; no tests here).

Why a module of its own: ``bench/chaos.py`` (``make chaos``) and
``tests/test_chaos.py`` draw the same messages from the same seed, and other
tests may reuse the strategies.

* :data:`STRATEGIES` maps a *kind* (NUL in the key, 2 MB value, far-future
  timestamp, conflicting re-send, ...) to a strategy of :class:`Recipe`: the
  random parts only. :func:`materialize` turns a recipe into a Kafka message
  (topic, key, value, headers), using a fresh valid message of the producer's
  simulation as its base and, for re-sends, a valid message sent earlier.
* :func:`draw_recipes` draws ``n`` recipes deterministically from a seed
  (every kind at least once when ``n`` allows), through hypothesis' own engine.
* :class:`Oracle` decides each message's fate from the contract itself
  (``parse_message``), the accepted time window, what PostgreSQL can store
  (NUL, lone surrogates, NUMERIC(12,2)) and the ids sent before: ``stored``,
  ``duplicate`` (identical re-send) or ``dead_letter``. Key and headers never
  decide the fate: a valid value with a NUL key is stored.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed as hypothesis_seed, settings as hypothesis_settings
from hypothesis import strategies as st
from pydantic import BaseModel

from salespulse.contracts import (
    ECOMMERCE_TOPIC,
    RESTAURANT_TOPIC,
    ContractError,
    EcommerceEvent,
    RestaurantOrder,
    parse_message,
)

STORED, DUPLICATE, DEAD_LETTER = "stored", "duplicate", "dead_letter"
WINDOW_REASON = "timestamp outside the accepted window"
CONFLICT_REASON = "conflicting re-send"
NEAR_LIMIT = (985_000, 999_500)  # just under the default message.max.bytes (1,000,000)
OVERSIZED = (2_000_000, 2_200_000)
MONEY_LIMIT = Decimal("10000000000")  # NUMERIC(12, 2)

SQL_SNIPPETS = ("'; DROP TABLE events; --", "\" OR 1=1 --", "1); DELETE FROM orders WHERE (1=1",
                "$$; TRUNCATE dead_letters; $$", "\\.\n\\copy events", "E'\\\\x00'", "%s%s%s", "'||pg_sleep(10)||'")
BAD_UTF8 = (b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80", b"\xe2\x82")
NAN_TOKENS = ("NaN", "-NaN", "Infinity", "-Infinity", "1e999", "-1e999", '"NaN"', '"Infinity"')

#: string fields a recipe may aim at, per topic (paths into the JSON document)
STRING_FIELDS = {
    ECOMMERCE_TOPIC.name: (("user_id",), ("session_id",), ("product", "name"), ("product", "category"),
                           ("product", "id")),
    RESTAURANT_TOPIC.name: (("restaurant_id",), ("payment_method",), ("items", 0, "name"), ("items", 0, "item_id")),
}
NUMBER_FIELDS = {
    ECOMMERCE_TOPIC.name: (("product", "price"), ("quantity",), ("total_amount",)),
    RESTAURANT_TOPIC.name: (("total_amount",), ("table_number",), ("items", 0, "quantity"), ("items", 0, "unit_price")),
}
ANY_FIELDS = {
    ECOMMERCE_TOPIC.name: (("event_id",), ("event_type",), ("timestamp",), ("user_id",), ("product",),
                           ("product", "price"), ("quantity",)),
    RESTAURANT_TOPIC.name: (("order_id",), ("timestamp",), ("channel",), ("items",), ("items", 0),
                            ("total_amount",), ("table_number",)),
}


@dataclass(frozen=True)
class Recipe:
    """The random parts of one hostile message; ``orders`` picks the topic."""

    kind: str
    orders: bool
    parts: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Message:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list | None = None


# --------------------------------------------------------------------------- strategies
_topics = st.integers(0, 3).map(lambda n: n == 0)  # one in four aims at restaurant.orders
_fraction = st.integers(0, 2**32 - 1)  # where to cut / which earlier message
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
nul_bytes = st.tuples(st.binary(max_size=16), st.binary(max_size=16)).map(lambda ab: ab[0] + b"\x00" + ab[1])
bad_utf8 = st.tuples(st.binary(max_size=8), st.sampled_from(BAD_UTF8), st.binary(max_size=8)).map(b"".join)
invalid_values = st.one_of(st.binary(max_size=64), st.sampled_from([b"x", b"{}", b"[]", b"null", b"0", b'""']),
                           st.text(max_size=40).map(str.encode))
header_keys = st.one_of(st.text(max_size=12), st.text(max_size=6).map(lambda s: s + "\x00" + s), bad_utf8)
header_values = st.one_of(st.none(), st.binary(max_size=48), nul_bytes, bad_utf8)
headers_lists = st.lists(st.tuples(header_keys, header_values), min_size=1, max_size=4)


def _recipe(kind: str, **parts) -> st.SearchStrategy[Recipe]:
    return st.builds(lambda orders, p: Recipe(kind, orders, p), _topics, st.fixed_dictionaries(parts))


def _path(kind_fields: dict) -> st.SearchStrategy[int]:
    return st.integers(0, max(len(v) for v in kind_fields.values()) - 1)


def _big(bounds: tuple[int, int]) -> st.SearchStrategy[dict]:
    shapes = st.sampled_from(["padded_valid", "long_field", "garbage"])
    return st.fixed_dictionaries({"size": st.integers(*bounds), "shape": shapes, "fill": st.integers(0, 2**31)})


STRATEGIES: dict[str, st.SearchStrategy[Recipe]] = {
    "nul_key": _recipe("nul_key", key=nul_bytes, valid_value=st.booleans(), bad=invalid_values),
    "invalid_utf8_key": _recipe("invalid_utf8_key", key=bad_utf8, valid_value=st.booleans(), bad=invalid_values),
    "hostile_headers": _recipe("hostile_headers", headers=headers_lists, valid_value=st.booleans(), bad=invalid_values),
    "nul_in_value": _recipe("nul_in_value", escaped=st.booleans(), field=_path(STRING_FIELDS), at=_fraction),
    "invalid_utf8_value": _recipe("invalid_utf8_value", bad=bad_utf8, field=_path(STRING_FIELDS)),
    "lone_surrogate": _recipe("lone_surrogate", code=st.integers(0xD800, 0xDFFF), field=_path(STRING_FIELDS)),
    "empty_value": _recipe("empty_value"),
    "none_value": _recipe("none_value"),
    "near_limit_value": st.builds(lambda o, p: Recipe("near_limit_value", o, p), _topics, _big(NEAR_LIMIT)),
    "oversized_value": st.builds(lambda o, p: Recipe("oversized_value", o, p), _topics, _big(OVERSIZED)),
    "deep_nesting": _recipe("deep_nesting", brace=st.booleans(), whole=st.booleans(),
                            depth=st.one_of(st.integers(2, 300), st.sampled_from([1_000, 10_000, 100_000]))),
    "huge_number": _recipe("huge_number", field=_path(NUMBER_FIELDS), number=st.one_of(
        st.integers(10**10, 10**400).map(str), st.floats(min_value=1e10, allow_infinity=False).map(repr))),
    "negative_number": _recipe("negative_number", field=_path(NUMBER_FIELDS), number=st.one_of(
        st.integers(max_value=-1).map(str), st.floats(max_value=-1e-9, allow_infinity=False).map(repr))),
    "nan_infinity": _recipe("nan_infinity", field=_path(NUMBER_FIELDS), token=st.sampled_from(NAN_TOKENS)),
    "wrong_type": _recipe("wrong_type", field=_path(ANY_FIELDS), replacement=json_values),
    "extra_fields": _recipe("extra_fields", extra=st.dictionaries(
        st.text(min_size=1, max_size=12).map(lambda s: "x_" + s), json_values, min_size=1, max_size=5)),
    "far_future": _recipe("far_future", when=st.one_of(
        st.just(datetime(9999, 12, 31, 23, 59, 59)),
        st.datetimes(min_value=datetime(2200, 1, 1), max_value=datetime(9999, 12, 30)))),
    "ancient": _recipe("ancient", when=st.one_of(
        st.just(datetime(1970, 1, 1)), st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(1999, 12, 30)))),
    "sql_in_strings": _recipe("sql_in_strings", field=_path(STRING_FIELDS), snippet=st.sampled_from(SQL_SNIPPETS),
                              suffix=st.text(max_size=20)),
    "garbage": _recipe("garbage", value=invalid_values),
    "conflicting_resend": _recipe("conflicting_resend", target=_fraction, mutation=st.integers(0, 2),
                                  text=st.text(st.characters(codec="ascii", categories=["L", "N"]),
                                               min_size=1, max_size=20)),
    "exact_resend": _recipe("exact_resend", target=_fraction),
}
#: relative weights (the big ones are rare: each carries 1-2 MB through broker and database)
WEIGHTS = {kind: 10 for kind in STRATEGIES} | {"near_limit_value": 0.3, "oversized_value": 0.3}
KINDS = tuple(STRATEGIES)


def draw_recipes(n: int, seed: int) -> list[Recipe]:
    """``n`` recipes, deterministic for a seed: how many of each kind by
    :data:`WEIGHTS` (each kind at least once if ``n`` allows), each kind's
    recipes drawn through hypothesis' engine, then shuffled."""
    rng = random.Random(seed)
    kinds = list(KINDS)[:n] + rng.choices(KINDS, weights=[WEIGHTS[k] for k in KINDS], k=max(0, n - len(KINDS)))
    out: list[Recipe] = []
    for i, kind in enumerate(KINDS):
        count = kinds.count(kind)
        if count:
            drawn = examples(STRATEGIES[kind], count, seed * 1000 + i)
            out += [drawn[j % len(drawn)] for j in range(count)]  # a tiny space (empty value) repeats
    rng.shuffle(out)
    return out


def examples(strategy: st.SearchStrategy, n: int, seed: int) -> list:
    """Up to ``n`` examples of a strategy, deterministic for a seed (fewer if
    hypothesis exhausts a small space). Unlike ``strategy.example()``, seeded."""
    out: list = []

    @hypothesis_seed(seed)
    @hypothesis_settings(max_examples=n, database=None, deadline=None, phases=(Phase.generate,),
                         suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(example):
        if len(out) < n:
            out.append(example)

    collect()
    return out


# --------------------------------------------------------------------------- materialize
def _get(doc: Any, path: tuple) -> Any:
    for p in path:
        doc = doc[p]
    return doc


def _set(doc: Any, path: tuple, value: Any) -> None:
    _get(doc, path[:-1])[path[-1]] = value


def _pick(fields: dict, topic: str, index: int, doc: dict) -> tuple:
    """The ``index``-th field path of this topic that the document has."""
    options = [p for p in fields[topic] if _has(doc, p)] or [fields[topic][0]]
    return options[index % len(options)]


def _has(doc: Any, path: tuple) -> bool:
    try:
        _get(doc, path)
        return True
    except (KeyError, IndexError, TypeError):
        return False


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


MARK = "\u2603MARK\u2603"


def _with_raw(doc: dict, path: tuple, raw: bytes) -> bytes:
    """The document with the field at ``path`` replaced by raw bytes (a token
    JSON cannot express: NaN, a bad UTF-8 sequence, a 400-digit number)."""
    doc = json.loads(json.dumps(doc))
    if not _has(doc, path[:-1]):  # only product.* can be missing (a search event)
        doc[path[0]] = {}
    _set(doc, path, MARK)
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode().replace(
        json.dumps(MARK, ensure_ascii=False).encode(), raw)


def _filler(size: int, seed: int, text: bool) -> bytes:
    data = random.Random(seed).randbytes(size)
    return data.hex().encode()[:size] if text else data


def _big_value(doc: dict, topic: str, parts: dict) -> bytes:
    size, shape = parts["size"], parts["shape"]
    if shape == "garbage":
        return _filler(size, parts["fill"], text=False)
    base = _dumps(doc)
    pad = max(size - len(base) - 20, 0)
    filler = _filler(pad, parts["fill"], text=True).decode()
    doc = json.loads(base)
    if shape == "padded_valid":
        doc["x_padding"] = filler  # an extra field: valid by the contract
    else:
        doc[STRING_FIELDS[topic][0][0]] = filler  # far beyond max_length
    return _dumps(doc)


def materialize(recipe: Recipe, base: Message, sent: list[Message]) -> Message:
    """The Kafka message of a recipe. ``base`` is a fresh valid message of the
    recipe's topic (its id is used nowhere else); ``sent`` the valid messages of
    that topic sent so far (re-sends pick one; same key, so same partition)."""
    p, topic, key = recipe.parts, base.topic, base.key
    doc = json.loads(base.value)
    kind = recipe.kind
    if kind in ("nul_key", "invalid_utf8_key", "hostile_headers"):
        value = base.value if p["valid_value"] else p["bad"]
        return Message(topic, p.get("key", key), value, p.get("headers"))
    if kind in ("exact_resend", "conflicting_resend"):
        if not sent:  # nothing to re-send yet: send the base itself
            return base
        target = sent[p["target"] % len(sent)]
        if kind == "exact_resend":
            return target
        return Message(topic, target.key, _conflict(json.loads(target.value), topic, p))
    if kind == "nul_in_value":
        path = _pick(STRING_FIELDS, topic, p["field"], doc)
        if p["escaped"]:
            s = str(_get(doc, path))
            cut = p["at"] % (len(s) + 1)
            _set(doc, path, s[:cut] + "\x00" + s[cut:])
            return Message(topic, key, _dumps(doc))
        raw = base.value
        cut = p["at"] % (len(raw) + 1)
        return Message(topic, key, raw[:cut] + b"\x00" + raw[cut:])
    if kind == "invalid_utf8_value":
        path = _pick(STRING_FIELDS, topic, p["field"], doc)
        return Message(topic, key, _with_raw(doc, path, b'"' + p["bad"] + b'"'))
    if kind == "lone_surrogate":
        path = _pick(STRING_FIELDS, topic, p["field"], doc)
        return Message(topic, key, _with_raw(doc, path, b'"ab\\u%04x"' % p["code"]))
    if kind == "empty_value":
        return Message(topic, key, b"")
    if kind == "none_value":
        return Message(topic, key, None)
    if kind in ("near_limit_value", "oversized_value"):
        return Message(topic, key, _big_value(doc, topic, p))
    if kind == "deep_nesting":
        d = p["depth"]
        opener, closer = (b'{"a":', b"}") if p["brace"] else (b"[", b"]")
        nested = opener * d + b"1" + closer * d
        if p["whole"]:
            return Message(topic, key, nested)
        where = ("product",) if topic == ECOMMERCE_TOPIC.name else ("items",)
        return Message(topic, key, _with_raw(doc, where, nested))
    if kind in ("huge_number", "negative_number", "nan_infinity"):
        path = _pick(NUMBER_FIELDS, topic, p["field"], doc)
        return Message(topic, key, _with_raw(doc, path, (p.get("number") or p.get("token")).encode()))
    if kind == "wrong_type":
        path = _pick(ANY_FIELDS, topic, p["field"], doc)
        _set(doc, path, p["replacement"])
        return Message(topic, key, _dumps(doc))
    if kind == "extra_fields":
        doc.update(p["extra"])
        return Message(topic, key, _dumps(doc))
    if kind in ("far_future", "ancient"):
        doc["timestamp"] = p["when"].replace(tzinfo=timezone.utc).isoformat()
        return Message(topic, key, _dumps(doc))
    if kind == "sql_in_strings":
        path = _pick(STRING_FIELDS, topic, p["field"], doc)
        _set(doc, path, (p["snippet"] + p["suffix"])[:200])
        return Message(topic, key, _dumps(doc))
    if kind == "garbage":
        return Message(topic, key, p["value"])
    raise ValueError(f"unknown kind {kind!r}")


def _conflict(doc: dict, topic: str, p: dict) -> bytes:
    """The same id with other content in a column the row keeps."""
    text = "chaos-" + p["text"]
    if topic == RESTAURANT_TOPIC.name:
        if p["mutation"] == 0:
            doc["payment_method"] = text
        elif p["mutation"] == 1:
            doc["restaurant_id"] = text
        else:  # one more line: item_count and total change with it
            doc["items"].append({"item_id": text, "name": "Chaos dish", "category": "Chaos", "quantity": 1,
                                 "unit_price": 1.25})
            doc["total_amount"] = float(Decimal(str(doc["total_amount"])) + Decimal("1.25"))
    elif p["mutation"] == 2 and doc["event_type"] in ("page_view", "add_to_cart", "remove_from_cart"):
        doc["event_type"] = "page_view" if doc["event_type"] != "page_view" else "add_to_cart"
    else:
        doc["user_id" if p["mutation"] == 0 else "session_id"] = text
    return _dumps(doc)


# --------------------------------------------------------------------------- oracle
@dataclass(frozen=True)
class Fate:
    fate: str  # STORED / DUPLICATE / DEAD_LETTER
    hint: str | None = None  # text the dead letter's reason must contain
    model: EcommerceEvent | RestaurantOrder | None = None  # the parsed value, if valid by the contract


class Oracle:
    """Where each message must end, fed in sending order (per partition that is
    consuming order; re-sends share their original's key, hence partition)."""

    def __init__(self, max_future_seconds: int, earliest: datetime):
        self.max_future = timedelta(seconds=max_future_seconds)
        self.earliest = earliest
        self.first: dict[tuple[str, str], Any] = {}  # (topic, id) -> model of the stored message

    def fate(self, topic: str, value: bytes | None) -> Fate:
        try:
            model = parse_message(topic, value)
        except ContractError:  # anything else is a contract bug: a refusal must name its field and rule
            return Fate(DEAD_LETTER)
        ts = model.timestamp
        if ts > datetime.now(timezone.utc) + self.max_future or ts < self.earliest:
            return Fate(DEAD_LETTER, WINDOW_REASON, model)
        if unstorable(model):
            return Fate(DEAD_LETTER, None, model)
        ident = (topic, str(model_id(model)))
        first = self.first.get(ident)
        if first is None:
            self.first[ident] = model
            return Fate(STORED, None, model)
        if first == model:
            return Fate(DUPLICATE, None, model)
        return Fate(DEAD_LETTER, CONFLICT_REASON, model)


def model_id(model) -> Any:
    return model.event_id if isinstance(model, EcommerceEvent) else model.order_id


def unstorable(model) -> str | None:
    """Why PostgreSQL cannot hold this contract-valid model (NUL or a lone
    surrogate in a text, money beyond NUMERIC(12,2)), or None."""
    def texts(value):
        if isinstance(value, str):
            yield value
        elif isinstance(value, list | tuple):
            for item in value:
                yield from texts(item)
        elif isinstance(value, BaseModel):
            for _name, item in value:
                yield from texts(item)

    for s in texts(model):
        if "\x00" in s:
            return "NUL in a text"
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            return "lone surrogate in a text"
    amounts = []
    if isinstance(model, EcommerceEvent):
        amounts = [model.total_amount, model.product.price if model.product else None]
    else:
        amounts = [model.total_amount] + [i.unit_price for i in model.items] + [i.line_total for i in model.items]
    if any(a is not None and abs(a) >= MONEY_LIMIT for a in amounts):
        return "money beyond NUMERIC(12,2)"
    return None
