"""Dead letters: their row in the ``dead_letters`` table and their copy on
``<topic>.dlq``, whatever their size or content.

**The row** (:func:`dead_letter_row`): raw key and headers in full, the
payload up to ``DEAD_LETTER_PAYLOAD_MAX_BYTES`` with the size and SHA-256 of
the whole payload, storable text. The hash in its de-duplication key
(:func:`dead_letter_key`) is always the whole payload's, so the unique
constraint (topic, incarnation, partition, offset, payload hash) tells a
re-delivery of the same bad message from another message at a re-used offset
whatever the cap (sql/120_bounded_stores.sql).

**The published copy** (:class:`DeadLetterPublisher`):
A dead letter is the original message (key, value, headers) plus ``dlq.*``
headers saying why and where it came from. The table keeps the message (up
to the cap); the topic is a notification stream, so a message that
would not fit under the broker's size limit with its headers is published
*truncated*, with a ``dlq.truncated`` header giving the original sizes.
Without this, a bad message within a few KB of ``message.max.bytes`` is
refused on every attempt and its partition never moves again.

A refusal for size (by the client or the broker) shrinks that message's
budget for the next attempt (down to an empty value), so size alone can never
make publication fail forever; other failures are reported to the caller,
which retries the batch with backoff.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field

import psycopg2
from confluent_kafka import KafkaError, KafkaException, Producer
from psycopg2.extras import Json

from salespulse.contracts import TOPICS
from salespulse.kafka import producer_config
from salespulse.settings import get_settings

from .messages import ParsedMessage, as_bytes, decode_key, headers_json, reason, safe_text

log = logging.getLogger(__name__)

#: Bytes a published dead letter may take: under librdkafka's and Apache Kafka's
#: default ``message.max.bytes`` (1,000,000) with room for record overhead.
MESSAGE_BUDGET = 900_000
#: Original headers beyond this many bytes are left out of the published copy.
HEADER_BUDGET = 64_000
KEY_BUDGET = 16_000
ERROR_HEADER_MAX = 4_000
#: After a size refusal, the next attempt gets budget // SHRINK (then 0).
SHRINK = 16
_SIZE_ERRORS = {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG_SIZE, KafkaError.RECORD_LIST_TOO_LARGE}


# ---------------------------------------------------------------- the row
def payload_cap() -> int:
    """Payload bytes a dead letter keeps (``DEAD_LETTER_PAYLOAD_MAX_BYTES``)."""
    return get_settings().dead_letter_payload_max_bytes


def dead_letter_key(m: ParsedMessage, incarnation: str) -> tuple:
    """The de-duplication key of a dead letter (its unique constraint)."""
    raw = m.raw
    return (safe_text(str(raw.topic)), incarnation, raw.partition, raw.offset,
            hashlib.sha256(as_bytes(raw.value) or b"").hexdigest())


def dead_letter_row(m: ParsedMessage, incarnation: str = "", error: str | None = None,
                    cap: int | None = None) -> tuple:
    topic, incarnation, partition, offset, sha = dead_letter_key(m, incarnation)
    value, key = as_bytes(m.raw.value), as_bytes(m.raw.key)
    headers = headers_json(m.raw.headers)
    cap = payload_cap() if cap is None else cap
    size = None if value is None else len(value)
    stored = None if value is None else value[:cap]
    return (
        topic, incarnation, partition, offset, decode_key(key), None if key is None else psycopg2.Binary(key),
        None if headers is None else Json(headers), None if stored is None else psycopg2.Binary(stored),
        size, sha, reason(error or m.error or "invalid"),
    )


# ---------------------------------------------------------------- the published copy
class DeadLettersUndelivered(RuntimeError):
    """Some dead letters were not delivered to their ``.dlq`` topic."""

    def __init__(self, failures: list[str]):
        super().__init__(f"{len(failures)} dead letter(s) undelivered: {failures[:3]}")
        self.failures = failures


def dlq_topic(topic: str) -> str:
    return TOPICS[topic].dlq if topic in TOPICS else f"{topic}.dlq"


@dataclass
class DeadLetterRecord:
    """What is produced for one dead letter: key, value, headers (within a budget)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    truncated: bool = False


def _size(value: bytes | None) -> int:
    return len(value) if value is not None else 0


def build_record(message, budget: int = MESSAGE_BUDGET) -> DeadLetterRecord:
    """The DLQ copy of ``message`` (a ParsedMessage): original key/value/headers,
    cut to fit ``budget`` bytes, plus the ``dlq.*`` headers."""
    raw = message.raw
    error = (message.error or "invalid").encode("utf-8", "backslashreplace")[:ERROR_HEADER_MAX]
    headers = [(k, v if v is not None else b"") for k, v in (raw.headers or [])]
    cut: list[str] = []
    header_bytes = sum(len(k.encode("utf-8", "backslashreplace")) + len(v) for k, v in headers)
    if header_bytes > min(HEADER_BUDGET, budget // 2):
        cut.append(f"headers={header_bytes}")
        headers = []
    key = raw.key
    if _size(key) > min(KEY_BUDGET, budget // 4):
        cut.append(f"key={_size(key)}")
        key = key[: min(KEY_BUDGET, budget // 4)]
    source = [
        ("dlq.error", error),
        ("dlq.source.topic", raw.topic.encode()),
        ("dlq.source.partition", str(raw.partition).encode()),
        ("dlq.source.offset", str(raw.offset).encode()),
    ]
    used = _size(key) + sum(len(k) + len(v) for k, v in headers + source) + 200  # + room for the cut header
    room = max(budget - used, 0)
    value = raw.value
    if _size(value) > room:
        cut.append(f"value={_size(value)}")
        value = value[:room]
    if cut:
        source.append(("dlq.truncated", ("original bytes: " + ", ".join(cut)).encode()))
    return DeadLetterRecord(dlq_topic(raw.topic), key, value, headers + source, truncated=bool(cut))


class DeadLetterPublisher:
    """Produces dead letters and waits for their delivery (one producer, rebuilt after failures)."""

    def __init__(self, bootstrap: str, budget: int = MESSAGE_BUDGET):
        self.bootstrap = bootstrap
        self.budget = budget
        self._producer: Producer | None = None
        self._budgets: dict[tuple[str, int, int], int] = {}  # source (topic, partition, offset) -> budget

    def _client(self) -> Producer:
        if self._producer is None:
            self._producer = Producer(producer_config(self.bootstrap, **{"linger.ms": 0, "message.timeout.ms": 10_000}))
        return self._producer

    def publish(self, dead: list) -> list[str]:
        """Produce every dead letter and flush. Returns the failures (empty = all
        delivered). A failed call drops the producer: an idempotent producer may
        not recover after a broker restart, the next call builds a new one."""
        failures: list[str] = []
        producer = self._client()
        for message in dead:
            source = (message.raw.topic, message.raw.partition, message.raw.offset)
            record = build_record(message, self._budgets.get(source, self.budget))

            def delivered(err, _msg, source=source):
                if err is not None:
                    self._note_failure(source, err)
                    failures.append(f"{source}: {err}")

            try:
                producer.produce(record.topic, value=record.value, key=record.key, headers=record.headers,
                                 on_delivery=delivered)
            except KafkaException as exc:
                self._note_failure(source, exc.args[0])
                failures.append(f"{source}: {exc}")
            except BufferError as exc:
                failures.append(f"{source}: local queue full: {exc}")
            producer.poll(0)
        try:
            left = producer.flush(15)
        except KafkaException as exc:
            failures.append(str(exc))
            left = -1
        if left:
            failures.append(f"{left} dead letters undelivered after 15 s")
        if failures:
            self.close()
        else:
            self._budgets.clear()
        return failures

    def _note_failure(self, source: tuple[str, int, int], err) -> None:
        if isinstance(err, KafkaError) and err.code() in _SIZE_ERRORS:
            budget = self._budgets.get(source, self.budget) // SHRINK
            self._budgets[source] = budget if budget >= 1024 else 0
            log.warning("dead letter refused for its size; publishing it cut further", extra={
                "event": "dlq_too_large", "source": list(source), "next_budget": self._budgets[source]})

    def close(self, timeout: float = 0) -> None:
        if self._producer is not None:
            if timeout:
                self._producer.flush(timeout)
            self._producer = None  # destroyed: its broker connections close now
