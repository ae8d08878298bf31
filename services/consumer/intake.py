"""The batch being filled: Kafka messages read against their contract.

Each message is parsed (never raising, whatever it holds) and labelled with
its topic's current incarnation (``incarnations.py``). On the way: an
end-of-partition event marks the partition at its end, a fatal consumer error
raises, other errors are logged; a message of a partition revoked meanwhile
(still in librdkafka's queue) is dropped, and offsets going back (a
re-delivery, or a re-created topic) refresh the incarnations first.
"""

from __future__ import annotations

import logging
import time
from typing import Iterable

from confluent_kafka import KafkaError, KafkaException

from salespulse.contracts import TimestampWindow

from .incarnations import TopicIncarnations
from .messages import ParsedMessage, RawMessage, parse
from .rebalance import Key, Partitions

log = logging.getLogger("services.consumer")


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

    def __init__(self, partitions: Partitions, incarnations: TopicIncarnations, window: TimestampWindow):
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

    def held_bytes(self) -> int:
        return self.bytes

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
