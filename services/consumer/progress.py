"""What the running consumer reports besides its batches: its lag.

The lag per topic (the ``salespulse_consumer_lag`` gauge and /health) is
refreshed once a second from the consumer's own position and cached
watermarks (``salespulse.lag.position_lag``); a ``progress`` log line
(totals, lag, partitions) is written once a minute.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from confluent_kafka import Consumer, KafkaException, TopicPartition

from salespulse.lag import position_lag

from .metrics import LAG, BatchRecorder
from .rebalance import Key, Partitions

log = logging.getLogger("services.consumer")

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
