"""Which partitions this process owns, and what a rebalance does to them.

In ``subscribe`` mode the group assigns partitions; ``assign`` mode (replays)
owns a fixed list and never rebalances. On revoke the batches in hand are
written and committed first (a bounded number of attempts) while the
partitions are still ours; on loss they are dropped uncommitted (their new
owner re-reads them). Offsets are committed only for partitions still owned.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable

from confluent_kafka import TopicPartition

from .incarnations import TopicIncarnations
from .messages import ParsedMessage
from .metrics import ASSIGNED, REBALANCES

log = logging.getLogger("services.consumer")

Key = tuple[str, int]  # (topic, partition)


def _keys(partitions: Iterable) -> set[Key]:
    return {(tp.topic, tp.partition) for tp in partitions}


class Partitions:
    """The partitions owned, those at their end (EOF), and the last offset read from each."""

    def __init__(self, fixed: list[TopicPartition] | None = None):
        self.fixed = fixed is not None  # assign() mode: always owned, never revoked
        self.assigned: set[Key] = _keys(fixed or [])
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


class RebalanceListener:
    """The ``on_assign`` / ``on_revoke`` / ``on_lost`` callbacks of ``subscribe``.

    ``finish``: write and commit the batches in hand (bounded attempts);
    ``forget``: drop the pending messages of the given partitions."""

    def __init__(self, partitions: Partitions, incarnations: TopicIncarnations,
                 finish: Callable[[], None], forget: Callable[[set[Key]], None]):
        self.partitions = partitions
        self.incarnations = incarnations
        self.finish = finish
        self.forget = forget

    def on_assign(self, _consumer, assigned) -> None:
        new = _keys(assigned)
        self.partitions.add(new)
        self.incarnations.refresh()
        REBALANCES.labels("assign").inc()
        log.info("partitions assigned", extra={"event": "assigned", "partitions": sorted(f"{t}[{p}]" for t, p in new),
                                               "total_assigned": len(self.partitions.assigned)})

    def on_revoke(self, _consumer, revoked) -> None:
        gone = _keys(revoked)
        REBALANCES.labels("revoke").inc()
        self.finish()  # commit what we hold while the partitions are still ours
        self._drop(gone)
        log.info("partitions revoked", extra={"event": "revoked", "partitions": sorted(f"{t}[{p}]" for t, p in gone),
                                              "total_assigned": len(self.partitions.assigned)})

    def on_lost(self, _consumer, lost) -> None:
        gone = _keys(lost)
        REBALANCES.labels("lost").inc()
        self._drop(gone)  # someone else owns them now: they re-deliver what we did not commit
        log.warning("partitions lost", extra={"event": "lost", "partitions": sorted(f"{t}[{p}]" for t, p in gone)})

    def _drop(self, gone: set[Key]) -> None:
        self.forget(gone)
        self.partitions.remove(gone)
