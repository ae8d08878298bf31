"""Partition state: which partitions this process owns, where it is in each,
which incarnation of each topic it reads, and how far behind it is.

In ``subscribe`` mode the group assigns partitions (the service's
``on_assign`` / ``on_revoke`` / ``on_lost`` update :class:`Partitions`);
``assign`` mode (replays) owns a fixed list and never rebalances. Offsets are
committed only for partitions still owned.

Offsets identify a message only within one incarnation of its topic: a topic
deleted and re-created (or the embedded in-memory broker restarted) starts its
offsets at 0 again. The broker's topic id (``describe_topics``) tells the
incarnations apart; the ledger and the dead letters are keyed by it
(:class:`TopicIncarnations`).

The lag per topic (the ``salespulse_consumer_lag`` gauge and /health) is
refreshed once a second from the consumer's own position and cached
watermarks (``salespulse.lag.position_lag``); a ``progress`` log line
(totals, lag, partitions) is written once a minute (:class:`Progress`).
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Iterable

from confluent_kafka import Consumer, KafkaException, TopicCollection, TopicPartition

from salespulse.kafka import admin_client
from salespulse.lag import position_lag

from .messages import ParsedMessage
from .metrics import ASSIGNED, INCARNATION_CHANGES, LAG, BatchRecorder

log = logging.getLogger("services.consumer")

Key = tuple[str, int]  # (topic, partition)


def keys(partitions: Iterable) -> set[Key]:
    return {(tp.topic, tp.partition) for tp in partitions}


class Partitions:
    """The partitions owned, those at their end (EOF), and the last offset read from each."""

    def __init__(self, fixed: list[TopicPartition] | None = None):
        self.fixed = fixed is not None  # assign() mode: always owned, never revoked
        self.assigned: set[Key] = keys(fixed or [])
        self.ever_assigned = self.fixed
        self.eof: set[Key] = set()
        self.last_offset: dict[Key, int] = {}
        ASSIGNED.set(len(self.assigned))

    def owns(self, key: Key) -> bool:
        return self.fixed or key in self.assigned

    def stale(self, key: Key) -> bool:
        """A message of a partition revoked meanwhile (still in librdkafka's queue)."""
        return not self.fixed and self.ever_assigned and key not in self.assigned

    def went_back(self, key: Key, offset: int) -> bool:
        """Record ``offset`` as read; True if offsets went back (a re-delivery or a re-created topic)."""
        back = offset <= self.last_offset.get(key, -1)
        self.last_offset[key] = offset
        self.eof.discard(key)
        return back

    def add(self, new: set[Key]) -> None:
        self.ever_assigned = True
        self.assigned |= new
        self.eof -= new
        for key in new:
            self.last_offset.pop(key, None)
        ASSIGNED.set(len(self.assigned))

    def remove(self, gone: set[Key]) -> None:
        self.assigned -= gone
        self.eof -= gone
        ASSIGNED.set(len(self.assigned))

    def at_end(self) -> bool:
        return self.ever_assigned and bool(self.assigned) and self.assigned <= self.eof

    def keep_owned(self, batch: list[ParsedMessage]) -> list[ParsedMessage]:
        if self.fixed:
            return batch
        return [m for m in batch if (m.raw.topic, m.raw.partition) in self.assigned]

    def commit_offsets(self, batch: Iterable[ParsedMessage]) -> list[TopicPartition]:
        """The next offset to read per owned partition of ``batch``, sorted."""
        nxt: dict[Key, int] = {}
        for m in batch:
            key = (m.raw.topic, m.raw.partition)
            if self.owns(key) and m.raw.offset + 1 > nxt.get(key, -1):
                nxt[key] = m.raw.offset + 1
        return [TopicPartition(t, p, o) for (t, p), o in sorted(nxt.items())]


class TopicIncarnations:
    """The current topic id of each topic, refreshed on demand."""

    def __init__(self, bootstrap: str, topics: list[str]):
        self.topics = list(topics)
        self.bootstrap = bootstrap
        self._admin = None  # created on the first refresh
        self.current: dict[str, str] = {}

    def get(self, topic: str) -> str:
        return self.current.get(topic, "")

    def refresh(self, timeout: float = 5.0) -> dict[str, str]:
        """Ask the broker; on failure keep what we knew (an empty id if nothing)."""
        try:
            if self._admin is None:
                self._admin = admin_client(self.bootstrap)
            futures = self._admin.describe_topics(TopicCollection(self.topics), request_timeout=timeout)
            found = {name: str(future.result().topic_id) for name, future in futures.items()}
        except (KafkaException, ValueError) as exc:
            log.warning("topic ids unavailable", extra={"event": "topic_ids_unavailable", "error": str(exc)})
            return self.current
        for topic, topic_id in found.items():
            before = self.current.get(topic)
            if before and before != topic_id:
                INCARNATION_CHANGES.labels(topic).inc()
                log.warning("topic re-created: offsets restart in a new incarnation", extra={
                    "event": "topic_incarnation_changed", "topic": topic, "before": before, "now": topic_id})
        self.current.update(found)
        return self.current


LAG_EVERY_S = 1.0
LOG_EVERY_S = 60.0


def assigned_lag(consumer: Consumer | None, partitions: Partitions) -> dict[Key, int] | None:
    """The consumer's lag on each assigned partition whose watermark is known;
    None if nothing is assigned (or no consumer yet, or the client failed)."""
    if not partitions.assigned or consumer is None:
        return None
    try:
        return position_lag(consumer, [TopicPartition(t, p) for t, p in partitions.assigned])
    except KafkaException:
        return None


class Progress:
    """Lag per topic, refreshed by ``tick()`` (called once per loop turn)."""

    def __init__(self, topics: list[str], partitions: Partitions, recorder: BatchRecorder,
                 lag: Callable[[], dict[Key, int] | None]):
        self.topics = topics
        self.partitions = partitions
        self.recorder = recorder
        self.partition_lag = lag
        self.lag: dict[str, int] = {}  # per topic, as last known
        self._lag_at = 0.0
        self._logged_at = time.monotonic()

    def tick(self) -> None:
        now = time.monotonic()
        if now - self._lag_at >= LAG_EVERY_S and self.partitions.assigned:
            self._lag_at = now
            lag = self.partition_lag()
            if lag is not None:
                per_topic: dict[str, int] = {t: 0 for t in self.topics}
                for (t, _p), n in lag.items():
                    per_topic[t] = per_topic.get(t, 0) + n
                self.lag = per_topic
                for t, n in per_topic.items():
                    LAG.labels(t).set(n)
        if now - self._logged_at >= LOG_EVERY_S:
            self._logged_at = now
            log.info("progress", extra={"event": "progress", "totals": dict(self.recorder.totals),
                                        "lag": dict(self.lag), "assigned_partitions": len(self.partitions.assigned)})
