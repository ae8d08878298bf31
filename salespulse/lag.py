"""Consumer lag: how many messages a reader still has to read, per partition.

lag = high watermark - the next offset the reader reads, never below 0. One
function computes it (:func:`partition_lag`) for every caller: the consumer
(its own position: the lag gauge and the drain on stop), ``salespulse lag``
and the Dagster lag sensor (a group's committed offsets).

High watermarks always come from a consumer's CACHED watermarks, i.e. from
fetch responses. A fresh ``get_watermark_offsets`` / ``list_offsets(latest)``
query is not used: some brokers (the embedded one) answer it wrongly
(docs/broker.md, defect 3). A caller without a consumer of its own uses a
throwaway observer (:func:`observed_watermarks`): it ``assign()``s the
partitions (no group join, so closing it is safe; it never commits), fetches
until each watermark is known, and closes.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from salespulse.kafka import committed_offsets, consumer_config

Key = tuple[str, int]  # (topic, partition)
Watermarks = tuple[int | None, int | None]  # (low, high); None: not known

#: A small, quick fetch: only the watermarks of its response are wanted.
OBSERVER_CONFIG = {
    "statistics.interval.ms": 0,
    "fetch.max.bytes": 1_048_576,
    "max.partition.fetch.bytes": 65_536,
    "queued.max.messages.kbytes": 1024,
    "fetch.wait.max.ms": 100,
}


def partition_lag(high: int, next_offset: int | None, low: int | None = None) -> int:
    """Messages from ``next_offset`` up to ``high``. Without a position
    (``next_offset`` None: nothing read or committed) everything from ``low``
    (unknown: 0) on is ahead."""
    if next_offset is None:
        return high - (low or 0)
    return max(high - next_offset, 0)


def cached_watermarks(consumer: Consumer, tp: TopicPartition) -> Watermarks:
    """``consumer``'s cached (low, high) of one partition; None for what is not known yet."""
    try:
        low, high = consumer.get_watermark_offsets(tp, cached=True)
    except KafkaException:
        return None, None
    if high is None or high < 0:
        return None, None
    return (low if low is not None and low >= 0 else None), high


def position_lag(consumer: Consumer, partitions: list[TopicPartition]) -> dict[Key, int]:
    """Lag of ``consumer`` on partitions assigned to it, from its position (the
    next offset it reads). Partitions whose watermark is not known yet are left out.

    A partition it has read nothing from since its assignment has no position
    yet: it reads from the group's committed offset, so that is where its lag
    starts (else a restarted consumer with nothing new to read would count the
    partition's whole history as lag)."""
    positions = consumer.position(partitions)
    unread = [TopicPartition(tp.topic, tp.partition) for tp in positions if tp.offset < 0]
    committed = {}
    if unread:
        try:
            committed = {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(unread, timeout=5)
                         if tp.offset >= 0}
        except KafkaException:
            pass  # not known: counted from the low watermark, as before
    lag = {}
    for tp in positions:
        _low, high = cached_watermarks(consumer, tp)
        if high is not None:
            key = (tp.topic, tp.partition)
            lag[key] = partition_lag(high, tp.offset if tp.offset >= 0 else committed.get(key))
    return lag


def observed_watermarks(bootstrap: str, partitions: list[TopicPartition], timeout: float) -> dict[Key, Watermarks]:
    """(low, high) per partition, read by a throwaway observer consumer.

    ``partitions`` carry the offset to fetch from (any valid offset works; a
    group's committed offset keeps the read small). A partition whose
    watermark is not known within ``timeout`` seconds is ``(None, None)``.
    """
    consumer = Consumer(consumer_config(bootstrap, f"salespulse-lag-{uuid.uuid4().hex}", **OBSERVER_CONFIG))
    found: dict[Key, Watermarks] = {}
    try:
        consumer.assign(partitions)
        deadline = time.monotonic() + timeout
        pending = [TopicPartition(tp.topic, tp.partition) for tp in partitions]
        while pending:
            consumer.consume(num_messages=500, timeout=0.1)
            still = []
            for tp in pending:
                low, high = cached_watermarks(consumer, tp)
                if high is None:
                    still.append(tp)
                else:
                    found[(tp.topic, tp.partition)] = (low, high)
            pending = still
            if pending and time.monotonic() > deadline:
                break
        for tp in pending:
            found[(tp.topic, tp.partition)] = (None, None)
    finally:
        consumer.close()  # assign()-only consumer: it never joined a group, close is safe
    return found


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int | None  # None: the group has no commit for it
    low: int | None
    high: int | None  # None: watermark not known within the timeout
    lag: int | None  # None: high unknown; no commit: everything retained (high - low)


def group_lag(bootstrap: str, group: str, topics: dict[str, int], timeout: float) -> list[PartitionLag]:
    """Lag of ``group`` on every partition of ``topics`` (name -> partition
    count), from its committed offsets (read with the admin API: nothing joins
    the group or commits for it) and observed watermarks."""
    committed = {(tp.topic, tp.partition): (tp.offset if tp.offset >= 0 else None)
                 for tp in committed_offsets(bootstrap, group, topics)}
    start = [TopicPartition(t, p, OFFSET_BEGINNING if committed.get((t, p)) is None else committed[(t, p)])
             for t, n in topics.items() for p in range(n)]
    marks = observed_watermarks(bootstrap, start, timeout)
    rows = []
    for tp in start:
        key = (tp.topic, tp.partition)
        low, high = marks[key]
        done = committed.get(key)
        rows.append(PartitionLag(tp.topic, tp.partition, done, low, high,
                                 None if high is None else partition_lag(high, done, low)))
    return rows
