"""Messages as the writer sees them: the raw Kafka message, its parsed form,
and the text helpers that make anything a message holds storable.

Nothing here needs Kafka or PostgreSQL: :func:`parse` never raises, whatever
the bytes, so a message is always either a model or a readable reason.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple

from salespulse.contract_fast_path import Values, parse_values
from salespulse.contracts import ContractError, EcommerceEvent, RestaurantOrder, TimestampWindow
from salespulse.settings import get_settings

from .rows import Row, build_row

CONFLICT = "conflicting re-send of an id already stored with other content"
MAX_REASON_CHARS = 2000  # a reason is for people (and a DLQ header), not a dump
DEFAULT_GROUP = "salespulse-ingest"


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

