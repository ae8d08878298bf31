"""Seeded, Faker-based simulations of the two SalesPulse domains.

* :class:`EcommerceSimulation` keeps user sessions in memory and moves them
  through search → page_view → add/remove cart → purchase. Event types are
  drawn with fixed weights (≈60% page_view, 15% search, 13% add_to_cart,
  5% remove_from_cart, 7% purchase); a purchase always buys a line that the
  same session put in its cart (quantity = the carted quantity).
* :class:`RestaurantSimulation` produces orders of 1–6 menu items with a
  channel (``table_number`` only for ``dine_in``) and a payment method.

Reproducibility: every random draw comes from a seeded ``random.Random``
(uuids included — never ``uuid4()``), so the same seed yields the same
stream. Timestamps are the wall clock unless a fixed ``start`` is given, in
which case a simulated clock advances from it by seeded random gaps (mean
0.5 s for e-commerce, 10 s for restaurant, with lunch/dinner peaks).

Speed: Faker is only used once, at import time, to build fixed pools (brand
names, colours, search terms) with a constant seed, so the catalogue and menu
— product ids, names, prices — are the same in every process and run.
:meth:`next_message` is the fast path used by the producer: it renders the
JSON directly, byte-for-byte what ``model.model_dump_json(exclude_none=True)``
gives for the model :meth:`next_event`/:meth:`next_order` would return for
the same draw (the tests check this equivalence over thousands of events).
"""

from __future__ import annotations

import json
import random
import re
from bisect import bisect_right
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from itertools import accumulate
from uuid import UUID

from faker import Faker

from salespulse.contracts import (
    ECOMMERCE_TOPIC,
    RESTAURANT_TOPIC,
    EcommerceEvent,
    OrderItem,
    Product,
    RestaurantOrder,
)

CENT = Decimal("0.01")
CATALOGUE_SEED = 20_240_101  # fixed: ids, names and prices are the same everywhere

#: Event-type weights of the e-commerce stream (sum 1.0).
EVENT_WEIGHTS: dict[str, float] = {
    "page_view": 0.60,
    "search": 0.15,
    "add_to_cart": 0.13,
    "remove_from_cart": 0.05,
    "purchase": 0.07,
}
ECOMMERCE_PAYMENTS = {"credit_card": 0.55, "debit_card": 0.2, "pix": 0.15, "paypal": 0.07, "boleto": 0.03}
RESTAURANT_PAYMENTS = {"credit_card": 0.4, "debit_card": 0.25, "pix": 0.2, "cash": 0.1, "meal_voucher": 0.05}
CHANNELS = {"dine_in": 0.5, "takeaway": 0.2, "delivery": 0.3}

#: category → (nouns, (min price, max price))
CATEGORIES: dict[str, tuple[tuple[str, ...], tuple[float, float]]] = {
    "Electronics": (("Headphones", "Smartphone", "Laptop", "Monitor", "Keyboard", "Speaker", "Tablet",
                     "Smartwatch", "Camera", "Charger"), (15.0, 2500.0)),
    "Books": (("Novel", "Cookbook", "Biography", "Atlas", "Comic", "Poetry Collection", "Guide"), (8.0, 80.0)),
    "Clothing": (("T-Shirt", "Jeans", "Jacket", "Sneakers", "Dress", "Hoodie", "Scarf", "Cap"), (10.0, 250.0)),
    "Home & Kitchen": (("Blender", "Coffee Maker", "Frying Pan", "Lamp", "Pillow", "Knife Set", "Kettle",
                        "Towel Set"), (9.0, 400.0)),
    "Sports": (("Yoga Mat", "Football", "Tennis Racket", "Dumbbell Set", "Bicycle Helmet", "Water Bottle",
                "Running Shorts"), (7.0, 350.0)),
    "Toys": (("Puzzle", "Board Game", "Action Figure", "Building Blocks", "Plush Bear", "Toy Car"), (5.0, 120.0)),
    "Beauty": (("Shampoo", "Perfume", "Lipstick", "Face Cream", "Hair Dryer", "Nail Polish"), (4.0, 180.0)),
    "Grocery": (("Coffee Beans", "Olive Oil", "Green Tea", "Dark Chocolate", "Pasta", "Honey"), (2.0, 40.0)),
}
PRODUCTS_PER_CATEGORY = 25
USERS = 5_000
ACTIVE_SESSIONS = 200

#: category → [(item id suffix, name, price)]
MENU: dict[str, list[tuple[str, str, str]]] = {
    "Starters": [("Garlic Bread", "18.90"), ("Bruschetta", "24.50"), ("Chicken Wings", "32.00"),
                 ("Caesar Salad", "29.90"), ("Soup of the Day", "21.00")],
    "Mains": [("Grilled Salmon", "79.90"), ("Beef Steak", "89.00"), ("Chicken Parmigiana", "58.50"),
              ("Mushroom Risotto", "54.90"), ("Fish and Chips", "49.90"), ("Feijoada", "62.00")],
    "Pizza": [("Margherita", "52.00"), ("Pepperoni", "58.00"), ("Four Cheese", "61.50"), ("Calabresa", "55.00")],
    "Burgers": [("Classic Burger", "38.90"), ("Cheeseburger", "41.90"), ("Veggie Burger", "36.50"),
                ("Bacon Burger", "44.90")],
    "Desserts": [("Chocolate Cake", "22.00"), ("Tiramisu", "26.50"), ("Ice Cream", "15.90"), ("Pudim", "17.50")],
    "Drinks": [("Soda", "7.50"), ("Fresh Juice", "12.90"), ("Beer", "14.00"), ("Mineral Water", "5.50"),
               ("Caipirinha", "24.00"), ("Espresso", "6.90")],
}
MAIN_CATEGORIES = ("Mains", "Pizza", "Burgers")
RESTAURANTS = {"REST001": 0.5, "REST002": 0.3, "REST003": 0.2}
TABLES = 30
ITEM_COUNT_WEIGHTS = {1: 0.25, 2: 0.30, 3: 0.20, 4: 0.12, 5: 0.08, 6: 0.05}
QUANTITY_WEIGHTS = {1: 0.75, 2: 0.18, 3: 0.07}
#: orders per hour of day relative to the daily mean (lunch and dinner peaks); mean 1.0
_HOURLY = (0.1, 0.05, 0.05, 0.05, 0.05, 0.1, 0.3, 0.6, 0.8, 0.7, 0.8, 1.5,
           2.6, 2.4, 1.2, 0.7, 0.7, 0.9, 1.6, 2.5, 2.7, 1.9, 1.0, 0.4)
HOUR_FACTORS = tuple(f * len(_HOURLY) / sum(_HOURLY) for f in _HOURLY)


def _json_str(value: str) -> str:
    """A JSON string literal as pydantic writes it (UTF-8, not ASCII-escaped)."""
    return json.dumps(value, ensure_ascii=False)


def _money(value) -> Decimal:
    return Decimal(value).quantize(CENT, rounding=ROUND_HALF_UP)


def _money_json(value: Decimal) -> str:
    return repr(float(value))  # what pydantic's float serialiser writes


def _uuid_str(bits: int) -> str:
    """A version-4 uuid string from 128 random bits (same as ``str(UUID(int=bits, version=4))``)."""
    bits = (bits & ~(0xF000 << 64) | (0x4000 << 64)) & ~(0xC000 << 48) | (0x8000 << 48)
    h = "%032x" % bits
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _sampler(rng: random.Random, weights: dict):
    """A fast weighted chooser over ``weights``' keys drawing from ``rng``."""
    keys = list(weights)
    cum = list(accumulate(weights.values()))
    total = cum[-1]
    rand = rng.random

    def draw():
        return keys[bisect_right(cum, rand() * total)]

    return draw


def _as_utc(now: datetime) -> datetime:
    if now.tzinfo is None:
        return now.replace(tzinfo=timezone.utc)
    return now.astimezone(timezone.utc)


def _iso(ts: datetime) -> str:
    """``ts`` (aware, UTC) as pydantic serialises it: ISO-8601 with a ``Z``."""
    return ts.isoformat()[:-6] + "Z"  # "+00:00" → "Z"


class _Clock:
    """Wall clock, or a simulated clock from ``start`` advancing by seeded exponential gaps."""

    def __init__(self, start: datetime | None, seed: int, mean_gap_s: float, hour_factors=None):
        self.virtual = start is not None
        self._rng = random.Random(seed ^ 0x5A5A_5A5A)
        self._mean_us = mean_gap_s * 1e6
        self._factors = hour_factors
        self._t = _as_utc(start) if start is not None else None

    def now(self) -> datetime:
        if not self.virtual:
            return datetime.now(timezone.utc)
        t = self._t
        mean = self._mean_us
        if self._factors:
            mean /= self._factors[t.hour]
        self._t = t + timedelta(microseconds=int(self._rng.expovariate(1.0) * mean))
        return t


# ----------------------------------------------------------------------------- catalogue


@dataclass(frozen=True)
class CatalogueProduct:
    id: str
    name: str
    category: str
    price: Decimal
    model: Product
    json: str  # the product object as JSON


def _build_catalogue() -> tuple[list[CatalogueProduct], dict[str, list[int]], dict[str, list[str]]]:
    fake = Faker("en_US")
    fake.seed_instance(CATALOGUE_SEED)
    rng = random.Random(CATALOGUE_SEED)
    brands = sorted({fake.last_name() for _ in range(200)})
    # "DarkGray" → "Dark Gray"
    colours = sorted({re.sub(r"(?<=[a-z])(?=[A-Z])", " ", fake.color_name()) for _ in range(100)})
    products: list[CatalogueProduct] = []
    by_category: dict[str, list[int]] = {}
    queries: dict[str, list[str]] = {}
    n = 0
    for category, (nouns, (lo, hi)) in CATEGORIES.items():
        seen = set()
        by_category[category] = []
        while len(by_category[category]) < PRODUCTS_PER_CATEGORY:
            name = f"{rng.choice(brands)} {rng.choice(colours)} {rng.choice(nouns)}"
            if name in seen:
                continue
            seen.add(name)
            n += 1
            # log-uniform price, often ending in .99 / .90
            raw = lo * (hi / lo) ** rng.random()
            cents = rng.choice(("0.99", "0.90", "0.50", "0.00", f"{rng.randint(0, 99) / 100:.2f}"))
            price = _money(Decimal(int(raw)) + Decimal(cents))
            pid = f"PROD{n:05d}"
            model = Product(id=pid, name=name, category=category, price=price)
            products.append(CatalogueProduct(pid, name, category, price, model, model.model_dump_json()))
            by_category[category].append(n - 1)
        terms = {noun.lower() for noun in nouns}
        terms |= {f"{c.lower()} {noun.lower()}" for c in rng.sample(colours, 4) for noun in nouns[:4]}
        terms |= {f"{products[i].name.split()[0].lower()} {products[i].name.split()[-1].lower()}"
                  for i in by_category[category][:10]}
        terms |= {f"{noun.lower()} {fake.word()}" for noun in nouns}
        terms |= {f"cheap {noun.lower()}" for noun in nouns[:3]} | {f"best {category.lower()}"}
        queries[category] = sorted(terms)
    return products, by_category, queries


CATALOGUE, PRODUCTS_BY_CATEGORY, SEARCH_QUERIES = _build_catalogue()


class _Session:
    __slots__ = ("user_id", "session_id", "viewed", "cart", "category", "remaining", "cart_pos", "slot")

    def __init__(self, user_id: str, session_id: str, remaining: int, slot: int):
        self.slot = slot  # index in the simulation's list of active sessions
        self.user_id = user_id
        self.session_id = session_id
        self.viewed: list[int] = []
        self.cart: dict[int, int] = {}
        self.category: str | None = None
        self.remaining = remaining
        self.cart_pos = -1  # index in the simulation's list of sessions with a cart


# ----------------------------------------------------------------------------- e-commerce


class EcommerceSimulation:
    """Click-stream of an online shop, carried by in-memory user sessions.

    ``next_event(now)`` returns the next :class:`EcommerceEvent`;
    ``next_message(now)`` returns the same draw as ``(key, json bytes)``.
    """

    topic = ECOMMERCE_TOPIC
    mean_gap_s = 0.5  # the default 2 events/s, for the simulated clock

    def __init__(self, seed: int | None = None, start: datetime | None = None, *,
                 users: int = USERS, active_sessions: int = ACTIVE_SESSIONS):
        self.seed = seed if seed is not None else random.SystemRandom().getrandbits(63)
        self._rng = rng = random.Random(self.seed)
        self._clock = _Clock(start, self.seed, self.mean_gap_s)
        self._users = users
        self._rand = rng.random
        self._bits = rng.getrandbits
        self._draw_type = _sampler(rng, EVENT_WEIGHTS)
        self._draw_payment = _sampler(rng, ECOMMERCE_PAYMENTS)
        self._draw_qty = _sampler(rng, QUANTITY_WEIGHTS)
        self._categories = list(CATEGORIES)
        self._payment_json = {p: _json_str(p) for p in ECOMMERCE_PAYMENTS}
        self._query_json = {c: [(q, _json_str(q)) for q in qs] for c, qs in SEARCH_QUERIES.items()}
        self._sessions = [self._new_session(slot) for slot in range(active_sessions)]
        self._carting: list[_Session] = []
        self.counts = dict.fromkeys(EVENT_WEIGHTS, 0)

    # -- sessions ---------------------------------------------------------
    def _new_session(self, slot: int) -> _Session:
        user = int(self._users * self._rand() ** 2)  # returning users are more frequent
        return _Session(f"USER{user + 1:06d}", _uuid_str(self._bits(128)),
                        1 + int(self._rng.expovariate(1 / 14)), slot)

    def _cart_add(self, s: _Session, product: int, qty: int) -> None:
        s.cart[product] = s.cart.get(product, 0) + qty
        if s.cart_pos < 0:
            s.cart_pos = len(self._carting)
            self._carting.append(s)

    def _cart_take(self, s: _Session) -> tuple[int, int]:
        keys = list(s.cart)
        product = keys[int(self._rand() * len(keys))]
        qty = s.cart.pop(product)
        if not s.cart:
            self._uncart(s)
        return product, qty

    def _uncart(self, s: _Session) -> None:
        pos = s.cart_pos
        if pos < 0:
            return
        last = self._carting.pop()
        if last is not s:
            self._carting[pos] = last
            last.cart_pos = pos
        s.cart_pos = -1

    def _end_session(self, s: _Session) -> None:
        self._uncart(s)
        self._sessions[s.slot] = self._new_session(s.slot)

    # -- one draw ---------------------------------------------------------
    def _step(self, now: datetime | None):
        """One event as a tuple of plain fields (shared by both output paths)."""
        rand = self._rand
        ts = self._clock.now() if now is None else _as_utc(now)
        kind = self._draw_type()
        sessions = self._sessions
        product = -1
        qty = total = payment = query = None
        slot = -1
        if kind in ("remove_from_cart", "purchase") and not self._carting:
            kind = "add_to_cart"
        if kind == "add_to_cart":
            for _ in range(4):
                slot = int(rand() * len(sessions))
                if sessions[slot].viewed:
                    break
            else:
                kind = "page_view"
        if kind == "remove_from_cart" or kind == "purchase":
            s = self._carting[int(rand() * len(self._carting))]
            product, qty = self._cart_take(s)
            if kind == "purchase":
                total = (CATALOGUE[product].price * qty).quantize(CENT, rounding=ROUND_HALF_UP)
                payment = self._draw_payment()
        else:
            if slot < 0:
                slot = int(rand() * len(sessions))
            s = sessions[slot]
            if kind == "add_to_cart":
                viewed = s.viewed
                product = viewed[-1] if rand() < 0.6 else viewed[int(rand() * len(viewed))]
                qty = self._draw_qty()
                self._cart_add(s, product, qty)
            elif kind == "page_view":
                if s.category is not None and rand() < 0.7:
                    pool = PRODUCTS_BY_CATEGORY[s.category]
                else:
                    pool = PRODUCTS_BY_CATEGORY[self._categories[int(rand() * len(self._categories))]]
                product = pool[int(rand() * len(pool))]
                s.viewed.append(product)
                if len(s.viewed) > 8:
                    del s.viewed[0]
                s.category = CATALOGUE[product].category
            else:  # search
                if s.category is None or rand() < 0.5:
                    s.category = self._categories[int(rand() * len(self._categories))]
                pool = self._query_json[s.category]
                query = pool[int(rand() * len(pool))]
        event = (_uuid_str(self._bits(128)), kind, ts, s.user_id, s.session_id, product, qty, total, payment, query)
        self.counts[kind] += 1
        s.remaining -= 1
        if s.remaining <= 0 or (kind == "purchase" and not s.cart and rand() < 0.5):
            self._end_session(s)
        return event

    # -- outputs ------------------------------------------------------------
    def next_event(self, now: datetime | None = None) -> EcommerceEvent:
        eid, kind, ts, user, session, product, qty, total, payment, query = self._step(now)
        return EcommerceEvent(
            event_id=UUID(eid), event_type=kind, timestamp=ts, user_id=user, session_id=session,
            product=CATALOGUE[product].model if product >= 0 else None,
            quantity=qty, total_amount=total, payment_method=payment,
            search_query=query[0] if query else None,
        )

    #: the fields of a draw (``_step``), in order; the message key is the topic's key_field
    RAW_FIELDS = ("event_id", "event_type", "timestamp", "user_id", "session_id", "product", "quantity",
                  "total_amount", "payment_method", "search_query")
    _key_pos = RAW_FIELDS.index(ECOMMERCE_TOPIC.key_field)

    def next_message(self, now: datetime | None = None) -> tuple[str, bytes]:
        """The next event as ``(key, value)``: key = the topic's key_field (user_id),
        value = its JSON (fast path)."""
        raw = self._step(now)
        eid, kind, ts, user, session, product, qty, total, payment, query = raw
        out = (f'{{"event_id":"{eid}","event_type":"{kind}","timestamp":"{_iso(ts)}",'
               f'"user_id":"{user}","session_id":"{session}"')
        if product >= 0:
            out += ',"product":' + CATALOGUE[product].json
        if qty is not None:
            out += f',"quantity":{qty}'
        if total is not None:
            out += f',"total_amount":{_money_json(total)},"payment_method":{self._payment_json[payment]}'
        if query is not None:
            out += ',"search_query":' + query[1]
        return raw[self._key_pos], (out + "}").encode()


# ----------------------------------------------------------------------------- restaurant


@dataclass(frozen=True)
class MenuItem:
    item_id: str
    name: str
    category: str
    price: Decimal
    json_head: str  # '{"item_id":…,"name":…,"category":…,"quantity":'


def _build_menu() -> list[MenuItem]:
    items = []
    n = 0
    for category, dishes in MENU.items():
        for name, price in dishes:
            n += 1
            item_id = f"ITEM{n:03d}"
            head = (f'{{"item_id":{_json_str(item_id)},"name":{_json_str(name)},'
                    f'"category":{_json_str(category)},"quantity":')
            items.append(MenuItem(item_id, name, category, _money(price), head))
    return items


MENU_ITEMS = _build_menu()


class RestaurantSimulation:
    """Restaurant orders: 1–6 distinct menu items, channel, table, payment.

    ``next_order(now)`` returns the next :class:`RestaurantOrder`;
    ``next_message(now)`` returns the same draw as ``(key, json bytes)``.
    """

    topic = RESTAURANT_TOPIC
    mean_gap_s = 10.0  # one order every 10 s by default

    def __init__(self, seed: int | None = None, start: datetime | None = None):
        self.seed = seed if seed is not None else random.SystemRandom().getrandbits(63)
        self._rng = rng = random.Random(self.seed)
        self._clock = _Clock(start, self.seed, self.mean_gap_s, HOUR_FACTORS)
        self._draw_items = _sampler(rng, ITEM_COUNT_WEIGHTS)
        self._draw_qty = _sampler(rng, QUANTITY_WEIGHTS)
        self._draw_channel = _sampler(rng, CHANNELS)
        self._draw_payment = _sampler(rng, RESTAURANT_PAYMENTS)
        self._draw_restaurant = _sampler(rng, RESTAURANTS)
        self._mains = [i for i, m in enumerate(MENU_ITEMS) if m.category in MAIN_CATEGORIES]
        self._json = {k: _json_str(k) for k in (*RESTAURANT_PAYMENTS, *CHANNELS, *RESTAURANTS)}

    def _step(self, now: datetime | None):
        rng = self._rng
        ts = self._clock.now() if now is None else _as_utc(now)
        n = self._draw_items()
        first = self._mains[int(rng.random() * len(self._mains))]
        others = [i for i in range(len(MENU_ITEMS)) if i != first]
        picked = [first, *rng.sample(others, n - 1)]
        lines = []
        total = Decimal("0.00")
        for i in picked:
            qty = self._draw_qty()
            if MENU_ITEMS[i].category == "Drinks" and rng.random() < 0.2:
                qty += 1
            lines.append((i, qty))
            total += MENU_ITEMS[i].price * qty
        channel = self._draw_channel()
        table = 1 + int(rng.random() * TABLES) if channel == "dine_in" else None
        payment = self._draw_payment()
        restaurant = self._draw_restaurant()
        order_id = _uuid_str(rng.getrandbits(128))
        return order_id, ts, restaurant, table, channel, lines, total.quantize(CENT), payment

    def next_order(self, now: datetime | None = None) -> RestaurantOrder:
        order_id, ts, restaurant, table, channel, lines, total, payment = self._step(now)
        items = [OrderItem(item_id=MENU_ITEMS[i].item_id, name=MENU_ITEMS[i].name, category=MENU_ITEMS[i].category,
                           quantity=q, unit_price=MENU_ITEMS[i].price) for i, q in lines]
        return RestaurantOrder(order_id=UUID(order_id), timestamp=ts, restaurant_id=restaurant, table_number=table,
                               channel=channel, items=items, total_amount=total, payment_method=payment)

    def next_event(self, now: datetime | None = None) -> RestaurantOrder:
        """Alias of :meth:`next_order` (one interface for both simulations)."""
        return self.next_order(now)

    RAW_FIELDS = ("order_id", "timestamp", "restaurant_id", "table_number", "channel", "items",
                  "total_amount", "payment_method")
    _key_pos = RAW_FIELDS.index(RESTAURANT_TOPIC.key_field)

    def next_message(self, now: datetime | None = None) -> tuple[str, bytes]:
        """The next order as ``(key, value)``: key = the topic's key_field (order_id),
        value = its JSON (fast path)."""
        raw = self._step(now)
        order_id, ts, restaurant, table, channel, lines, total, payment = raw
        j = self._json
        items = ",".join(f'{MENU_ITEMS[i].json_head}{q},"unit_price":{_money_json(MENU_ITEMS[i].price)}}}'
                         for i, q in lines)
        table_part = f',"table_number":{table}' if table is not None else ""
        out = (f'{{"order_id":"{order_id}","timestamp":"{_iso(ts)}","restaurant_id":{j[restaurant]}{table_part},'
               f'"channel":{j[channel]},"items":[{items}],"total_amount":{_money_json(total)},'
               f'"payment_method":{j[payment]}}}')
        return raw[self._key_pos], out.encode()


SIMULATIONS = {"ecommerce": EcommerceSimulation, "restaurant": RestaurantSimulation}
