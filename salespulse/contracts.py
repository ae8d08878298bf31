"""Event contracts: the one source of truth for what travels on the topics.

The producer builds these models, the consumer validates raw bytes against
them, the tests use them for valid/invalid examples, and ``salespulse
contracts`` exports them as JSON Schema for any other Kafka client.

Rules beyond plain typing:
* timestamps are ISO-8601; a naive timestamp means UTC; all are normalised to UTC;
* money is rounded to 2 decimals (half-up), must not be negative and must be
  less than 1E+25 (what the default decimal context can round to cents);
* product events carry ``product``; ``purchase`` carries quantity, total and
  payment method; ``search`` carries ``search_query``;
* a restaurant order's ``total_amount`` equals the sum of its items, and
  ``table_number`` is set only for ``dine_in``;
* event times lie in an accepted window (:class:`TimestampWindow`), checked by
  ``parse_message`` when it is given one (the consumer always does).

The consumer checks these contracts with ``salespulse.contract_fast_path``:
one pass of pydantic-core over a schema derived from the models below (never
written twice), giving exactly ``parse_message``'s answers and reasons.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    model_validator,
)

CENT = Decimal("0.01")
#: Below this an amount can be rounded to cents in the default decimal context
#: (28 digits); above it quantize raises InvalidOperation, which is no reason a
#: producer can act on. Whether an amount fits the database's NUMERIC(12, 2) is
#: the consumer's storage check (services/consumer/rows.py).
MONEY_CEILING = Decimal("1E+25")


def _to_money(value: Decimal) -> Decimal:
    if not value.is_finite():
        raise ValueError("must be a finite number")
    if value < 0:
        raise ValueError("must not be negative")
    if value >= MONEY_CEILING:
        raise ValueError(f"must be less than {MONEY_CEILING}")
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def _to_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


#: Money: a JSON number (or numeric string) with at most cents, serialised as a number.
Money = Annotated[
    Decimal,
    AfterValidator(_to_money),
    PlainSerializer(float, return_type=float, when_used="json"),
]
UtcDatetime = Annotated[datetime, AfterValidator(_to_utc)]
Text = Annotated[str, Field(min_length=1, max_length=200)]

EventType = Literal["page_view", "add_to_cart", "remove_from_cart", "purchase", "search"]
PRODUCT_EVENTS = frozenset({"page_view", "add_to_cart", "remove_from_cart", "purchase"})
Channel = Literal["dine_in", "takeaway", "delivery"]


class _Contract(BaseModel):
    # strict: a string where a number belongs (or vice versa) is a wrong-typed
    # message for the dead-letter queue, not something to coerce silently.
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class Product(_Contract):
    id: Text
    name: Text
    category: Text
    price: Money


class EcommerceEvent(_Contract):
    """One click-stream or purchase event of the online shop."""

    event_id: UUID
    event_type: EventType
    timestamp: UtcDatetime
    user_id: Text
    session_id: Text
    product: Product | None = None
    quantity: Annotated[int, Field(gt=0, le=10_000)] | None = None
    total_amount: Money | None = None
    payment_method: Text | None = None
    search_query: Annotated[str, Field(min_length=1, max_length=500)] | None = None

    @model_validator(mode="after")
    def _fields_required_by_type(self) -> "EcommerceEvent":
        missing = []
        if self.event_type in PRODUCT_EVENTS and self.product is None:
            missing.append("product")
        if self.event_type == "purchase":
            missing += [f for f in ("quantity", "total_amount", "payment_method") if getattr(self, f) is None]
        if self.event_type == "search" and self.search_query is None:
            missing.append("search_query")
        if missing:
            raise ValueError(f"{self.event_type} requires {', '.join(missing)}")
        return self


class OrderItem(_Contract):
    item_id: Text
    name: Text
    category: Text
    quantity: Annotated[int, Field(gt=0, le=1_000)]
    unit_price: Money

    @property
    def line_total(self) -> Decimal:
        return (self.unit_price * self.quantity).quantize(CENT, rounding=ROUND_HALF_UP)


class RestaurantOrder(_Contract):
    """One restaurant order with its line items."""

    order_id: UUID
    timestamp: UtcDatetime
    restaurant_id: Text
    table_number: Annotated[int, Field(gt=0, le=10_000)] | None = None
    channel: Channel
    items: Annotated[list[OrderItem], Field(min_length=1, max_length=100)]
    total_amount: Money
    payment_method: Text

    @model_validator(mode="after")
    def _totals_and_table(self) -> "RestaurantOrder":
        items_total = sum((item.line_total for item in self.items), Decimal("0.00"))
        if items_total != self.total_amount:
            raise ValueError(f"total_amount {self.total_amount} != sum of items {items_total}")
        if self.channel != "dine_in" and self.table_number is not None:
            raise ValueError("table_number must be null unless channel is dine_in")
        return self


@dataclass(frozen=True)
class Topic:
    """A topic of the interface: its partitions, message key and contract."""

    name: str
    partitions: int
    key_field: str
    model: type[_Contract]

    @property
    def dlq(self) -> str:
        return f"{self.name}.dlq"


ECOMMERCE_TOPIC = Topic("ecommerce.events", 6, "user_id", EcommerceEvent)
RESTAURANT_TOPIC = Topic("restaurant.orders", 3, "order_id", RestaurantOrder)
TOPICS: dict[str, Topic] = {t.name: t for t in (ECOMMERCE_TOPIC, RESTAURANT_TOPIC)}


def all_topic_partitions() -> dict[str, int]:
    """Every topic to create (data topics and their dead-letter topics) → partitions."""
    out: dict[str, int] = {}
    for topic in TOPICS.values():
        out[topic.name] = topic.partitions
        out[topic.dlq] = 1
    return out


class ContractError(ValueError):
    """A message that does not meet its topic's contract; ``reason`` is readable."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class TimestampWindow:
    """The event times the pipeline accepts: not later than now + ``max_future_seconds``,
    not earlier than ``earliest`` nor, when ``max_age_days`` is set (the raw
    retention, ``RAW_RETENTION_DAYS``), than now - ``max_age_days``: an older
    event's month partition may have been dropped, and storing it there alone
    would let a restatement overwrite that minute's report with it.

    Checked on parsing, not in the models, so the JSON Schema (and any client
    built from it) stays a description of the message shape. Without it one
    event dated 9999 would freeze its product's catalogue data (newer-data-wins)
    and stay in every open-ended "latest" query.
    """

    max_future_seconds: int = 300
    earliest: datetime = datetime(2000, 1, 1, tzinfo=timezone.utc)
    max_age_days: int = 0  # 0: no age limit

    def __post_init__(self) -> None:
        object.__setattr__(self, "earliest", _to_utc(self.earliest))  # naive = UTC, like event times
        object.__setattr__(self, "_earliest_s", self.earliest.timestamp())

    @classmethod
    def from_settings(cls, settings) -> "TimestampWindow":
        """From ``EVENT_MAX_FUTURE_SECONDS`` / ``EVENT_EARLIEST`` / ``RAW_RETENTION_DAYS``."""
        return cls(settings.event_max_future_seconds, settings.event_earliest, settings.raw_retention_days)

    def violation(self, ts: datetime, now: datetime | None = None) -> str | None:
        """The reason ``ts`` is outside the window, or None."""
        if now is None and ts.tzinfo is not None:
            # the usual case, decided on the clock's seconds: more than a second inside the window
            seconds, now_s = ts.timestamp(), time.time()
            oldest = max(self._earliest_s, now_s - self.max_age_days * 86400) if self.max_age_days else self._earliest_s
            if oldest + 1 < seconds < now_s + self.max_future_seconds - 1:
                return None
        now = now or datetime.now(timezone.utc)
        latest = now + timedelta(seconds=self.max_future_seconds)
        if ts > latest:
            return (f"timestamp outside the accepted window: {ts.isoformat()} is more than "
                    f"{self.max_future_seconds} s in the future")
        if ts < self.earliest:
            return f"timestamp outside the accepted window: {ts.isoformat()} is before {self.earliest.isoformat()}"
        if self.max_age_days and ts < now - timedelta(days=self.max_age_days):
            return (f"timestamp outside the accepted window: {ts.isoformat()} is older than the "
                    f"{self.max_age_days} days of raw history kept (RAW_RETENTION_DAYS)")
        return None


def parse_message(topic: str, raw: bytes | None, window: TimestampWindow | None = None) -> _Contract:
    """Validate one raw Kafka message value against its topic's contract (and,
    if given, its timestamp against ``window``).

    Raises :class:`ContractError` with a human-readable reason for empty,
    non-UTF-8, non-JSON, wrong-typed, rule-breaking or out-of-window messages.
    """
    if topic not in TOPICS:
        raise ContractError(f"unknown topic {topic!r}")
    if not raw:
        raise ContractError("empty message")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ContractError(f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        model = TOPICS[topic].model.model_validate_json(raw)
    except ValidationError as exc:
        raise ContractError(describe_validation_error(exc)) from None
    if window is not None:
        reason = window.violation(model.timestamp)
        if reason:
            raise ContractError(reason)
    return model


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem: ``field.path: message``."""
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "message"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def json_schemas() -> dict[str, dict]:
    """JSON Schema of every topic's contract (for docs and non-Python clients)."""
    return {name: t.model.model_json_schema(mode="serialization") for name, t in TOPICS.items()}
