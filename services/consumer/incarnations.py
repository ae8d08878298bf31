"""Which incarnation of a topic a message was read from.

Offsets identify a message only within one incarnation of its topic: a topic
deleted and re-created (or the embedded in-memory broker restarted) starts its
offsets at 0 again. The broker's topic id (``describe_topics``) tells the
incarnations apart; the ledger and the dead letters are keyed by it.
"""

from __future__ import annotations

import logging

from confluent_kafka import KafkaException, TopicCollection

from salespulse.kafka import admin_client

from .metrics import INCARNATION_CHANGES

log = logging.getLogger(__name__)


class TopicIncarnations:
    """The current topic id of each topic, refreshed on demand."""

    def __init__(self, bootstrap: str, topics: list[str]):
        self.topics = list(topics)
        self._admin = admin_client(bootstrap)
        self.current: dict[str, str] = {}

    def get(self, topic: str) -> str:
        return self.current.get(topic, "")

    def refresh(self, timeout: float = 5.0) -> dict[str, str]:
        """Ask the broker; on failure keep what we knew (an empty id if nothing)."""
        try:
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
