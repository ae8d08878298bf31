"""Closing the consumer without wedging its group.

A consumer closed while it is still joining a group that has no other live
member can wedge that group on the embedded broker (docs/broker.md, defect
4). So a consumer stopped before its first assignment is first given
``JOIN_GRACE_S`` to get one (polling meanwhile); if it still has none, it is
left unclosed: kept referenced here so it is never destroyed (destroy =
close), and the process exits without closing it. Otherwise what is held is
written and committed, and the consumer is closed (``on_revoke`` runs, it
leaves the group).
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from confluent_kafka import Consumer

from .rebalance import Partitions

log = logging.getLogger("services.consumer")

JOIN_GRACE_S = 20.0
_ABANDONED: list[Consumer] = []


def close_consumer(consumer: Consumer, partitions: Partitions, *, poll: Callable[[float], None],
                   flush: Callable[[], object], holding: Callable[[], bool], failed: bool) -> bool:
    """Close ``consumer`` after ``flush()`` (bounded: it may give up). Returns
    False if it was left unclosed. ``poll(timeout)`` consumes into the batch
    being filled, ``holding()`` says whether that batch holds anything; after
    a loop failure (``failed``) there is no wait for an assignment."""
    if not partitions.ever_assigned and not failed:
        deadline = time.monotonic() + JOIN_GRACE_S
        while not partitions.ever_assigned and time.monotonic() < deadline:
            poll(0.2)
        if holding():
            flush()
    if not partitions.ever_assigned:
        _ABANDONED.append(consumer)
        log.warning("stopping before the first assignment: consumer left unclosed",
                    extra={"event": "exit_without_close"})
        return False
    flush()  # a no-op after a failure
    consumer.close()  # on_revoke runs here; leaves the group
    return True
