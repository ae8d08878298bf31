"""Parsing: what a Kafka message becomes before it is stored.

* :class:`Intake`, the batch being filled: each Kafka message read (never
  raising, whatever it holds), labelled with its topic's incarnation
  (``partitions.TopicIncarnations``); end-of-partition marks, consumer errors,
  messages of partitions revoked meanwhile and offsets going back handled on
  the way;
* :func:`parse`: a message validated against its topic's contract
  (``salespulse.contract_fast_path``) into a :class:`ParsedMessage`, or the
  readable reason it is a dead letter;
* :func:`build_row`: a valid message's COPY rows and content hash, built here
  on the consuming thread so the writer thread only talks to PostgreSQL (a
  valid message no column can hold raises :class:`Unstorable`);
* the text helpers that make anything a message holds storable.

Nothing here needs Kafka or PostgreSQL.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping, NamedTuple

from confluent_kafka import KafkaError, KafkaException

from salespulse.contract_fast_path import Values, contract_of, parse_values
from salespulse.contracts import ContractError, EcommerceEvent, RestaurantOrder, TimestampWindow
from salespulse.settings import get_settings

if TYPE_CHECKING:
    from .partitions import Partitions, TopicIncarnations

log = logging.getLogger("services.consumer")

MAX_REASON_CHARS = 2000  # a reason is for people (and a DLQ header), not a dump


class RawMessage(NamedTuple):
    """A Kafka message as the writer needs it (no Kafka client required).
    ``incarnation``: the topic id it was read from ('' if unknown). A named
    tuple: built once per message, so it must be cheap."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None = None
    incarnation: str = ""

    @classmethod
    def from_kafka(cls, msg: Any, incarnation: str = "") -> "RawMessage":
        return _new_tuple(cls, (msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(), msg.headers(),
                                incarnation))


_new_tuple = tuple.__new__


@dataclass(slots=True)
class ParsedMessage:
    """A raw message plus its validated values, or the reason it is invalid.
    ``model`` is the contract model, or the same values as a read-only view
    (``salespulse.contract_fast_path.Values``: UUIDs as canonical text)."""

    raw: RawMessage
    model: EcommerceEvent | RestaurantOrder | Values | None = None
    error: str | None = None
    # the storable form of a valid message, built by parse() on the consuming
    # thread; or why it has none (the writer dead-letters it: "cannot be stored")
    row: Row | None = field(default=None, repr=False)
    row_failure: Exception | None = field(default=None, repr=False)

    @property
    def valid(self) -> bool:
        return self.error is None


def safe_text(value: str) -> str:
    """Text PostgreSQL (TEXT and JSONB) can hold: NUL written as ``\\x00``, a lone
    surrogate as ``\\udXXX``."""
    if "\x00" in value:
        value = value.replace("\x00", "\\x00")
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")


def reason(text: str) -> str:
    """A dead-letter reason: storable text, capped."""
    text = safe_text(text)
    if len(text) > MAX_REASON_CHARS:
        text = f"{text[:MAX_REASON_CHARS]}... ({len(text) - MAX_REASON_CHARS} more characters)"
    return text


_window_cache: tuple[Any, TimestampWindow] | None = None


def default_window() -> TimestampWindow:
    """The settings' window (``EVENT_MAX_FUTURE_SECONDS``, ``EVENT_EARLIEST``)."""
    global _window_cache
    settings = get_settings()
    if _window_cache is None or _window_cache[0] is not settings:
        _window_cache = (settings, TimestampWindow.from_settings(settings))
    return _window_cache[1]


def parse(raw: RawMessage, window: TimestampWindow | None = None) -> ParsedMessage:
    """Validate one message against its topic's contract and the timestamp window
    (default: the settings') and build its row; never raises."""
    try:
        values = parse_values(raw.topic, raw.value, window or default_window())
    except ContractError as exc:
        return ParsedMessage(raw, error=reason(exc.reason))
    except Exception as exc:  # a contract bug must not stop the pipeline either
        return ParsedMessage(raw, error=reason(f"unexpected validation error: {type(exc).__name__}: {exc}"))
    try:
        return ParsedMessage(raw, values, row=build_row(-1, values, raw.partition, raw.offset))
    except Exception as exc:  # valid, but no column can hold it (or a bug): the writer decides
        return ParsedMessage(raw, values, row_failure=exc)


def as_bytes(value: bytes | str | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace")
    return bytes(value)


def decode_key(key: bytes | str | None) -> str | None:
    """The key as readable, storable text (undecodable bytes as ``\\xNN``)."""
    if key is None:
        return None
    if not isinstance(key, str):
        key = as_bytes(key).decode("utf-8", errors="backslashreplace")
    return safe_text(key)


def headers_json(headers: Any) -> list[dict] | None:
    """Headers as JSONB-safe ``[{"key": text, "value_b64": base64 | null}]``."""
    if headers is None:
        return None
    try:
        out = []
        for k, v in (headers.items() if isinstance(headers, Mapping) else headers):
            value = as_bytes(v)
            out.append({"key": decode_key(k if isinstance(k, (str, bytes)) else str(k)),
                        "value_b64": None if value is None else base64.b64encode(value).decode("ascii")})
        return out
    except Exception:  # not a list of pairs: keep what it was, readably
        return [{"key": reason(f"unreadable headers: {headers!r}"), "value_b64": None}]


# ---------------------------------------------------------------- rows
_ESCAPE = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_NEEDS_ESCAPE = re.compile(r"[\\\t\n\r]")
_NULL = "\\N"
_MONEY_LIMIT = 10 ** 10  # NUMERIC(12, 2)


class Unstorable(ValueError):
    """A valid message that no column can hold."""


def _t(value: str | None) -> str:
    return _NULL if value is None else value.translate(_ESCAPE)


def _plain(value: str | None) -> str:
    """``_t`` for text known to hold nothing COPY escapes."""
    return _NULL if value is None else value


def _text_writer(texts: str):
    """``_t``, or the cheaper ``_plain`` when ``texts`` (a row's text fields,
    concatenated) holds no character COPY escapes: the usual case, decided by
    one regex search per row instead of a translation per field."""
    return _t if _NEEDS_ESCAPE.search(texts) else _plain


def _n(value: Any) -> str:
    return _NULL if value is None else str(value)


def _m(value: Any) -> str:
    if value is not None and abs(value) >= _MONEY_LIMIT:
        raise Unstorable(f"amount {value} does not fit NUMERIC(12,2)")
    return _n(value)


def _event_line(e) -> str:
    """The COPY line of an event (contract model or its values): its text
    form is also what the content hash is taken over, so it never changes."""
    p = e.product
    texts = e.user_id + e.session_id + (e.payment_method or "") + (e.search_query or "")
    if p is None:
        t = _text_writer(texts)
        product = (_NULL, _NULL, _NULL, _NULL)
    else:
        t = _text_writer(texts + p.id + p.name + p.category)
        product = (t(p.id), t(p.name), t(p.category), _m(p.price))
    return "\t".join((
        str(e.event_id), e.event_type, e.timestamp.isoformat(), t(e.user_id), t(e.session_id), *product,
        _n(e.quantity), _m(e.total_amount), t(e.payment_method), t(e.search_query),
    ))


def _order_lines(o) -> tuple[str, list[str]]:
    oid = str(o.order_id)
    items = o.items
    t = _text_writer("".join([o.restaurant_id, o.payment_method,
                              *[text for it in items for text in (it.item_id, it.name, it.category)]]))
    item_lines = [
        "\t".join((oid, str(i), t(it.item_id), t(it.name), t(it.category), str(it.quantity),
                   _m(it.unit_price), _m(it.line_total)))
        for i, it in enumerate(items)
    ]
    order = "\t".join((
        oid, o.timestamp.isoformat(), t(o.restaurant_id), _n(o.table_number), o.channel,
        _m(o.total_amount), t(o.payment_method), str(sum(it.quantity for it in items)),
    ))
    return order, item_lines


def _encode(line: str) -> bytes:
    if "\x00" in line:
        raise Unstorable("text contains a NUL character, which PostgreSQL text cannot hold")
    return line.encode("utf-8")  # a lone surrogate raises here, not inside COPY


class Row(NamedTuple):
    """The storable form of one valid message (a named tuple: one object per
    message, which the consumer keeps until its batch is committed)."""

    index: int  # the caller's tag (the writer keeps positions of its own)
    kind: str  # "e" (event) or "o" (order)
    ident: str
    digest: str  # hex content hash of the normalised row
    line: bytes  # COPY line incl. the hash and the Kafka origin (events / orders)
    items: tuple[bytes, ...]  # COPY lines of the order items


_NO_ORIGIN = b"\t\\N\t\\N"  # kafka_partition, kafka_offset of a row with no Kafka origin (a test's model)


def build_row(index: int, model, partition: int | None = None, offset: int | None = None) -> Row:
    """COPY lines plus content hash of a contract model or its values
    (``salespulse.contract_fast_path``); raises for a message no column can hold.
    ``partition``/``offset``: the message's Kafka origin, stored with the row
    (not part of the content hash: a re-send from another offset is the same
    content)."""
    if contract_of(model) is EcommerceEvent:
        line = _event_line(model)
        kind, main, items = "e", _encode(line), ()
        content = main
    else:
        line, item_lines = _order_lines(model)
        kind, main = "o", _encode(line)
        items = tuple([_encode(item) for item in item_lines])
        content = b"\n".join([main, *items])
    digest = hashlib.sha256(content).hexdigest()[:32]
    origin = _NO_ORIGIN if partition is None else b"\t%d\t%d" % (partition, offset)
    # both lines start with the 36-character id; then the hash and the origin close the line
    return _new_tuple(Row, (index, kind, line[:36], digest, main + b"\t\\\\x" + digest.encode("ascii") + origin, items))


# ---------------------------------------------------------------- the batch being filled
def read_message(msg, incarnation: str, window: TimestampWindow) -> ParsedMessage:
    """A Kafka message as a parsed message; never raises, whatever the message holds
    (e.g. header names that are not UTF-8 make ``msg.headers()`` raise)."""
    try:
        raw = RawMessage.from_kafka(msg, incarnation=incarnation)
    except Exception as exc:  # unreadable metadata: keep key and value, dead-letter it
        raw = RawMessage(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(), None, incarnation)
        return ParsedMessage(raw, error=f"unreadable message headers: {type(exc).__name__}: {exc}")
    return parse(raw, window=window)


def message_bytes(m: ParsedMessage) -> int:
    """Key + value bytes of a message (what a batch's byte bound counts)."""
    return len(m.raw.value or b"") + len(m.raw.key or b"")


class Intake:
    """The messages read since the last batch was handed on, and the time spent reading them."""

    def __init__(self, partitions: "Partitions", incarnations: "TopicIncarnations", window: TimestampWindow):
        self.partitions = partitions
        self.incarnations = incarnations
        self.window = window
        self.messages: list[ParsedMessage] = []
        self.bytes = 0  # key + value bytes of the messages held (the batch's byte bound)
        self.largest = 0  # the largest of them
        self.previous_largest = 0  # ... of the batch taken before
        self.parse_seconds = 0.0

    def __len__(self) -> int:
        return len(self.messages)

    def largest_recent(self) -> int:
        """The largest message of this batch and the previous one (the batch
        size estimate: sizes come in runs)."""
        return max(self.largest, self.previous_largest)

    def accept(self, msgs: Iterable) -> None:
        """Read what ``Consumer.consume`` returned into the batch."""
        t0 = time.perf_counter()
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self.partitions.eof.add((msg.topic(), msg.partition()))
                elif err.fatal():
                    raise KafkaException(err)
                else:
                    log.warning("consumer error", extra={"event": "kafka_error", "error": str(err)})
                continue
            key = (msg.topic(), msg.partition())
            if self.partitions.stale(key):
                continue
            if self.partitions.went_back(key, msg.offset()):
                self.incarnations.refresh()  # a re-delivery, or a re-created topic
            self.messages.append(read_message(msg, self.incarnations.get(key[0]), self.window))
            size = message_bytes(self.messages[-1])
            self.bytes += size
            self.largest = max(self.largest, size)
        self.parse_seconds += time.perf_counter() - t0

    def take(self) -> tuple[list[ParsedMessage], float]:
        """The batch and the seconds spent reading it; the intake starts over empty."""
        batch, self.messages = self.messages, []
        self.bytes, self.previous_largest, self.largest = 0, self.largest, 0
        seconds, self.parse_seconds = self.parse_seconds, 0.0
        return batch, seconds

    def put_back(self, batch: list[ParsedMessage]) -> None:
        """An unfinished batch goes back in front of what was read since."""
        self.messages = batch + self.messages
        sizes = list(map(message_bytes, batch))
        self.bytes += sum(sizes)
        self.largest = max([self.largest, *sizes])

    def forget(self, gone: set[Key]) -> None:
        """Drop the messages of partitions no longer ours."""
        if self.messages:
            self.messages = [m for m in self.messages if (m.raw.topic, m.raw.partition) not in gone]
            sizes = list(map(message_bytes, self.messages))
            self.bytes, self.largest = sum(sizes), max(sizes, default=0)
